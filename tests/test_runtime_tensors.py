"""Runtime and captured tensors are read at every call; the run-time tile classification
is cached per tensor identity and version, and invalidated by in-place writes."""
from __future__ import annotations

import torch
from helpers import DEVICE, FP32_CLOSE, big, compare, doc_ids, make_qkv

import attngen as ag

B, H, D = 2, 2, 16
L = big(96, 300)


def test_document_ids_changed_in_place():
    """Each step changes which tiles are full / partial / empty, so stale tile lists would
    skip needed tiles or unmask partial ones."""
    attn = ag.compile(ag.Variant(mask=ag.document()))
    assert attn.ir.strategy == "tiles"
    q, k, v = make_qkv(B, H, H, L, L, D, D, torch.float32)
    dense = ag.compile(ag.Variant())(q, k, v)
    docs = torch.zeros(B, L, dtype=torch.int64, device=DEVICE)   # one document: every tile full
    out = compare(attn, q, k, v, document_ids=docs)[0]
    torch.testing.assert_close(out, dense, **FP32_CLOSE)

    docs.copy_(doc_ids(B, L, 7))                                 # copy_: now mostly partial tiles
    out = compare(attn, q, k, v, document_ids=docs)[0]
    assert not torch.allclose(out, dense, rtol=1e-3, atol=1e-3)

    docs[:] = torch.arange(L, device=DEVICE)                     # __setitem__: every token alone,
    alone = compare(attn, q, k, v, document_ids=docs)[0]         # off-diagonal tiles empty
    torch.testing.assert_close(alone, v, **FP32_CLOSE)

    docs.fill_(3)                                                # fill_: every tile full again
    out = compare(attn, q, k, v, document_ids=docs)[0]
    torch.testing.assert_close(out, dense, **FP32_CLOSE)


def test_document_ids_view_changed_through_its_base():
    """Writing through another view of the same storage bumps the shared version counter."""
    attn = ag.compile(ag.Variant(mask=ag.document() & ag.causal()))
    q, k, v = make_qkv(B, H, H, L, L, D, D, torch.float32)
    base = torch.zeros(B, L + 8, dtype=torch.int64, device=DEVICE)
    docs = base[:, 4:4 + L]                 # one document: causal tiles are full or empty
    compare(attn, q, k, v, document_ids=docs)
    base[:, 4 + L // 3:] += 5               # two documents: some full tiles become partial
    compare(attn, q, k, v, document_ids=docs)


def test_classification_is_reused_until_a_write():
    attn = ag.compile(ag.Variant(mask=ag.document()))
    q, k, v = make_qkv(B, H, H, L, L, D, D, torch.float32)
    docs = doc_ids(B, L, 4)
    attn(q, k, v, document_ids=docs)
    builds = attn._tiles.builds
    attn(q, k, v, document_ids=docs)
    assert attn._tiles.builds == builds, "same tensor, same version: the tile lists are reused"
    docs[0, 0] = docs[0, 0]                 # an in-place write, even of the same value
    attn(q, k, v, document_ids=docs)
    assert attn._tiles.builds == builds + 1
    attn(q, k, v, document_ids=docs.clone())  # another tensor
    assert attn._tiles.builds == builds + 2


def test_new_document_tensor_each_call():
    attn = ag.compile(ag.Variant(mask=ag.document()))
    q, k, v = make_qkv(B, H, H, L, L, D, D, torch.float32)
    for n_docs in (2, 5, 9):
        compare(attn, q, k, v, document_ids=doc_ids(B, L, n_docs, sorted_=n_docs != 5))


def test_different_shapes_with_one_compiled_variant():
    attn = ag.compile(ag.Variant(mask=ag.document()))
    for Lx in (17, 64, L):
        q, k, v = make_qkv(1, H, H, Lx, Lx, D, D, torch.float32)
        compare(attn, q, k, v, document_ids=doc_ids(1, Lx, 3))


def test_captured_tensor_read_by_reference_in_score():
    head_bias = torch.zeros(H, device=DEVICE)

    def biased(score, b, h, q_idx, kv_idx):
        return score + head_bias[h] * (kv_idx % 2 == 0)

    attn = ag.compile(ag.Variant(score=biased))
    q, k, v = make_qkv(B, H, H, 40, 40, D, D, torch.float32)
    before = compare(attn, q, k, v)[0]
    head_bias.copy_(torch.tensor([3.0, -3.0], device=DEVICE))
    after = compare(attn, q, k, v)[0]
    assert not torch.allclose(before, after)


def test_captured_tensor_in_mask_invalidated_by_write():
    allowed = torch.ones(L, dtype=torch.int32, device=DEVICE)

    def selected_keys(b, h, q_idx, kv_idx):
        return allowed[kv_idx] != 0

    attn = ag.compile(ag.Variant(mask=ag.causal() & selected_keys))
    assert attn.ir.strategy == "tiles"
    q, k, v = make_qkv(B, H, H, L, L, D, D, torch.float32)
    compare(attn, q, k, v)
    allowed[::3] = 0
    out, lse, *_ = compare(attn, q, k, v)
    assert torch.isneginf(lse[:, :, 0]).all()   # row 0 only sees key 0, now dropped
    allowed.zero_()
    out, lse, *_ = compare(attn, q, k, v)
    assert torch.isneginf(lse).all() and (out == 0).all()


def test_runtime_tensor_in_mask_per_batch():
    def prefix(b, h, q_idx, kv_idx, prefix_length):
        return (kv_idx < prefix_length[b]) | (kv_idx <= q_idx)

    attn = ag.compile(ag.Variant(mask=prefix))
    q, k, v = make_qkv(B, H, H, L, L, D, D, torch.float32)
    lengths = torch.tensor([0, L // 2], device=DEVICE)
    compare(attn, q, k, v, prefix_length=lengths)
    lengths[0] = L                          # batch 0 becomes fully bidirectional
    out = compare(attn, q, k, v, prefix_length=lengths)[0]
    torch.testing.assert_close(out[0], ag.compile(ag.Variant())(q, k, v)[0], **FP32_CLOSE)


def test_per_head_mask_tiles():
    def even_heads_causal(b, h, q_idx, kv_idx):
        return (h % 2 == 1) | (kv_idx <= q_idx)

    attn = ag.compile(ag.Variant(mask=even_heads_causal))
    q, k, v = make_qkv(1, 4, 2, L, L, D, D, torch.float32)
    out = compare(attn, q, k, v)[0]
    causal = ag.compile(ag.Variant(mask=ag.causal()))(q, k, v)
    dense = ag.compile(ag.Variant())(q, k, v)
    torch.testing.assert_close(out[:, 0::2], causal[:, 0::2], **FP32_CLOSE)
    torch.testing.assert_close(out[:, 1::2], dense[:, 1::2], **FP32_CLOSE)
