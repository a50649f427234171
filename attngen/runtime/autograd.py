"""Autograd for compiled variants: the forward kernel, and the generated backward kernels
(``launch_backward`` in the module: a dK/dV pass over query tiles and a dQ pass over KV
tiles, FlashAttention-2 style) for the gradients of q, k, v and of the returned lse.

Available for the dense and band strategies (no mask, causal, sliding windows and
band-shaped mask_mods) with any score_mod whose derivative the printer can emit; tensors
read by the score do not receive gradients yet.
"""
from __future__ import annotations

import torch
import triton

from .config import KernelConfig


def backward_config(device: torch.device, dtype: torch.dtype, forward: KernelConfig) -> KernelConfig:
    """Tiles of the backward passes. They hold K, V and two fp32 accumulators (or Q, dO and
    dQ) per program, so they use smaller tiles than the forward on the GPU."""
    if device.type != "cuda":
        return forward
    return KernelConfig(64, 64, 4, 2)


class AttentionFunction(torch.autograd.Function):
    """out, lse = attention(q, k, v); backward through the module's launch_backward."""

    @staticmethod
    def forward(ctx, run_forward, module, sm_scale, tensors, config, q, k, v):
        out, lse = run_forward()
        ctx.module, ctx.sm_scale, ctx.tensors, ctx.config = module, sm_scale, tensors, config
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable()  # out and lse are differentiable outputs
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        config = backward_config(q.device, q.dtype, ctx.config)
        while True:
            try:
                dq, dk, dv = ctx.module.launch_backward(q, k, v, out, lse, dout, dlse, ctx.sm_scale, ctx.tensors,
                                                        config)
                break
            except triton.runtime.errors.OutOfResources:
                smaller = config.smaller()
                if smaller is None:
                    raise
                config = smaller
        return None, None, None, None, None, dq, dk, dv
