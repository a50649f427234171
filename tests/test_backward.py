"""Gradients of compiled kernels (dense and band plans) against the float64 reference's autograd.

The backward kernels are generated from the same IR as the forward: the score_mod's
derivative comes from sympy.diff, the mask from the forward's band. Gradients of q, k, v
and of the returned lse are compared with the reference's, on random upstream gradients.
"""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, DTYPES, GRAD_TOLERANCE, check_grads, dtype_id

import attngen as ag
from attngen.testing import relative_error

_SLOPES = torch.tensor([0.25, 0.5, 0.75, 1.0])


@ag.score_mod
def _softcap(score, b, h, q_idx, kv_idx):
    return 4.0 * torch.tanh(score / 4.0)


@ag.score_mod
def _alibi(score, b, h, q_idx, kv_idx):
    return score - _SLOPES.to(DEVICE)[h] * abs(q_idx - kv_idx)


@ag.score_mod
def _squared(score, b, h, q_idx, kv_idx):
    return score * score / 4


@ag.score_mod
def _clamped_abs(score, b, h, q_idx, kv_idx):
    return torch.clamp(score, -1.5, 1.5) + 0.1 * abs(score)


@ag.score_mod
def _leaky(score, b, h, q_idx, kv_idx):
    return torch.where(score > 0, score, 0.5 * score)


@ag.mask_mod
def _window(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx <= 6) & (kv_idx - q_idx <= 2)


VARIANTS = {
    "dense": ag.Variant(),
    "causal": ag.Variant(mask=ag.causal()),
    "causal_bottom_right": ag.Variant(mask=ag.causal(bottom_right=True)),
    "window_softcap": ag.Variant(mask=ag.sliding_window(9, 3), score=_softcap),
    "alibi_causal": ag.Variant(mask=ag.causal(), score=_alibi),
    "squared_maskmod_window": ag.Variant(mask=_window, score=_squared),
    "clamp_abs": ag.Variant(score=_clamped_abs),  # derivative: Heaviside and sign
    "leaky_causal": ag.Variant(mask=ag.causal(), score=_leaky),  # derivative: Piecewise
}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradients_match_reference(name, dtype):
    check_grads(VARIANTS[name], 1, 4, 2, 45, 45, 32, 24, dtype)


@pytest.mark.parametrize("Lq,Lkv", [(37, 70), (70, 37), (1, 17), (65, 64)])
def test_gradients_cross_lengths(Lq, Lkv):
    for name in ("causal", "window_softcap", "causal_bottom_right"):
        check_grads(VARIANTS[name], 2, 2, 1, Lq, Lkv, 16, 16, torch.float32)


@pytest.mark.parametrize("name", ["dense", "alibi_causal", "window_softcap", "causal_bottom_right"])
@pytest.mark.parametrize("Lq,Lkv", [(80, 80), (71, 90)])
def test_gradients_small_tiles_many_programs(name, Lq, Lkv):
    """16 x 16 tiles: many programs, band ranges that start and end inside tiles."""
    check_grads(VARIANTS[name], 1, 4, 1, Lq, Lkv, 40, 24, torch.float32, config=ag.KernelConfig(16, 16, 4, 1))


@pytest.mark.parametrize("warps", [4, 8])
@pytest.mark.parametrize("name", ["causal", "window_softcap", "leaky_causal"])
def test_masked_steps_in_either_issue_order(name, warps):
    """Masked dK/dV steps of 8-warp kernels keep the former issue order (qk, p, dV product,
    dP: the new one spills registers there on the H100); every other step issues qk and dP
    first. Off the GPU the backward runs at the forward's config, so both orders run here."""
    check_grads(VARIANTS[name], 1, 2, 1, 45, 45, 32, 24, torch.float32, config=ag.KernelConfig(16, 16, warps, 1))


def test_fully_masked_rows_get_zero_gradients():
    """Bottom-right causal with Lq > Lkv leaves the first rows without keys."""
    variant = ag.Variant(mask=ag.causal(bottom_right=True))
    q = torch.randn(1, 2, 20, 16, device=DEVICE, requires_grad=True)
    k = torch.randn(1, 2, 8, 16, device=DEVICE, requires_grad=True)
    v = torch.randn(1, 2, 8, 16, device=DEVICE, requires_grad=True)
    out = ag.compile(variant)(q, k, v)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :, :12] == 0).all()


def test_only_out_used_and_transposed_layouts():
    """lse unused (its gradient is None) and q, k, v as transposed views of (B, L, H, D)."""
    variant = VARIANTS["causal"]
    base = [torch.randn(2, 33, 4, 16, device=DEVICE) for _ in range(3)]
    q, k, v = (t.transpose(1, 2).requires_grad_() for t in base)
    ag.compile(variant)(q, k, v).square().sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ag.reference(variant)(q, k, v).square().sum().backward()
    for a, t in zip(got, (q, k, v)):
        assert relative_error(a, t.grad) < GRAD_TOLERANCE[torch.float32]
