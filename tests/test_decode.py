"""Decoding against a contiguous KV cache (attn.decode): every softmax-family variant and
sigmoid, checked as the last rows of each sequence's full self-attention (ag.reference),
with per-sequence lengths, GQA, split counts, empty sequences, prefill-sized Lq, layouts."""
from __future__ import annotations

import pytest
import torch
from decode_helpers import Case, assert_matches, check_decode, expected, make_case, to_pages
from helpers import DEVICE, DTYPES, ON_GPU, dtype_id, rel_l2, tolerance

import attngen as ag


@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


@ag.score_mod
def softcap(score, b, h, q_idx, kv_idx):
    return 20 * torch.tanh(score / 20)


@ag.mask_mod
def same_doc(b, h, q_idx, kv_idx, doc):
    return doc[b, q_idx] == doc[b, kv_idx]


@ag.mask_mod
def prefix_lm(b, h, q_idx, kv_idx, prefix):
    return (kv_idx <= q_idx) | (kv_idx < prefix[b])


def _slopes(h):
    return torch.rand(h, device=DEVICE) * 0.5


VARIANTS = {
    "dense": (ag.Variant(name="dec_dense"), lambda B, H, L: {}),
    "causal": (ag.Variant(mask=ag.causal(), name="dec_causal"), lambda B, H, L: {}),
    "causal_br": (ag.Variant(mask=ag.causal(bottom_right=True), name="dec_causal_br"), lambda B, H, L: {}),
    "window": (ag.Variant(mask=ag.sliding_window(23), name="dec_window"), lambda B, H, L: {}),
    "alibi_causal": (ag.Variant(score=alibi, mask=ag.causal(), name="dec_alibi"),
                     lambda B, H, L: {"slopes": _slopes(H)}),
    "softcap": (ag.Variant(score=softcap, name="dec_softcap"), lambda B, H, L: {}),
    "sinks_window": (ag.Variant(mask=ag.sliding_window(31), norm=ag.softmax(sink=True), name="dec_sinks"),
                     lambda B, H, L: {"sinks": torch.randn(H, device=DEVICE)}),
    "documents": (ag.Variant(mask=same_doc & ag.causal(), name="dec_docs"),
                  lambda B, H, L: {"doc": torch.arange(L, device=DEVICE).div(29, rounding_mode="floor")
                                   .expand(B, L).contiguous()}),
    "prefix_lm": (ag.Variant(mask=prefix_lm, name="dec_prefix"),
                  lambda B, H, L: {"prefix": torch.randint(0, L, (B,), device=DEVICE)}),
    "sigmoid_causal": (ag.Variant(mask=ag.causal(), norm=ag.sigmoid(), name="dec_sigmoid"), lambda B, H, L: {}),
    "sigmoid_bias": (ag.Variant(score=alibi, norm=ag.sigmoid(bias=-2.0), name="dec_sigmoid_bias"),
                     lambda B, H, L: {"slopes": _slopes(H)}),
}


# One new token for the variants that read no query position, five (a window of positions
# per program, some rows of a band's edge tile masked) for those that do.
LQ = {"dense": 1, "softcap": 1, "sigmoid_bias": 1, "causal_br": 1}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants(name):
    """Every family decodes as the last Lq rows of the full attention, with GQA (Hq=4 on
    Hkv=2), two sequences of different lengths and a split count above one."""
    Lq = LQ.get(name, 5)
    variant, tensors = VARIANTS[name]
    case = make_case(B=2, Hq=4, Hkv=2, L=96, lens=[96, 41], Lq=Lq)
    check_decode(variant, case, num_splits=3, **tensors(2, 4, 96))


@pytest.mark.parametrize("splits", [1, 5, 16])
def test_split_counts_agree(splits):
    """Every split count gives the reference's result, including splits with no tile (the
    16-way split of a 2-tile range) and ranges not divisible by the split count."""
    case = make_case(B=2, Hq=8, Hkv=2, L=130, lens=[130, 7], Lq=2)
    check_decode(VARIANTS["causal"][0], case, num_splits=splits)


def test_default_split_count_and_mqa():
    """The split count chosen from the shapes, MQA (8 query heads on one KV head)."""
    case = make_case(B=1, Hq=8, Hkv=1, L=200, Lq=1)
    check_decode(VARIANTS["alibi_causal"][0], case, slopes=_slopes(8))


