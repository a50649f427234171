"""The float64 reference is differentiable: the oracle for the backward kernels.

torch.autograd.gradcheck compares its analytic gradients (q, k, v and learnable tensors the
score reads, runtime or captured) with finite differences, on tiny float64 problems.
"""
from __future__ import annotations

import pytest
import torch

import attngen as ag


def _qkv(B, Hq, Hkv, L, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, L, D, generator=g, dtype=torch.float64).requires_grad_()
            for h in (Hq, Hkv, Hkv)]


def test_gradcheck_alibi_causal_with_learnable_slopes():
    @ag.score_mod
    def alibi(score, b, h, q_idx, kv_idx, slopes):
        return score - slopes[h] * abs(q_idx - kv_idx)

    ref = ag.reference(ag.Variant(score=alibi, mask=ag.causal()))
    q, k, v = _qkv(1, 2, 1, 5, 16)
    slopes = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, s: ref(q, k, v, slopes=s, return_lse=True),
                                    (q, k, v, slopes))


def test_gradcheck_softcap_neighborhood_with_captured_table():
    table = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)

    @ag.score_mod
    def softcap_bias(score, b, h, q_idx, kv_idx):
        return 5.0 * torch.tanh(score / 5.0) + table[h, (kv_idx - q_idx) % 9]

    variant = ag.Variant(score=softcap_bias, mask=ag.neighborhood((3, 3)))
    q, k, v = _qkv(1, 2, 2, 12, 16, seed=1)

    def run(q, k, v, t):
        return ag.reference(variant.with_captures(table=t))(q, k, v, spatial_shape=(3, 4))

    assert torch.autograd.gradcheck(run, (q, k, v, table))


def test_fully_masked_rows_have_zero_gradients_not_nan():
    @ag.mask_mod
    def no_first_rows(b, h, q_idx, kv_idx):
        return q_idx >= 2

    ref = ag.reference(ag.Variant(mask=ag.causal() & no_first_rows))
    q, k, v = _qkv(1, 1, 1, 6, 16, seed=2)
    out, lse = ref(q, k, v, return_lse=True)
    (out.sum() + lse[lse.isfinite()].sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :, :2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_reference_keeps_low_precision_inputs_differentiable(dtype):
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in _qkv(1, 1, 1, 4, 16, seed=3))
    ag.reference(ag.Variant())(q, k, v).sum().backward()
    assert q.grad is not None and q.grad.dtype == dtype


def test_kernels_still_refuse_float64():
    q, k, v = (t.detach() for t in _qkv(1, 1, 1, 4, 16))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        ag.compile(ag.Variant())(q, k, v)
