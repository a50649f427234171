"""Decoding over a paged KV cache (vLLM/FlashInfer layout) and ag.paged_append: the same
tokens as a contiguous cache give the reference's result, for page sizes that are a multiple
of the kernel's KV tile, smaller than it, and odd; masks and score_mods see logical
positions; appends land in the right slots."""
from __future__ import annotations

import pytest
import torch
from decode_helpers import Case, assert_matches, check_decode, expected, make_case, to_pages
from helpers import DEVICE, rel_l2, tolerance
from test_decode import VARIANTS, _slopes

import attngen as ag


@pytest.mark.parametrize("page_size", [5, 16, 64])
def test_page_sizes(page_size):
    """Odd pages (5), pages smaller than the 32-key tile (16: one table entry per key) and
    pages holding whole tiles (64: one entry per tile), shuffled in the cache, with spare
    pages and -1 entries past each sequence: causal GQA decoding of 3 new tokens."""
    case = make_case(B=3, Hq=4, Hkv=2, L=150, lens=[150, 61, 3], Lq=3)
    config = ag.DecodeConfig(block_m=16, block_n=32, num_warps=4, num_stages=1, num_splits=2)
    check_decode(VARIANTS["causal"][0], case, paged=page_size, config=config)


@pytest.mark.parametrize("name", ["documents", "alibi_causal", "sinks_window", "sigmoid_causal"])
def test_variants_over_pages(name):
    """Masks and score_mods over pages see logical positions: document ids and ALiBi
    distances indexed by position, windows, sinks, sigmoid."""
    variant, tensors = VARIANTS[name]
    case = make_case(B=2, Hq=4, Hkv=2, L=96, lens=[96, 45], Lq=4)
    check_decode(variant, case, paged=16, num_splits=2, **tensors(2, 4, 96))


def test_empty_sequence_over_pages():
    """A sequence of length 0 with no page in its table row (all -1): output 0, lse -inf."""
    case = make_case(B=2, Hq=2, Hkv=2, L=40, lens=[0, 40], Lq=1)
    out = check_decode(VARIANTS["causal"][0], case, paged=16)
    assert (out[0] == 0).all()


def test_prefill_over_pages():
    """Lq beyond the decode range (a prompt chunk of 70 tokens after earlier ones) over
    pages: the same kernel, several row tiles."""
    case = make_case(B=2, Hq=2, Hkv=1, L=110, lens=[110, 75], Lq=70)
    check_decode(VARIANTS["causal"][0], case, paged=16, num_splits=2)


def _empty_cache(B, Hkv, D, page_size, pages_per_seq):
    num_pages = B * pages_per_seq + 2
    k_cache = torch.zeros(num_pages, page_size, Hkv, D, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    table = torch.randperm(num_pages)[:B * pages_per_seq].view(B, pages_per_seq).to(torch.int32).to(DEVICE)
    return k_cache, v_cache, table


def test_append_writes_slots():
    """paged_append puts token t of sequence b at page block_table[b, t // page_size], slot
    t % page_size, returns seq_lens + L_new and leaves seq_lens and every other slot alone."""
    B, Hkv, D, page_size = 2, 2, 16, 5
    k_cache, v_cache, table = _empty_cache(B, Hkv, D, page_size, 4)
    seq_lens = torch.tensor([3, 9], dtype=torch.int32, device=DEVICE)
    k_new = torch.randn(B, Hkv, 4, D, device=DEVICE)
    v_new = torch.randn(B, Hkv, 4, D, device=DEVICE)
    grown = ag.paged_append(k_cache, v_cache, table, seq_lens, k_new, v_new)
    assert grown.tolist() == [7, 13] and seq_lens.tolist() == [3, 9] and grown.dtype == torch.int32
    written = torch.zeros(k_cache.shape[:2], dtype=torch.bool, device=DEVICE)
    for b, start in enumerate((3, 9)):
        for t in range(4):
            page, slot = int(table[b, (start + t) // page_size]), (start + t) % page_size
            assert torch.equal(k_cache[page, slot], k_new[b, :, t]) and torch.equal(v_cache[page, slot], v_new[b, :, t])
            written[page, slot] = True
    assert (k_cache[~written] == 0).all() and (v_cache[~written] == 0).all()


def test_generation_loop_with_appends():
    """A prompt appended into empty pages, then decoding steps that append their token and
    attend: every step agrees with the reference over the tokens so far (sequences of
    different lengths, pages of 16, sliding window with sinks)."""
    variant, tensors = VARIANTS["sinks_window"]
    sinks = tensors(2, 4, 0)["sinks"]
    attn = ag.compile(variant)
    prompt, steps = [30, 17], 3
    L = max(prompt) + steps
    case = make_case(B=2, Hq=4, Hkv=2, L=L, Lq=1)
    k_cache, v_cache, table = _empty_cache(2, 2, 32, 16, -(-L // 16))
    # prompts of different lengths: one append per sequence (a batch of one row of the table)
    for b, n in enumerate(prompt):
        start = torch.zeros(1, dtype=torch.int32, device=DEVICE)
        ag.paged_append(k_cache, v_cache, table[b:b + 1], start, case.k[b:b + 1, :, :n], case.v[b:b + 1, :, :n])
    seq_lens = torch.tensor(prompt, dtype=torch.int32, device=DEVICE)
    for t in range(steps):
        pos = seq_lens.long()
        k_step = torch.stack([case.k[b, :, int(pos[b])] for b in range(2)])[:, :, None]
        v_step = torch.stack([case.v[b, :, int(pos[b])] for b in range(2)])[:, :, None]
        seq_lens = ag.paged_append(k_cache, v_cache, table, seq_lens, k_step, v_step)
        step = Case(case.q_full, case.k, case.v, seq_lens.tolist(), 1)
        out, lse = attn.decode(step.q, k_cache, v_cache, seq_lens, table, return_lse=True, sinks=sinks)
        assert_matches(out, lse, *expected(variant, step, sinks=sinks), torch.float32)


def test_paged_equals_contiguous_with_default_splits():
    """The split count chosen from the shapes, ALiBi over pages of 16 against the same
    tokens contiguous: equal up to rounding."""
    variant = VARIANTS["alibi_causal"][0]
    attn = ag.compile(variant)
    slopes = _slopes(4)
    case = make_case(B=2, Hq=4, Hkv=2, L=128, lens=[128, 100], Lq=2)
    contiguous = attn.decode(case.q, case.k, case.v, case.seq_lens, slopes=slopes)
    k_pages, v_pages, table = to_pages(case.k, case.v, case.lens, 16)
    paged = attn.decode(case.q, k_pages, v_pages, case.seq_lens, table, slopes=slopes)
    assert rel_l2(paged, contiguous) <= tolerance(torch.float32)
