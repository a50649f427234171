"""Gradients of the tensors a score_mod reads, recomputed in torch in a fixed order.

The generated dK/dV pass adds these gradients with fp32 atomics, whose order varies. This
module is the deterministic alternative (``attn(..., deterministic=True)``) and the
fallback for a derivative the kernel printer cannot emit. Per chunk of query rows it
rebuilds the scores from q and k, evaluates the score_mod with torch (the reference's
evaluator) on tensors that require grad, forms dS' = P * (dP - delta) from the forward's
lse (sigmoid: dS' = dP * P * (1 - P), no lse), and lets autograd push dS' into the tensors. Memory: a (B, H, chunk, Lkv) block at a
time, in float64.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..ir.expr import B, H, KV_IDX, LKV, LQ, Q_IDX, SCORE
from ..ir.nodes import Sigmoid, Variant
from ..reference import SPATIAL, evaluate, mask_matrix

CHUNK_BYTES = 256 << 20  # one float64 (B, H, chunk, Lkv) block


@contextlib.contextmanager
def _deterministic():
    """torch's deterministic kernels (sorted index_put accumulation on CUDA) inside."""
    was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)


def score_tensor_grads(variant: Variant, names: list[str], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None,
                       sm_scale: float, tensors: dict[str, torch.Tensor],
                       spatial_shape: tuple[int, ...] | None) -> dict[str, torch.Tensor | None]:
    """d loss / d tensor for each of ``names``; None for tensors the score does not read
    (a mask's tensors have no gradient: the mask is piecewise constant)."""
    read = {p.name for p in variant.score.params} if variant.score is not None else set()
    result: dict[str, torch.Tensor | None] = {n: None for n in names if n not in read}
    wanted = [n for n in names if n in read]
    if not wanted:
        return result
    leaves = {n: tensors[n].detach().requires_grad_() for n in wanted}
    bound = {**tensors, **leaves}
    Bsz, HQ, Lq, _ = q.shape
    Lkv = k.shape[2]
    group = HQ // k.shape[1]
    kd = k.detach().double().repeat_interleave(group, dim=1)
    vd = v.detach().double().repeat_interleave(group, dim=1)
    sigmoid_bias = None
    if isinstance(variant.norm, Sigmoid):  # no lse; SEMANTICS.md: bias None means -ln(Lkv)
        sigmoid_bias = -math.log(Lkv) if variant.norm.bias is None else float(variant.norm.bias)
    else:
        delta = (dout.double() * out.double()).sum(-1)
        if dlse is not None:
            delta = delta - dlse.double()
        # rows with no attended key: p = exp(s - inf) = 0
        lse_safe = torch.where(torch.isneginf(lse), math.inf, lse.double())
    dev = q.device
    chunk = max(1, CHUNK_BYTES // (8 * Bsz * HQ * max(Lkv, 1)))
    totals = {n: torch.zeros(t.shape, dtype=torch.float64, device=dev) for n, t in leaves.items()}
    for i0 in range(0, Lq, chunk):
        rows = slice(i0, min(i0 + chunk, Lq))
        s = sm_scale * (q[:, :, rows].detach().double() @ kd.transpose(-1, -2))
        env = {B: torch.arange(Bsz, device=dev).view(-1, 1, 1, 1), H: torch.arange(HQ, device=dev).view(1, -1, 1, 1),
               Q_IDX: torch.arange(rows.start, rows.stop, device=dev).view(1, 1, -1, 1),
               KV_IDX: torch.arange(Lkv, device=dev).view(1, 1, 1, -1), LQ: Lq, LKV: Lkv, SCORE: s,
               SPATIAL: tuple(spatial_shape) if spatial_shape is not None else None}
        with torch.enable_grad():
            scored = torch.as_tensor(evaluate(variant.score.expr, env, bound), dtype=torch.float64, device=dev)
            scored = scored.expand(s.shape)
            if not scored.requires_grad:  # the tensors are read only in conditions: zero derivative
                continue
            keep = torch.as_tensor(mask_matrix(variant.mask, env, tensors), device=dev)
            dp = dout[:, :, rows].double() @ vd.transpose(-1, -2)
            if sigmoid_bias is not None:  # p = sigmoid(s' + bias), no row normalization: dS' = dP p (1 - p)
                p = torch.where(keep, torch.sigmoid(scored.detach() + sigmoid_bias), 0.0)
                dsp = dp * p * (1 - p)
            else:
                p = torch.where(keep, torch.exp(scored.detach() - lse_safe[:, :, rows, None]), 0.0)
                dsp = p * (dp - delta[:, :, rows, None])
            with _deterministic():
                parts = torch.autograd.grad(scored, list(leaves.values()), grad_outputs=dsp, allow_unused=True)
        for n, g in zip(leaves, parts):
            if g is not None:
                totals[n] += g
    result.update({n: totals[n].to(tensors[n].dtype) for n in wanted})
    return result