@pytest.mark.parametrize("name", ["causal", "sinks_window", "sigmoid_causal"])
def test_empty_sequences(name):
    """A sequence of length 0 gets output 0 and lse -inf (with sinks: lse = the sink's
    logit), beside sequences that have keys."""
    variant, tensors = VARIANTS[name]
    case = make_case(B=3, Hq=4, Hkv=2, L=64, lens=[0, 64, 0], Lq=1)
    out = check_decode(variant, case, num_splits=2, **tensors(3, 4, 64))
    assert (out[0] == 0).all() and (out[2] == 0).all()


def test_prefill_sized_lq():
    """Lq beyond 64 (prefill of a chunk against earlier tokens) runs the same kernel over
    several row tiles: causal, GQA, two lengths."""
    case = make_case(B=2, Hq=2, Hkv=2, L=100, lens=[100, 80], Lq=70)
    check_decode(VARIANTS["causal"][0], case, num_splits=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dtypes(dtype):
    """Every input dtype of the device (bf16 on the GPU only: the interpreter's bf16 dots are
    wrong), ALiBi under a causal mask, MQA-style grouping of 4."""
    case = make_case(B=2, Hq=8, Hkv=2, L=130, lens=[130, 64], Lq=3, dtype=dtype)
    check_decode(VARIANTS["alibi_causal"][0], case, num_splits=2, slopes=_slopes(8))


@pytest.mark.skipif(not ON_GPU, reason="a cache of 2**20 tokens: GPU only")
def test_million_token_cache():
    """Lkv = 2**20 in bf16, contiguous and as shuffled pages of 16, causal GQA with 4 new
    tokens and the default split count: the reference's bottom-right rows."""
    attn = ag.compile(VARIANTS["causal"][0])
    L, Hkv, D = 1 << 20, 2, 64
    q = torch.randn(1, 8, 4, D, device=DEVICE, dtype=torch.bfloat16)
    k, v = (torch.randn(1, Hkv, L, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    ref = ag.reference(ag.Variant(mask=ag.causal(bottom_right=True)))(q, k, v)
    lens = torch.tensor([L], dtype=torch.int32, device=DEVICE)
    assert rel_l2(attn.decode(q, k, v, lens), ref) <= tolerance(torch.bfloat16)
    order = torch.randperm(L // 16, device=DEVICE)  # the sequence's page i lives at order[i]
    k_pages, v_pages = (torch.empty(L // 16, 16, Hkv, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    k_pages[order] = k[0].transpose(0, 1).reshape(L // 16, 16, Hkv, D)
    v_pages[order] = v[0].transpose(0, 1).reshape(L // 16, 16, Hkv, D)
    out = attn.decode(q, k_pages, v_pages, lens, order.to(torch.int32)[None])
    assert rel_l2(out, ref) <= tolerance(torch.bfloat16)


@pytest.mark.skipif(not ON_GPU, reason="races between programs need a GPU")
def test_last_split_merges_every_time():
    """The split that counts last merges the others' partial results, which they wrote just
    before: 200 steps at B=1 with 64 splits (the shape where the splits finish closest
    together) all equal one unsplit launch, with sinks, so both the output and lse would show
    a part read before it was written."""
    attn = ag.compile(ag.Variant(norm=ag.softmax(sink=True), name="dec_sinks_dense"))
    q = torch.randn(1, 32, 1, 128, device=DEVICE, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, 8192, 128, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    sinks = torch.randn(32, device=DEVICE)
    want, want_lse = attn.decode(q, k, v, num_splits=1, return_lse=True, sinks=sinks)
    for _ in range(200):
        out, lse = attn.decode(q, k, v, num_splits=64, return_lse=True, sinks=sinks, check=False)
        torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(lse, want_lse, rtol=1e-4, atol=1e-4)


def test_head_dims_and_float16():
    """D not a power of two, Dv != D, float16 inputs."""
    case = make_case(B=2, Hq=4, Hkv=4, L=70, D=40, Dv=24, lens=[70, 33], Lq=3, dtype=torch.float16)
    check_decode(VARIANTS["window"][0], case, num_splits=2)


def test_strided_layouts():
    """q as a view of (B, Lq, Hq, D) and the cache as a view of (B, Lmax, Hkv, D), the layout
    models keep: no copies, the strides go to the kernel."""
    case = make_case(B=2, Hq=4, Hkv=2, L=80, lens=[80, 50], Lq=2)
    attn = ag.compile(VARIANTS["causal"][0])
    q = case.q.transpose(1, 2).contiguous().transpose(1, 2)
    k = case.k.transpose(1, 2).contiguous().transpose(1, 2)
    v = case.v.transpose(1, 2).contiguous().transpose(1, 2)
    assert not k.is_contiguous()
    out, lse = attn.decode(q, k, v, case.seq_lens, return_lse=True, num_splits=2)
    assert_matches(out, lse, *expected(attn.variant, case), torch.float32)


def test_strided_index_tensors():
    """seq_lens and block_table as strided views (every other element of larger tensors)."""
    case = make_case(B=2, Hq=4, Hkv=2, L=64, lens=[64, 30], Lq=2)
    k_pages, v_pages, table = to_pages(case.k, case.v, case.lens, 16)
    lens = torch.stack([case.seq_lens, torch.full_like(case.seq_lens, -7)], 1)[:, 0]
    wide = torch.stack([table, torch.full_like(table, -7)], 2)[:, :, 0]
    assert lens.stride(0) == 2 and wide.stride(1) == 2
    attn = ag.compile(VARIANTS["causal"][0])
    out, lse = attn.decode(case.q, k_pages, v_pages, lens, wide, return_lse=True, num_splits=2)
    assert_matches(out, lse, *expected(attn.variant, case), torch.float32)


def test_full_cache_without_seq_lens():
    """seq_lens=None: every sequence fills the cache."""
    case = make_case(B=2, Hq=4, Hkv=2, L=48, Lq=4)
    attn = ag.compile(VARIANTS["causal"][0])
    out, lse = attn.decode(case.q, case.k, case.v, return_lse=True)
    assert_matches(out, lse, *expected(attn.variant, case), torch.float32)


def test_position_free_variant_with_more_queries_than_keys():
    """A variant that reads no query position (dense softmax) takes Lq > seq_len: every
    query attends the sequence's keys, as plain attention against them computes."""
    case = make_case(B=2, Hq=4, Hkv=2, L=32, lens=[3, 32], Lq=6)
    q = torch.randn(2, 4, 6, 32, device=DEVICE)
    variant = VARIANTS["dense"][0]
    out = ag.compile(variant).decode(q, case.k, case.v, case.seq_lens)
    for b, n in enumerate(case.lens):
        ref = ag.reference(variant)(q[b:b + 1], case.k[b:b + 1, :, :n], case.v[b:b + 1, :, :n])
        assert rel_l2(out[b:b + 1], ref) <= tolerance(torch.float32)


def test_decode_continues_prefill():
    """A generation loop: the full forward on a prompt, then decoding steps that append one
    token each to a contiguous cache, agree with the full forward over the longer sequence."""
    attn = ag.compile(VARIANTS["alibi_causal"][0])
    slopes = _slopes(4)
    B, L, steps = 2, 40, 3
    case = make_case(B=B, Hq=4, Hkv=2, L=L + steps, Lq=1)
    full = attn(case.q_full, case.k, case.v, slopes=slopes)
    for t in range(steps):
        n = L + t + 1
        step = Case(case.q_full, case.k, case.v, [n] * B, 1)
        out = attn.decode(step.q, case.k, case.v, step.seq_lens, slopes=slopes)
        assert rel_l2(out, full[:, :, n - 1:n]) <= tolerance(torch.float32)


def test_split_count_heuristic():
    """The split count from shapes alone: none when the programs fill the GPU or there is one
    tile; else at most 64 splits, none of them empty, whose waves are at least 85% as full as
    with any other split count that leaves no split empty."""
    from attngen.runtime.decode_config import choose_num_splits

    slots = 3 * 132  # an H100's decoding programs in flight

    def no_empty_split(s, tiles):
        return -(-tiles // s) * (s - 1) < tiles

    def efficiency(programs, s):
        waves = programs * s / slots
        return waves / -(-waves // 1)

    assert choose_num_splits(512, 2048, slots) == 1  # B=64 x 8 KV heads
    assert choose_num_splits(8, 1, slots) == 1
    for programs, tiles in ((8, 64), (8, 2048), (64, 512), (16, 3)):
        splits = choose_num_splits(programs, tiles, slots)
        assert 1 <= splits <= min(64, tiles) and no_empty_split(splits, tiles)
        best = max(efficiency(programs, s) for s in range(1, min(64, tiles) + 1) if no_empty_split(s, tiles))
        assert efficiency(programs, splits) >= 0.85 * best
