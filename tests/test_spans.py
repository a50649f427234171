"""Spans: the classifier records, for every query, the first and last key its mask keeps and
how many, and the same for every key over the queries (attngen/runtime/tiles.py). Where every
position keeps exactly its span, partial tiles test the span's two bounds instead of the mask.

Checked here: the recorded spans against the mask evaluated densely in torch (an oracle that
shares nothing with the kernels), the exactness decision per side, the kernels with spans
against the reference (forward and backward, ragged lengths, GQA, empty rows), and that the
span test is what the kernels run when the decision says so."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, GRAD_TOLERANCE, check, check_grads, compare, make_qkv

import attngen as ag

SMALL = ag.KernelConfig(16, 16, 4, 1)


@ag.mask_mod
def prefix_lm(b, h, q_idx, kv_idx):
    return (kv_idx < 21) | (q_idx >= kv_idx)


@ag.mask_mod
def gapped_rows(b, h, q_idx, kv_idx, document_ids):
    return (document_ids[b, q_idx] == document_ids[b, kv_idx]) & (kv_idx % 3 != 1)


@ag.mask_mod
def gapped_keys(b, h, q_idx, kv_idx, document_ids):
    return (document_ids[b, q_idx] == document_ids[b, kv_idx]) & (q_idx % 3 != 1)


@ag.mask_mod
def sawtooth(b, h, q_idx, kv_idx):
    """Each row keeps one span [0, 10 * (q % 5)]; each key is kept by rows that are not one span."""
    return kv_idx <= (q_idx % 5) * 10


@ag.mask_mod
def padded_documents(b, h, q_idx, kv_idx, document_ids):
    """Queries of padding (id -1) keep nothing: empty rows, whose spans are exact too."""
    return (document_ids[b, q_idx] == document_ids[b, kv_idx]) & (document_ids[b, q_idx] >= 0)


@ag.mask_mod
def head_windows(b, h, q_idx, kv_idx):
    """A per-head causal window: the spans depend on the head (GQA walks the group's heads)."""
    return (q_idx >= kv_idx) & (q_idx - kv_idx <= 8 + 11 * h)


def _documents(B: int, L: int) -> torch.Tensor:
    ids = torch.repeat_interleave(torch.tensor([0, 1, 2]), torch.tensor([29, 40, L - 69]))
    return ids.expand(B, -1).contiguous().to(DEVICE)


def _padded(B: int, L: int) -> torch.Tensor:
    ids = _documents(B, L).clone()
    ids[:, L - 13:] = -1
    return ids


def _dense_mask(name: str, B: int, H: int, Lq: int, Lkv: int, tensors: dict) -> torch.Tensor:
    """(B, H, Lq, Lkv) bool, written directly in torch."""
    i = torch.arange(Lq, device=DEVICE).view(1, 1, -1, 1)
    j = torch.arange(Lkv, device=DEVICE).view(1, 1, 1, -1)
    h = torch.arange(H, device=DEVICE).view(1, -1, 1, 1)
    if name == "prefix_lm":
        return ((j < 21) | (i >= j)).expand(B, H, Lq, Lkv)
    if name == "head_windows":
        return ((i >= j) & (i - j <= 8 + 11 * h)).expand(B, H, Lq, Lkv)
    doc = tensors["document_ids"]
    same = doc[:, None, :, None] == doc[:, None, None, :]
    if name == "documents_causal":
        return (same & (i >= j)).expand(B, H, Lq, Lkv)
    if name == "gapped_rows":
        return (same & (j % 3 != 1)).expand(B, H, Lq, Lkv)
    if name == "gapped_keys":
        return (same & (i % 3 != 1)).expand(B, H, Lq, Lkv)
    if name == "padded_documents":
        return (same & (doc[:, None, :, None] >= 0)).expand(B, H, Lq, Lkv)
    raise ValueError(name)


CASES = {
    "documents_causal": (ag.document() & ag.causal(), _documents, 90, 90),
    "prefix_lm": (prefix_lm, None, 70, 90),
    "padded_documents": (padded_documents, _padded, 90, 90),
    "head_windows": (head_windows, None, 90, 90),
    "gapped_rows": (gapped_rows, _documents, 90, 90),
    "gapped_keys": (gapped_keys, _documents, 90, 90),
}


def _forward_lists(attn):
    (_, lists), = attn._tiles._entries.values()
    return lists


def _spans_of(keep: torch.Tensor, other: int) -> torch.Tensor:
    """(..., positions, other) bool -> (..., 3, positions): first, last, count; [other, -1], 0 when empty."""
    pos = torch.arange(keep.shape[-1], device=keep.device)
    first = torch.where(keep, pos, other).amin(-1)
    last = torch.where(keep, pos, -1).amax(-1)
    return torch.stack((first, last, keep.sum(-1)), dim=-2).to(torch.int32)


@pytest.mark.parametrize("name", list(CASES))
def test_classifier_spans_match_the_mask(name):
    mask, make_ids, Lq, Lkv = CASES[name]
    B, H = 2, 3
    tensors = {"document_ids": make_ids(B, Lkv)} if make_ids else {}
    attn = ag.compile(ag.Variant(mask=mask))
    q, k, v = make_qkv(B, H, H, Lq, Lkv, 32, 32, torch.float32)
    attn(q, k, v, config=SMALL, **tensors)
    lists = _forward_lists(attn)
    keep = _dense_mask(name, B, H, Lq, Lkv, tensors)
    bm, hm = lists.spans.shape[:2]
    keep = keep[:bm, :hm]  # the lists are per batch / head only where the mask reads b / h
    assert torch.equal(lists.spans, _spans_of(keep, Lkv))
    assert torch.equal(lists.column_spans, _spans_of(keep.transpose(-1, -2), Lq))


@pytest.mark.parametrize("name,rows,keys", [
    ("documents_causal", True, True),
    ("prefix_lm", True, True),  # keys past the queries (Lkv > Lq) are kept by none: exact too
    ("padded_documents", True, True),  # empty rows and never-kept keys are exact
    ("gapped_rows", False, True),  # rows skip every third key; each key is kept by its document
    ("gapped_keys", True, False),  # every third query keeps nothing; keys skip those queries
])
def test_exactness_is_decided_per_side(name, rows, keys):
    mask, make_ids, Lq, Lkv = CASES[name]
    tensors = {"document_ids": make_ids(1, Lkv)} if make_ids else {}
    attn = ag.compile(ag.Variant(mask=mask))
    q, k, v = make_qkv(1, 2, 2, Lq, Lkv, 32, 32, torch.float32)
    attn(q, k, v, config=SMALL, **tensors)
    lists = _forward_lists(attn)
    assert lists.spans_exact == rows
    assert lists.transposed().spans_exact == keys


@pytest.mark.parametrize("name", ["documents_causal", "prefix_lm", "padded_documents", "head_windows"])
def test_kernels_with_spans_match_the_reference(name):
    mask, make_ids, Lq, Lkv = CASES[name]
    Hq, Hkv = (4, 2) if name == "head_windows" else (2, 2)
    tensors = {"document_ids": make_ids(2, Lkv)} if make_ids else {}
    attn = ag.compile(ag.Variant(mask=mask))
    check(attn, 2, Hq, Hkv, Lq, Lkv, 32, 32, torch.float32, config=SMALL, **tensors)
    assert _forward_lists(attn).spans_exact
    check_grads(attn, 2, Hq, Hkv, Lq, Lkv, 32, 32, torch.float32, config=SMALL, **tensors)


def test_the_span_test_is_what_runs():
    """Told (wrongly) that a gapped mask keeps whole spans, the forward keeps the gaps: the
    kernels test the spans, not the mask, when the decision says so."""
    attn = ag.compile(ag.Variant(mask=gapped_rows))
    ids = _documents(1, 90)
    q, k, v = make_qkv(1, 2, 2, 90, 90, 32, 32, torch.float32)
    compare(attn, q, k, v, config=SMALL, document_ids=ids)
    lists = _forward_lists(attn)
    assert not lists.spans_exact
    lists.spans_exact = True
    out = attn(q, k, v, config=SMALL, document_ids=ids)
    ref = ag.reference(attn.variant)(q, k, v, document_ids=ids)
    assert (out - ref).norm() / ref.norm() > 0.1


def test_the_key_span_test_is_what_the_dkdv_pass_runs():
    """The same for the dK/dV pass: told that a sawtooth's keys (kept by every fifth query
    and its neighbours, not one span) keep whole spans, its dV takes the gaps' terms."""
    attn = ag.compile(ag.Variant(mask=sawtooth))
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 2, 90, 90, 32, 32, torch.float32))
    dout = torch.randn(1, 2, 90, 32, device=DEVICE)
    ref_dv, = torch.autograd.grad(ag.reference(attn.variant)(q, k, v), (v,), dout)
    dv, = torch.autograd.grad(attn(q, k, v), (v,), dout)
    assert (dv - ref_dv).norm() / ref_dv.norm() < GRAD_TOLERANCE[torch.float32]
    transposed = [lists._transposed for _, lists in attn._tiles._entries.values() if lists._transposed is not None]
    assert transposed and all(lists.spans_exact for _, lists in attn._tiles._entries.values())
    assert not any(t.spans_exact for t in transposed)
    for t in transposed:
        t.spans_exact = True
    dv, = torch.autograd.grad(attn(q, k, v), (v,), dout)
    assert (dv - ref_dv).norm() / ref_dv.norm() > 0.1
