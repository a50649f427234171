"""The oracle itself, checked against attention computed eagerly from the user's own Python
functions on real tensors (no tracing, no sympy), and against SEMANTICS.md's definitions."""
from __future__ import annotations

import flex_mods
import pytest
import torch
from helpers import DEVICE, assert_matches_eager, doc_ids, eager, make_qkv, tolerance

import attngen as ag

MODS = flex_mods.score_mods(DEVICE)
B, H, L, D = 2, flex_mods.H, 48, 16


@pytest.mark.parametrize("name", list(MODS))
def test_reference_and_kernel_match_eager_flex_mods(name):
    fn = MODS[name](torch.float32)
    v = ag.Variant(score=fn)
    q, k, val = make_qkv(B, H, H, L, L, D, D, torch.float32)
    expected = eager(q, k, val, score_fn=fn)
    ref = ag.reference(v)(q, k, val, return_lse=True)
    assert_matches_eager(ref[0], ref[1], *expected, tol=1e-12)
    out, lse = ag.compile(v)(q, k, val, return_lse=True)
    assert_matches_eager(out, lse, *expected, tol=tolerance(torch.float32))


def _mask_dense(Lq, Lkv, rule):
    i = torch.arange(Lq, device=DEVICE).view(-1, 1)
    j = torch.arange(Lkv, device=DEVICE).view(1, -1)
    return rule(i, j)


@pytest.mark.parametrize("Lq,Lkv", [(30, 30), (20, 45), (45, 20)])
@pytest.mark.parametrize("name", ["causal", "causal_br", "window", "window_right", "not_causal", "or"])
def test_builtin_masks_follow_semantics(name, Lq, Lkv):
    """SEMANTICS.md, written out: causal j <= i; bottom-right j <= i + Lkv - Lq;
    sliding_window(left, right): i - left <= j <= i + right."""
    masks = {
        "causal": (ag.causal(), lambda i, j: j <= i),
        "causal_br": (ag.causal(bottom_right=True), lambda i, j: j <= i + (Lkv - Lq)),
        "window": (ag.sliding_window(4), lambda i, j: (i - 4 <= j) & (j <= i)),
        "window_right": (ag.sliding_window(2, 3), lambda i, j: (i - 2 <= j) & (j <= i + 3)),
        "not_causal": (~ag.causal(), lambda i, j: j > i),
        "or": (ag.causal() | ag.sliding_window(0, 2), lambda i, j: j <= i + 2),
    }
    mask, rule = masks[name]
    v = ag.Variant(mask=mask)
    q, k, val = make_qkv(1, 2, 2, Lq, Lkv, D, D, torch.float32)
    expected = eager(q, k, val, mask_fn=_mask_dense(Lq, Lkv, rule))
    assert_matches_eager(*ag.reference(v)(q, k, val, return_lse=True), *expected, tol=1e-12)
    assert_matches_eager(*ag.compile(v)(q, k, val, return_lse=True), *expected, tol=tolerance(torch.float32))


def test_document_mask_follows_semantics():
    docs = doc_ids(2, 40, 4, sorted_=False)
    q, k, val = make_qkv(2, 2, 2, 40, 40, D, D, torch.float32)
    keep = (docs[:, None, :, None] == docs[:, None, None, :])
    expected = eager(q, k, val, mask_fn=keep)
    v = ag.Variant(mask=ag.document())
    assert_matches_eager(*ag.reference(v)(q, k, val, return_lse=True, document_ids=docs), *expected, tol=1e-12)
    assert_matches_eager(*ag.compile(v)(q, k, val, return_lse=True, document_ids=docs), *expected,
                         tol=tolerance(torch.float32))


def test_mask_mod_with_runtime_tensor_matches_eager():
    def prefix_lm(b, h, q_idx, kv_idx, prefix):
        return (kv_idx <= q_idx) | (kv_idx < prefix[b])

    prefix = torch.tensor([3, 17], device=DEVICE)
    q, k, val = make_qkv(2, 2, 2, 30, 30, D, D, torch.float32)
    expected = eager(q, k, val, mask_fn=prefix_lm, prefix=prefix)
    v = ag.Variant(mask=prefix_lm)
    assert_matches_eager(*ag.compile(v)(q, k, val, return_lse=True, prefix=prefix), *expected,
                         tol=tolerance(torch.float32))


def test_reference_returns_float64():
    q, k, val = make_qkv(1, 1, 1, 8, 8, 16, 16, torch.float16)
    out, lse = ag.reference(ag.Variant())(q, k, val, return_lse=True)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64


def _third(score, b, h, q_idx, kv_idx):
    return torch.where(3 * kv_idx <= q_idx + 1, score, float("-inf"))


def test_integer_condition_stays_exact():
    """sympy used to rewrite 3*kv_idx <= q_idx + 1 as kv_idx <= q_idx/3 + 1/3, which the oracle then
    evaluated in float64 (5/3 + 1/3 < 2) and masked keys that torch keeps."""
    third = _third
    v = ag.Variant(score=third)
    q, k, val = make_qkv(1, 2, 2, 64, 64, D, D, torch.float32)
    expected = eager(q, k, val, score_fn=third)
    assert_matches_eager(*ag.compile(v)(q, k, val, return_lse=True), *expected, tol=tolerance(torch.float32))
    assert_matches_eager(*ag.reference(v)(q, k, val, return_lse=True), *expected, tol=1e-12)
