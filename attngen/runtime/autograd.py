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


def backward_config(device: torch.device, dtype: torch.dtype, D: int, forward: KernelConfig, masked: bool
                    ) -> tuple[KernelConfig, KernelConfig]:
    """Tiles of the (dK/dV, dQ) passes: each program owns a tile of BLOCK_OWN rows and steps
    through the other side BLOCK_STEP at a time (FlashAttention-2's split). H100, bf16,
    L=8192, D=128 (benchmarks/NOTES.md): 128/64 with 8 warps is best without a mask (391
    TFLOP/s fwd+bwd), 64/32 with 4 warps with a band (309 causal); 4 warps on 128-row tiles
    spill (139-208)."""
    if device.type != "cuda":
        return forward, forward
    own, step, warps, stages = (64, 32, 4, 3) if masked else (128, 64, 8, 3)
    return KernelConfig(step, own, warps, stages), KernelConfig(own, step, warps, stages)


def _smaller(pair: tuple[KernelConfig, KernelConfig]) -> tuple[KernelConfig, KernelConfig] | None:
    kv, q = (c.smaller() for c in pair)
    return None if kv is None or q is None else (kv, q)


class AttentionFunction(torch.autograd.Function):
    """out, lse = attention(q, k, v); backward through the module's launch_backward."""

    @staticmethod
    def forward(ctx, run_forward, module, sm_scale, tensors, masked, q, k, v):
        out, lse, config = run_forward()  # config: what the forward launched with
        ctx.module, ctx.sm_scale, ctx.tensors, ctx.config, ctx.masked = module, sm_scale, tensors, config, masked
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable()  # out and lse are differentiable outputs
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        config = backward_config(q.device, q.dtype, q.shape[-1], ctx.config, ctx.masked)
        while True:
            try:
                dq, dk, dv = ctx.module.launch_backward(q, k, v, out, lse, dout, dlse, ctx.sm_scale, ctx.tensors,
                                                        config)
                break
            except triton.runtime.errors.OutOfResources:
                smaller = _smaller(config)
                if smaller is None:
                    raise
                config = smaller
        return None, None, None, None, None, dq, dk, dv
