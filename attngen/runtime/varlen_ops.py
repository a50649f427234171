"""The custom ops through which graphs reach varlen attention (runtime/varlen.py).

    attngen::varlen_attention           (out (total_q, Hq, Dv), lse (Hq, total_q) or (0,))
    attngen::varlen_attention_backward   (dq, dk, dv, gradients of the variant's tensors)

Declared like runtime/ops.py's (``_define``: a fake implementation, CPU and CUDA kernels;
the kernel named by its cache key), with their own schemas because the packed layouts
differ from the (B, H, L, D) ones: the fake outputs must have the strides the real ones
have. The offsets' check (one host sync) runs inside the forward op, so a compiled graph
checks every call too; ``check=False`` for CUDA graphs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .attention import AttentionCall
from .config import KernelConfig
from .ops import _LIBRARY, _define, _empty, decode_config, kernel_for
from .varlen import VarlenCall, varlen_backward, varlen_forward


def _call(scale, config: str, store_lse: bool, return_lse: bool, deterministic: bool, check: bool,
          max_q: int, max_k: int) -> VarlenCall:
    attention = AttentionCall(scale, None, decode_config(config, KernelConfig), store_lse, return_lse, deterministic)
    return VarlenCall(attention, check, max_q, max_k)


def _forward_fake(kernel, q, k, v, cu_q, cu_k, tensors, scale, config, store_lse, return_lse, deterministic, check,
                  max_q, max_k):
    out = q.new_empty((q.shape[0], q.shape[1], v.shape[2]))
    return out, q.new_empty((q.shape[1], q.shape[0]) if store_lse else (0,), dtype=torch.float32)


@_define("varlen_attention(str kernel, Tensor q, Tensor k, Tensor v, Tensor cu_q, Tensor cu_k, Tensor[] tensors, "
         "float? scale, str config, bool store_lse, bool return_lse, bool deterministic, bool check, "
         "SymInt max_q, SymInt max_k) -> (Tensor, Tensor)", _forward_fake)
def varlen_attention(kernel: str, q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, tensors: list[Tensor],
                     scale: Optional[float], config: str, store_lse: bool, return_lse: bool, deterministic: bool,
                     check: bool, max_q: int, max_k: int) -> tuple[Tensor, Tensor]:
    attn = kernel_for(kernel)
    call = _call(scale, config, store_lse, return_lse, deterministic, check, max_q, max_k)
    out, lse = varlen_forward(attn, call, q, k, v, cu_q, cu_k, list(tensors))
    return out, (lse if lse is not None else _empty(q))


def _backward_fake(kernel, q, k, v, out, lse, dout, dlse, cu_q, cu_k, tensors, tensor_grads, scale, config,
                   deterministic):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            [torch.empty_like(t) for t, want in zip(tensors, tensor_grads) if want])


@_define("varlen_attention_backward(str kernel, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
         "Tensor? dout, Tensor? dlse, Tensor cu_q, Tensor cu_k, Tensor[] tensors, bool[] tensor_grads, float? scale, "
         "str config, bool deterministic) -> (Tensor, Tensor, Tensor, Tensor[])", _backward_fake)
def varlen_attention_backward(kernel: str, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                              dout: Optional[Tensor], dlse: Optional[Tensor], cu_q: Tensor, cu_k: Tensor,
                              tensors: list[Tensor], tensor_grads: list[bool], scale: Optional[float], config: str,
                              deterministic: bool) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    attn = kernel_for(kernel)
    call = _call(scale, config, True, dlse is not None, deterministic, False, 0, 0)
    wanted = tuple(n for n, want in zip(attn.user_names, tensor_grads) if want)
    dq, dk, dv, grads = varlen_backward(attn, call, q, k, v, out, lse, dout, dlse, cu_q, cu_k, list(tensors), wanted)
    bound = dict(zip(attn.user_names, tensors))
    # a tensor only the mask reads gets a zero gradient: the mask is piecewise constant
    return dq, dk, dv, [grads[n] if grads.get(n) is not None else torch.zeros_like(bound[n]) for n in wanted]


def _setup(ctx, inputs, output) -> None:
    (kernel, q, k, v, cu_q, cu_k, tensors, scale, config, store_lse, return_lse, deterministic, check,
     max_q, max_k) = inputs
    out, lse = output
    ctx.settings = (kernel, scale, config, return_lse, deterministic)
    ctx.num_tensors = len(tensors)
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, *tensors)


def _grad(ctx, dout, dlse):
    kernel, scale, config, return_lse, deterministic = ctx.settings
    q, k, v, out, lse, cu_q, cu_k, *tensors = ctx.saved_tensors
    wanted = [bool(w) for w in ctx.needs_input_grad[6]] if ctx.num_tensors else []
    dq, dk, dv, grads = torch.ops.attngen.varlen_attention_backward(
        kernel, q, k, v, out, lse, dout, dlse if return_lse else None, cu_q, cu_k, tensors, wanted, scale, config,
        deterministic)
    found = iter(grads)
    return (None, dq, dk, dv, None, None, [next(found) if w else None for w in wanted],
            None, None, None, None, None, None, None, None)


torch.library.register_autograd("attngen::varlen_attention", _grad, setup_context=_setup, lib=_LIBRARY)

__all__ = ["varlen_attention", "varlen_attention_backward"]
