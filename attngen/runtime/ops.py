"""The torch.library custom ops through which graphs reach every compiled kernel.

``torch.compile``, ``torch.export`` and other graph tracers cannot look inside a Triton
launch, the tile classification or the disk cache; they see these ops instead, each with a
fake implementation (output shapes, dtypes and strides from the inputs' alone) and, for the
forwards, a registered autograd formula whose backward is again an op:

    attngen::attention           softmax and sigmoid variants: (out, lse)
    attngen::attention_into      the same, writing a caller's ``out`` (no autograd)
    attngen::attention_backward  (dq, dk, dv, gradients of the score's tensors)
    attngen::linear_attention    linear variants: (out, denominator)
    attngen::linear_attention_backward

A kernel is named by its cache key (a str, so a graph holds no Python object and
``torch.export`` can serialize it); ``register`` maps the key to the compiled object that
``ag.compile`` returned in this process. The implementations run that object's
``forward_impl`` / ``backward_impl``: the same code the eager path calls directly (eager
calls skip the dispatcher). The ops are declared with ``torch.library.Library`` and plain
kernels per device rather than ``torch.library.custom_op``, whose wrapper (a Dynamo-disabled
frame and an aliasing check on every call) doubled the host time of a call (CPU, no GPU
work: 37 against 17 us a call with autograd registered, 5.5 us without).
runtime/inductor_ops.py declares two more with the same schemas as ``attention`` and
``attention_backward``, whose kernels Inductor launches itself (runtime/graph_launch.py says
which graph calls take them).
Settings that are not tensors travel as plain schema arguments; a launch configuration as
its JSON text ("" for the default choice), a neighborhood's grid as "X,Y[,Z]".
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Callable, Optional

import torch
from torch import Tensor

from .config import KernelConfig, config_from_dict, config_to_dict

_KERNELS: dict[str, object] = {}
_LIBRARY = torch.library.Library("attngen", "DEF")


def _define(schema: str, fake: Callable) -> Callable[[Callable], Callable]:
    """Declare ``attngen::<schema>`` with ``fake`` as its fake implementation; the decorated
    function becomes its CPU and CUDA kernel."""
    name = schema.split("(", 1)[0]
    _LIBRARY.define(schema)
    torch.library.register_fake(f"attngen::{name}", fake, lib=_LIBRARY)

    def kernel(fn: Callable) -> Callable:
        for device in ("CPU", "CUDA"):
            _LIBRARY.impl(name, fn, device)
        return fn
    return kernel


def register(kernel) -> None:
    """Make ``kernel`` (a CompiledAttention or CompiledLinearAttention) reachable by its key."""
    _KERNELS[kernel.key] = kernel


def kernel_for(key: str):
    found = _KERNELS.get(key)
    if found is None:
        raise RuntimeError(f"attngen kernel {key[:16]}... is not loaded in this process: call ag.compile(variant) "
                           "for its variant before running a graph that holds it")
    return found


def encode_config(config) -> str:
    """A launch configuration as the ops' ``config`` argument ("" means: choose one)."""
    if config is None:
        return ""
    if isinstance(config, KernelConfig):
        return json.dumps(config_to_dict(config), sort_keys=True)
    return json.dumps(asdict(config), sort_keys=True)  # LinearConfig: plain fields


def decode_config(text: str, kind: type):
    if not text:
        return None
    data = json.loads(text)
    return config_from_dict(data) if kind is KernelConfig else kind(**data)


def encode_spatial(spatial_shape: tuple[int, ...] | None) -> str:
    """A neighborhood's grid as the ops' ``spatial_shape`` argument: "X,Y[,Z]", "" for none.
    A string, not int[], keeps the grid a constant of the graph (the tile plan is built from
    it) and out of the gradient structure."""
    return ",".join(str(int(s)) for s in spatial_shape) if spatial_shape else ""


def decode_spatial(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",")) if text else ()


def _empty(like: Tensor) -> Tensor:
    """The placeholder for an output that is not computed (schemas cannot return None)."""
    return like.new_empty((0,), dtype=torch.float32)


def _lse_shape(q: Tensor, store_lse: bool) -> tuple:
    return (q.shape[0], q.shape[1], q.shape[2]) if store_lse else (0,)


