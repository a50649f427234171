"""Sigmoid attention and softmax with attention sinks: forward against the float64
reference over every tile plan, gradients (the sinks' included), fully masked rows and
input errors."""
from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import DEVICE, DTYPES, check, check_grads, doc_ids, dtype_id, make_qkv, rel_l2, tolerance

import attngen as ag

SMALL = ag.KernelConfig(16, 16, 4, 1)


@ag.score_mod
def _alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


@ag.score_mod
def _softcap(score, b, h, q_idx, kv_idx):
    return 6.0 * torch.tanh(score / 6.0)


@ag.mask_mod
def _same_doc(b, h, q_idx, kv_idx, doc):
    return doc[b, q_idx] == doc[b, kv_idx]


MASKS = {  # name: (mask, spatial shape or None)
    "dense": (None, None),
    "causal": (ag.causal(), None),
    "window": (ag.sliding_window(9, 2), None),
    "documents": (ag.causal() & _same_doc, None),
    "neighborhood": (ag.neighborhood((3, 5)), (7, 9)),
}
NORMS = {"sigmoid": ag.sigmoid(), "sigmoid_bias": ag.sigmoid(bias=-1.5), "sinks": ag.softmax(sink=True)}


def _tensors(norm, mask_name, B, Hq, L, learnable=False):
    out = {}
    if mask_name == "documents":
        out["doc"] = doc_ids(B, L, 3)
    if norm == ag.softmax(sink=True):
        out["sinks"] = torch.randn(Hq, device=DEVICE).requires_grad_(learnable)
    return out


def _forward_check(variant, B, Hq, Hkv, L, D, Dv, dtype, spatial, tensors, config=None):
    q, k, v = make_qkv(B, Hq, Hkv, L, L, D, Dv, dtype)
    extra = {"spatial_shape": spatial} if spatial else {}
    if isinstance(variant.norm, ag.Sigmoid):
        out = ag.compile(variant)(q, k, v, config=config, **extra, **tensors)
        ref = ag.reference(variant)(q, k, v, **extra, **tensors)
        assert out.shape == ref.shape and out.dtype == q.dtype and torch.isfinite(out).all()
        assert rel_l2(out, ref) <= tolerance(dtype)
    else:
        out, lse = ag.compile(variant)(q, k, v, config=config, return_lse=True, **extra, **tensors)
        ref, ref_lse = ag.reference(variant)(q, k, v, return_lse=True, **extra, **tensors)
        assert rel_l2(out, ref) <= tolerance(dtype)
        torch.testing.assert_close(lse.double(), ref_lse, rtol=tolerance(dtype), atol=tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("norm_name", list(NORMS))
def test_forward_matches_reference(norm_name, mask_name, dtype):
    mask, spatial = MASKS[mask_name]
    norm = NORMS[norm_name]
    L = math.prod(spatial) if spatial else 45
    variant = ag.Variant(mask=mask, norm=norm, score=_softcap if norm_name == "sinks" else None)
    _forward_check(variant, 2, 4, 2, L, 32, 24, dtype, spatial, _tensors(norm, mask_name, 2, 4, L), config=SMALL)


@pytest.mark.parametrize("norm_name", list(NORMS))
def test_forward_default_tiles_score_mod_and_gqa(norm_name):
    norm = NORMS[norm_name]
    variant = ag.Variant(mask=ag.causal(), norm=norm, score=_alibi)
    tensors = {"slopes": torch.rand(8, device=DEVICE), **_tensors(norm, "causal", 1, 8, 100)}
    _forward_check(variant, 1, 8, 2, 100, 40, 40, torch.float32, None, tensors)


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("norm_name", ["sigmoid", "sinks"])
def test_gradients(norm_name, mask_name):
    mask, spatial = MASKS[mask_name]
    norm = NORMS[norm_name]
    L = math.prod(spatial) if spatial else 45
    tensors = _tensors(norm, mask_name, 2, 4, L, learnable=True)
    check_grads(ag.Variant(mask=mask, norm=norm), 2, 4, 2, L, L, 16, 24, torch.float32, config=SMALL,
                spatial_shape=spatial, **tensors)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_gradients_low_precision(dtype):
    for norm in (ag.sigmoid(), ag.softmax(sink=True)):
        check_grads(ag.Variant(mask=ag.causal(), norm=norm, score=_softcap), 1, 2, 1, 70, 70, 32, 32, dtype,
                    **_tensors(norm, "causal", 1, 2, 70, learnable=True))


def test_sink_gradient_is_deterministic_and_learnable_score_tensors_combine():
    variant = ag.Variant(mask=ag.causal(), norm=ag.softmax(sink=True), score=_alibi)
    tensors = {"slopes": torch.rand(4, device=DEVICE).requires_grad_(),
               "sinks": torch.randn(4, device=DEVICE).requires_grad_()}
    for deterministic in (False, True):
        check_grads(variant, 1, 4, 2, 45, 45, 16, 16, torch.float32, config=SMALL, deterministic=deterministic,
                    **tensors)


def test_fully_masked_rows():
    """Rows with no attended key: sigmoid gives 0; with sinks the output is 0 and the lse is
    the sink's logit (the denominator holds exp(sink) alone)."""
    @ag.mask_mod
    def late(b, h, q_idx, kv_idx):
        return q_idx >= 10

    q, k, v = make_qkv(1, 2, 2, 30, 30, 16, 16, torch.float32)
    out = ag.compile(ag.Variant(mask=late, norm=ag.sigmoid()))(q, k, v)
    assert (out[:, :, :10] == 0).all()
    sinks = torch.tensor([0.5, -1.0], device=DEVICE)
    out, lse = ag.compile(ag.Variant(mask=late, norm=ag.softmax(sink=True)))(q, k, v, return_lse=True, sinks=sinks)
    assert (out[:, :, :10] == 0).all()
    torch.testing.assert_close(lse[0, :, :10], sinks[:, None].expand(2, 10))
    check(ag.Variant(mask=late, norm=ag.softmax(sink=True)), 1, 2, 2, 30, 30, 16, 16, torch.float32, sinks=sinks)


def test_sigmoid_has_no_lse():
    q, k, v = make_qkv(1, 2, 2, 16, 16, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="return_lse"):
        ag.compile(ag.Variant(norm=ag.sigmoid()))(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="return_lse"):
        ag.reference(ag.Variant(norm=ag.sigmoid()))(q, k, v, return_lse=True)


def test_sigmoid_source_has_no_softmax_state():
    source = ag.compile(ag.Variant(mask=ag.causal(), norm=ag.sigmoid())).source
    for name in ("m_i", "l_i", "Lse", "alpha"):
        assert not re.search(rf"\b{name}\b", source), name
    assert "bias2 = -math.log(Lkv) * LOG2E" in source


@pytest.mark.parametrize("sinks,error", [(torch.zeros(3), ValueError), (torch.zeros(2, 2), ValueError),
                                         (torch.zeros(2, dtype=torch.int64), TypeError)])
def test_sinks_are_validated(sinks, error):
    q, k, v = make_qkv(1, 2, 2, 16, 16, 16, 16, torch.float32)
    with pytest.raises(error, match="sinks"):
        ag.compile(ag.Variant(norm=ag.softmax(sink=True)))(q, k, v, sinks=sinks.to(DEVICE))
