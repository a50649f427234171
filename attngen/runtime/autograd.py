"""Autograd for compiled variants: the forward kernel, and the generated backward kernels
(``launch_backward`` in the module: a dK/dV pass over query tiles and a dQ pass over KV
tiles, FlashAttention-2 style, on the forward's tile plan) for the gradients of q, k, v,
of the returned lse and of the tensors the score reads.

Determinism: dQ, dK and dV are deterministic (each program owns its rows; a GQA group is
summed inside the program). Gradients of score tensors are added with fp32 atomics in
the dK/dV pass, so their summation order, and the last bits, vary from run to run. With
``deterministic=True`` (or ``torch.use_deterministic_algorithms(True)``) they are
recomputed instead by ``tensor_grads.score_tensor_grads``, chunk by chunk in torch, in a
fixed order: slower, and bitwise reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import triton

from .config import KernelConfig
from .fast_launch import launch_wrap


def backward_config(device: torch.device, forward: KernelConfig, small_tiles: bool) -> tuple[KernelConfig, KernelConfig]:
    """Tiles of the (dK/dV, dQ) passes: each program owns a tile of BLOCK_OWN rows and steps
    through the other side BLOCK_STEP at a time (FlashAttention-2's split). H100, bf16,
    L=8192, D=128 (benchmarks/NOTES.md, Backward, 2026-11-24): 128/64 with 8 warps is best
    for dense and causal (420 and 387 TFLOP/s fwd+bwd); ``small_tiles`` (two-sided bands, tile
    lists, 2-D/3-D neighborhoods) takes 64/32 with 4 warps (window 1024: 277 against 261 with
    128/64); 4 warps on 128-row tiles spill (139-208)."""
    if device.type != "cuda":
        return forward, forward
    own, step, warps, stages = (64, 32, 4, 3) if small_tiles else (128, 64, 8, 3)
    return KernelConfig(step, own, warps, stages), KernelConfig(own, step, warps, stages)


def _smaller(pair: tuple[KernelConfig, KernelConfig]) -> tuple[KernelConfig, KernelConfig] | None:
    kv, q = (c.smaller() for c in pair)
    return None if kv is None or q is None else (kv, q)


@dataclass
class BackwardSetup:
    """What the backward needs besides the saved tensors.

    ``tensors``: every tensor the kernels read, by name. ``learnable``: names of the
    inputs after q, k, v (tensors that require grad). ``tiles_for(config)``: the tile
    plans of both passes at a config pair. ``tensor_grads_in_torch(names, ...)``: the
    deterministic (or fallback) gradients of score tensors.
    """

    module: object
    sm_scale: float
    tensors: dict[str, torch.Tensor]
    # whether the backward takes the small tiles (two-sided bands, tile lists other than
    # mostly-full runs, 2-D/3-D neighborhoods), given the forward's launch config
    small_tiles: Callable[[KernelConfig], bool]
    learnable: tuple[str, ...]
    kernel_grads: frozenset[str]  # learnable tensors whose gradients the kernels accumulate
    tiles_for: Callable
    tensor_grads_in_torch: Callable


def run_backward(setup: BackwardSetup, forward_config: KernelConfig, q, k, v, out, lse, dout, dlse):
    """(dq, dk, dv, {name: gradient}) through the module's launch_backward, stepping down to
    smaller tiles while the GPU refuses a pair; score tensors the kernels do not accumulate
    get theirs from ``setup.tensor_grads_in_torch``."""
    if dout is None:
        dout = torch.zeros_like(out)
    config = backward_config(q.device, forward_config, setup.small_tiles(forward_config))
    while True:
        buffers = {n: torch.zeros(setup.tensors[n].shape, dtype=torch.float32, device=q.device)
                   for n in setup.kernel_grads}
        try:
            dq, dk, dv = setup.module.launch_backward(q, k, v, out, lse, dout, dlse, setup.sm_scale,
                                                      setup.tensors, buffers, config, setup.tiles_for(config),
                                                      wrap=launch_wrap(q.device))
            break
        except triton.runtime.errors.OutOfResources:
            smaller = _smaller(config)
            if smaller is None:
                raise
            config = smaller
    grads = {n: b.to(setup.tensors[n].dtype) for n, b in buffers.items()}
    rest = [n for n in setup.learnable if n not in grads]
    if rest:
        grads.update(setup.tensor_grads_in_torch(rest, q, k, v, out, lse, dout, dlse))
    return dq, dk, dv, grads


class AttentionFunction(torch.autograd.Function):
    """out, lse = attention(q, k, v, *tensors) for eager calls: the kernel's ``forward_impl``
    and ``backward_impl``, which the custom ops (runtime/ops.py) run under graphs too."""

    @staticmethod
    def forward(ctx, kernel, call, q, k, v, *tensors):
        out, lse = kernel.forward_impl(call, q, k, v, kernel.bind(tensors))
        ctx.kernel, ctx.call = kernel, call
        ctx.save_for_backward(q, k, v, out, lse, *tensors)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        kernel = ctx.kernel
        bound = kernel.bind(tensors)
        learnable = tuple(n for n, need in zip(bound, ctx.needs_input_grad[5:]) if need)
        dq, dk, dv, grads = kernel.backward_impl(ctx.call, q, k, v, out, lse, dout, dlse, bound, learnable)
        return (None, None, dq, dk, dv, *(grads.get(n) for n in bound))
