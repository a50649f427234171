"""Built-in masks, mask_mods and their compositions against the reference, plus which
tile strategy each lowers to."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, DTYPES, FP32_CLOSE, big, check, compare, doc_ids, dtype_id, make_qkv

import attngen as ag

B, H, D = 2, 2, 32
L = big(100, 300)


def _causal_mask_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _prefix_lm(b, h, q_idx, kv_idx, prefix_length):
    return kv_idx < prefix_length[b]


def _stripes(b, h, q_idx, kv_idx):
    return (q_idx + kv_idx) % 3 != 0


def _head_parity(b, h, q_idx, kv_idx):
    return (kv_idx % 2) == (h % 2)


# --------------------------------------------------------------------------- built-ins
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mask,strategy", [
    (ag.causal(), "band"),
    (ag.sliding_window(7), "band"),
    (ag.sliding_window(5, 3), "band"),
    (ag.sliding_window(0, 9), "band"),
    (ag.sliding_window(0, 0), "band"),
    (ag.sliding_window(17, 17), "band"),
], ids=["causal", "window7", "window5_3", "window0_9", "diagonal", "window17_17"])
def test_band_masks(mask, strategy, dtype):
    attn = ag.compile(ag.Variant(mask=mask))
    assert attn.ir.strategy == strategy
    check(attn, B, H, H, L, L, D, D, dtype)


@pytest.mark.parametrize("Lq,Lkv", [(big(37, 100), big(101, 333)), (big(101, 333), big(37, 100)),
                                    (64, 64), (1, 50), (50, 1)])
@pytest.mark.parametrize("bottom_right", [False, True], ids=["top_left", "bottom_right"])
def test_causal_cross_lengths(bottom_right, Lq, Lkv):
    """Lq > Lkv with bottom_right leaves the first Lq - Lkv queries with no key at all."""
    out, lse, _, ref_lse = check(ag.Variant(mask=ag.causal(bottom_right=bottom_right)),
                                 B, H, H, Lq, Lkv, D, D, torch.float32)
    n_empty = max(Lq - Lkv, 0) if bottom_right else 0
    assert int(torch.isneginf(lse[0, 0]).sum()) == n_empty
    if n_empty:
        assert (out[:, :, :n_empty] == 0).all()


def test_sliding_window_cross_lengths():
    check(ag.Variant(mask=ag.sliding_window(9, 4)), B, H, H, 33, 97, D, D, torch.float32)
    check(ag.Variant(mask=ag.sliding_window(3, 0)), B, H, H, 97, 33, D, D, torch.float32)


def test_causal_matches_explicit_lower_triangle():
    """Independent of the reference: causal equals dense attention with an explicit mask."""
    q, k, v = make_qkv(1, 2, 2, 40, 40, 32, 32, torch.float32)
    out = ag.compile(ag.Variant(mask=ag.causal()))(q, k, v)
    expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                                is_causal=True)
    torch.testing.assert_close(out.double(), expected, **FP32_CLOSE)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("sorted_", [True, False], ids=["sorted", "unsorted"])
def test_document(sorted_, dtype):
    attn = ag.compile(ag.Variant(mask=ag.document()))
    assert attn.ir.strategy == "tiles"
    docs = doc_ids(B, L, n_docs=5, sorted_=sorted_)
    check(attn, B, H, H, L, L, D, D, dtype, document_ids=docs)


def test_document_int32_ids_and_single_document():
    attn = ag.compile(ag.Variant(mask=ag.document()))
    check(attn, B, H, H, L, L, D, D, torch.float32, document_ids=doc_ids(B, L).to(torch.int32))
    # a single document is plain dense attention
    ones = torch.zeros(B, L, dtype=torch.int64, device=DEVICE)
    out = check(attn, B, H, H, L, L, D, D, torch.float32, document_ids=ones)[0]
    assert out.shape == (B, H, L, D)


def test_document_causal():
    attn = ag.compile(ag.Variant(mask=ag.document() & ag.causal()))
    check(attn, B, H, H, L, L, D, D, torch.float32, document_ids=doc_ids(B, L, 6))


# --------------------------------------------------------------------------- mask_mods
def test_prefix_lm_or_causal():
    """Prefix-LM: bidirectional over a per-batch prefix (runtime tensor), causal after it."""
    variant = ag.Variant(mask=ag.mask_mod(_prefix_lm) | ag.causal(), name="prefix_lm")
    prefix = torch.tensor([5, 61][:B], device=DEVICE, dtype=torch.int64)
    check(variant, B, H, H, L, L, D, D, torch.float32, prefix_length=prefix)
    # the same call with a different prefix gives a different answer (the tensor is read)
    q, k, v = make_qkv(B, H, H, L, L, D, D, torch.float32)
    a = ag.compile(variant)(q, k, v, prefix_length=prefix)
    b = ag.compile(variant)(q, k, v, prefix_length=prefix + 20)
    assert not torch.allclose(a, b)
    compare(variant, q, k, v, prefix_length=prefix + 20)


def test_mask_mod_equivalent_to_causal_lowers_to_band():
    attn = ag.compile(ag.Variant(mask=_causal_mask_mod))
    assert attn.ir.strategy == "band"
    check(attn, B, H, H, L, L, D, D, torch.float32)
    q, k, v = make_qkv(B, H, H, L, L, D, D, torch.float32)
    torch.testing.assert_close(attn(q, k, v), ag.compile(ag.Variant(mask=ag.causal()))(q, k, v),
                               rtol=0, atol=0)


@pytest.mark.parametrize("fn,strategy", [
    (lambda b, h, q_idx, kv_idx: q_idx - kv_idx <= 8, "band"),
    (lambda b, h, q_idx, kv_idx: (q_idx >= kv_idx) & (q_idx - kv_idx < 6), "band"),
    (lambda b, h, q_idx, kv_idx: abs(q_idx - kv_idx) <= 4, "tiles"),
    (_stripes, "tiles"),
    (_head_parity, "tiles"),
    (lambda b, h, q_idx, kv_idx: (q_idx // 16) == (kv_idx // 16), "tiles"),
    (lambda b, h, q_idx, kv_idx: (kv_idx < 10) | (q_idx == kv_idx), "tiles"),
], ids=["window_le", "causal_window", "abs_window", "stripes", "head_parity", "blocks", "global_or_diag"])
def test_mask_mods(fn, strategy):
    attn = ag.compile(ag.Variant(mask=fn))
    if strategy == "band":
        assert attn.ir.strategy == "band"
    check(attn, B, H, H, L, L, D, D, torch.float32)


def test_captured_tensor_in_mask_mod():
    keep_kv = torch.rand(L, device=DEVICE) > 0.3

    keep_kv_i = keep_kv.to(torch.int32)

    def sparse_keys(b, h, q_idx, kv_idx):
        return keep_kv_i[kv_idx] == 1

    check(ag.Variant(mask=sparse_keys), B, H, H, L, L, D, D, torch.float32)


# --------------------------------------------------------------------------- composition
COMBOS = {
    "causal_and_window": lambda: ag.causal() & ag.sliding_window(10, 10),
    "causal_or_window": lambda: ag.causal() | ag.sliding_window(0, 5),
    "not_causal": lambda: ~ag.causal(),
    "not_window": lambda: ~ag.sliding_window(4, 4),
    "window_and_not_diag": lambda: ag.sliding_window(3, 3) & ~ag.sliding_window(0, 0),
    "doc_or_window": lambda: ag.document() | ag.sliding_window(2),
    "doc_and_not_causal": lambda: ag.document() & ~ag.causal(),
    "stripes_and_causal": lambda: ag.mask_mod(_stripes) & ag.causal(),
    "stripes_or_not_causal": lambda: ag.mask_mod(_stripes) | ~ag.causal(),
    "plain_fn_and_builtin": lambda: ag.causal() & _head_parity,
    "builtin_and_plain_fn": lambda: _head_parity & ag.causal(),
    "double_not": lambda: ~~ag.causal(),
}


@pytest.mark.parametrize("name", list(COMBOS))
def test_mask_combinations(name):
    mask = COMBOS[name]()
    variant = ag.Variant(mask=mask)
    tensors = {"document_ids": doc_ids(B, L, 5)} if "doc" in name else {}
    check(variant, B, H, H, L, L, D, D, torch.float32, **tensors)


def test_and_of_two_bands_merges_to_one_band():
    attn = ag.compile(ag.Variant(mask=ag.causal() & ag.sliding_window(10, 10)))
    assert attn.ir.strategy == "band"
    assert "band(-10 <= kv_idx - q_idx <= 0)" in str(attn.ir)


def test_score_mod_and_mask_together():
    def alibi(score, b, h, q_idx, kv_idx, slopes):
        return score - slopes[h] * abs(q_idx - kv_idx)

    variant = ag.Variant(score=alibi, mask=ag.causal() & ag.document(), name="alibi_doc")
    slopes = torch.rand(H, device=DEVICE)
    check(variant, B, H, H, L, L, D, D, torch.float32, slopes=slopes, document_ids=doc_ids(B, L, 3))


def test_score_returning_neg_inf_depending_on_score():
    """A data-dependent -inf (cannot be moved to the mask) behaves as masked."""

    def positive_only(score, b, h, q_idx, kv_idx):
        return torch.where(score > 0, score, float("-inf"))

    check(ag.Variant(score=positive_only, mask=ag.causal()), B, H, H, L, L, D, D, torch.float32)

    def never(score, b, h, q_idx, kv_idx):
        return torch.where(score > 1e4, score, float("-inf"))

    out, lse, *_ = check(ag.Variant(score=never), B, H, H, L, L, D, D, torch.float32)
    assert torch.isneginf(lse).all() and (out == 0).all()