# --------------------------------------------------------------------------- softmax / sigmoid
def _attention_fake(kernel, q, k, v, tensors, scale, spatial_shape, config, store_lse, return_lse, deterministic):
    out = q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))
    return out, q.new_empty(_lse_shape(q, store_lse), dtype=torch.float32)


@_define("attention(str kernel, Tensor q, Tensor k, Tensor v, Tensor[] tensors, float? scale, str spatial_shape, "
         "str config, bool store_lse, bool return_lse, bool deterministic) -> (Tensor, Tensor)", _attention_fake)
def attention(kernel: str, q: Tensor, k: Tensor, v: Tensor, tensors: list[Tensor], scale: Optional[float],
              spatial_shape: str, config: str, store_lse: bool, return_lse: bool,
              deterministic: bool) -> tuple[Tensor, Tensor]:
    """(out, lse) of a compiled softmax or sigmoid variant; lse is (0,) unless ``store_lse``.
    ``return_lse``: the caller reads lse, so its gradient reaches the backward."""
    attn = kernel_for(kernel)
    call = attn.call_settings(scale, spatial_shape, config, store_lse, return_lse, deterministic)
    out, lse = attn.forward_impl(call, q, k, v, attn.bind(tensors))
    return out, (lse if lse is not None else _empty(q))


def _attention_into_fake(kernel, q, k, v, tensors, scale, spatial_shape, config, out, lse):
    return None


@_define("attention_into(str kernel, Tensor q, Tensor k, Tensor v, Tensor[] tensors, float? scale, "
         "str spatial_shape, str config, Tensor(a!) out, Tensor(b!)? lse) -> ()", _attention_into_fake)
def attention_into(kernel: str, q: Tensor, k: Tensor, v: Tensor, tensors: list[Tensor], scale: Optional[float],
                   spatial_shape: str, config: str, out: Tensor, lse: Optional[Tensor]) -> None:
    """``attention`` writing into the caller's ``out`` (any strides) and ``lse`` (no autograd)."""
    attn = kernel_for(kernel)
    call = attn.call_settings(scale, spatial_shape, config, lse is not None, lse is not None, False)
    attn.forward_impl(call, q, k, v, attn.bind(tensors), out=out, lse=lse)


def _attention_backward_fake(kernel, q, k, v, out, lse, dout, dlse, tensors, tensor_grads, scale, spatial_shape,
                             config, deterministic):
    # the kernels allocate dq, dk, dv with empty_like (a GQA group is summed inside a program)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            [torch.empty_like(t) for t, want in zip(tensors, tensor_grads) if want])


@_define("attention_backward(str kernel, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor dout, "
         "Tensor? dlse, Tensor[] tensors, bool[] tensor_grads, float? scale, str spatial_shape, str config, "
         "bool deterministic) -> (Tensor, Tensor, Tensor, Tensor[])", _attention_backward_fake)
def attention_backward(kernel: str, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
                       dlse: Optional[Tensor], tensors: list[Tensor], tensor_grads: list[bool], scale: Optional[float],
                       spatial_shape: str, config: str, deterministic: bool
                       ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """(dq, dk, dv, [gradient of each tensor whose ``tensor_grads`` entry is true])."""
    attn = kernel_for(kernel)
    call = attn.call_settings(scale, spatial_shape, config, True, dlse is not None, deterministic)
    bound = attn.bind(tensors)
    wanted = tuple(n for n, want in zip(bound, tensor_grads) if want)
    dq, dk, dv, grads = attn.backward_impl(call, q, k, v, out, lse, dout, dlse, bound, wanted)
    # a tensor the score does not read (a mask's) gets a zero gradient: the mask is piecewise constant
    return dq, dk, dv, [grads[n] if grads.get(n) is not None else torch.zeros_like(bound[n]) for n in wanted]


def attention_autograd(forward, backward_op) -> None:
    """Register the autograd formula of ``forward`` (the qualified name of an op with
    ``attngen::attention``'s schema, or a triton_op's CustomOpDef), whose backward calls
    ``backward_op`` (an op with ``attngen::attention_backward``'s schema)."""

    def setup_context(ctx, inputs, output) -> None:
        kernel, q, k, v, tensors, scale, spatial_shape, config, store_lse, return_lse, deterministic = inputs
        out, lse = output
        ctx.settings = (kernel, scale, spatial_shape, config, return_lse, deterministic)
        ctx.num_tensors = len(tensors)
        ctx.save_for_backward(q, k, v, out, lse, *tensors)

    def backward(ctx, dout, dlse):
        kernel, scale, spatial_shape, config, return_lse, deterministic = ctx.settings
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        wanted = [bool(w) for w in ctx.needs_input_grad[4]] if ctx.num_tensors else []
        dq, dk, dv, grads = backward_op(kernel, q, k, v, out, lse, dout, dlse if return_lse else None, tensors,
                                        wanted, scale, spatial_shape, config, deterministic)
        found = iter(grads)
        tensor_grads = [next(found) if w else None for w in wanted]
        return None, dq, dk, dv, tensor_grads, None, None, None, None, None, None

    lib = _LIBRARY if isinstance(forward, str) else None
    torch.library.register_autograd(forward, backward, setup_context=setup_context, lib=lib)


attention_autograd("attngen::attention", torch.ops.attngen.attention_backward)


# --------------------------------------------------------------------------- linear attention
def _linear_fake(kernel, q, k, v, decay_log, config, backward_config):
    attn = kernel_for(kernel)
    out = q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))
    return out, q.new_empty(_lse_shape(q, attn.normalize), dtype=torch.float32)


@_define("linear_attention(str kernel, Tensor q, Tensor k, Tensor v, Tensor? decay_log, str config, "
         "str backward_config) -> (Tensor, Tensor)", _linear_fake)
def linear_attention(kernel: str, q: Tensor, k: Tensor, v: Tensor, decay_log: Optional[Tensor], config: str,
                     backward_config: str) -> tuple[Tensor, Tensor]:
    """(out, den): den is the normalizer's (B, Hq, L) fp32 denominator, (0,) without one."""
    attn = kernel_for(kernel)
    out, den = attn.forward_impl(attn.call_settings(config, backward_config), q, k, v, decay_log)
    return out, (den if den is not None else _empty(q))


def _linear_backward_fake(kernel, q, k, v, out, den, dout, decay_log, needs, config, backward_config):
    def grad_like(x: Tensor) -> Tensor:
        # GQA: per-query-head parts are summed into a new contiguous tensor
        return torch.empty_like(x) if q.shape[1] == k.shape[1] else x.new_empty(x.shape)

    dq = torch.empty_like(q) if needs[0] else _empty(q)
    dk = grad_like(k) if needs[1] else _empty(q)
    dv = grad_like(v) if needs[2] else _empty(q)
    dgamma = decay_log.new_empty(decay_log.shape) if needs[3] and decay_log is not None else _empty(q)
    return dq, dk, dv, dgamma


@_define("linear_attention_backward(str kernel, Tensor q, Tensor k, Tensor v, Tensor out, Tensor den, "
         "Tensor dout, Tensor? decay_log, bool[] needs, str config, str backward_config) "
         "-> (Tensor, Tensor, Tensor, Tensor)", _linear_backward_fake)
def linear_attention_backward(kernel: str, q: Tensor, k: Tensor, v: Tensor, out: Tensor, den: Tensor, dout: Tensor,
                              decay_log: Optional[Tensor], needs: list[bool], config: str,
                              backward_config: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, d decay_log) for ``needs`` (four flags); a gradient not needed is (0,)."""
    attn = kernel_for(kernel)
    grads = attn.backward_impl(attn.call_settings(config, backward_config), q, k, v, out,
                               den if den.numel() else None, dout, decay_log, tuple(needs))
    return tuple(g if g is not None else _empty(q) for g in grads)


def _linear_setup(ctx, inputs, output) -> None:
    kernel, q, k, v, decay_log, config, backward_config = inputs
    out, den = output
    ctx.settings = (kernel, config, backward_config)
    ctx.has_decay = decay_log is not None
    ctx.save_for_backward(q, k, v, out, den, decay_log)


def _linear_grad(ctx, dout, dden):
    kernel, config, backward_config = ctx.settings
    q, k, v, out, den, decay_log = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[1:4]] + [ctx.has_decay and bool(ctx.needs_input_grad[4])]
    dq, dk, dv, dgamma = torch.ops.attngen.linear_attention_backward(
        kernel, q, k, v, out, den, dout, decay_log, needs, config, backward_config)
    return (None, *(g if need else None for g, need in zip((dq, dk, dv, dgamma), needs)), None, None)


torch.library.register_autograd("attngen::linear_attention", _linear_grad, setup_context=_linear_setup,
                                lib=_LIBRARY)
