"""Bad input to attn.decode and ag.paged_append: TypeError/ValueError naming the argument,
raised before anything is launched; the device-reading checks (block table entries,
sequence lengths) and how check=False skips them."""
from __future__ import annotations

import pytest
import torch
from decode_helpers import make_case, to_pages
from helpers import DEVICE
from test_decode import VARIANTS

import attngen as ag

CAUSAL = VARIANTS["causal"][0]
DENSE = VARIANTS["dense"][0]


def _i32(*values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


@pytest.fixture
def case():
    return make_case(B=2, Hq=4, Hkv=2, L=40, D=16, lens=[40, 20], Lq=2)


@pytest.fixture
def pages(case):
    return to_pages(case.k, case.v, case.lens, 8, spare=1)


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_shapes_and_dtypes(case, pages):
    """Host checks, each naming its argument."""
    decode = ag.compile(CAUSAL).decode
    q, k, v, lens = case.q, case.k, case.v, case.seq_lens
    k_pages, v_pages, table = pages
    _raises(TypeError, "q must be a torch.Tensor", decode, q.tolist(), k, v, lens)
    _raises(ValueError, r"q must be 4-D", decode, q[0], k, v, lens)
    _raises(TypeError, "q, k_cache and v_cache must share a dtype", decode, q, k.half(), v, lens)
    _raises(TypeError, "k_cache must be float16, bfloat16 or float32", decode, q, k.double(), v, lens)
    _raises(ValueError, r"batch sizes differ: q has 2, k_cache has 1", decode, q, k[:1], v[:1], lens)
    _raises(ValueError, r"q's head count \(4\) must be a multiple of the cache's \(3\)", decode, q,
            torch.cat([k, k[:, :1]], 1), torch.cat([v, v[:, :1]], 1), lens)
    _raises(ValueError, r"k_cache's head dim \(16\) must equal q's \(32\)", decode, torch.cat([q, q], -1), k, v, lens)
    _raises(ValueError, r"v_cache's \(Hkv, Lmax\)", decode, q, k, v[:, :, :30], lens)
    _raises(TypeError, "seq_lens must be an int32 tensor, got torch.int64", decode, q, k, v, lens.long())
    _raises(ValueError, r"seq_lens must have shape \(B,\) with B = 2", decode, q, k, v, lens[:1])
    _raises(TypeError, "block_table must be an int32 tensor", decode, q, k_pages, v_pages, lens, table.float())
    _raises(ValueError, r"block_table must have shape \(B, max_pages\) with B = 2", decode, q, k_pages, v_pages,
            lens, table[:1])
    _raises(TypeError, "seq_lens is required with block_table", decode, q, k_pages, v_pages, None, table)
    _raises(ValueError, r"v_cache's pages .* differ from k_cache's", decode, q, k_pages, v_pages[:-1], lens, table)
    _raises(ValueError, r"k_cache must be 4-D \(num_pages, page_size, Hkv, D\)", decode, q, k_pages[0], v_pages,
            lens, table)


def test_call_options(case):
    attn = ag.compile(CAUSAL)
    args = (case.q, case.k, case.v, case.seq_lens)
    _raises(ValueError, r"num_splits must be an int in \[1, 64\], got 0", attn.decode, *args, num_splits=0)
    _raises(ValueError, r"num_splits must be an int in \[1, 64\], got 65", attn.decode, *args, num_splits=65)
    _raises(ValueError, "num_splits must be", attn.decode, *args, num_splits=True)
    _raises(TypeError, "config must be an attngen DecodeConfig", attn.decode, *args, config={"block_m": 16})
    config = ag.DecodeConfig(16, 32, 4, 1, 2)
    _raises(ValueError, "num_splits=3 disagrees with config.num_splits=2", attn.decode, *args, config=config,
            num_splits=3)
    _raises(ValueError, "DecodeConfig.block_n must be a power of two >= 16", ag.DecodeConfig, 16, 24, 4, 1, 1)
    _raises(TypeError, "return_lse must be a bool", attn.decode, *args, return_lse=1)
    _raises(TypeError, "check must be a bool", attn.decode, *args, check="no")
    _raises(TypeError, "scale must be a Python number", attn.decode, *args, scale="1")
    _raises(ValueError, "return_lse: variant 'dec_sigmoid' uses sigmoid", ag.compile(VARIANTS["sigmoid_causal"][0])
            .decode, *args, return_lse=True)
    q = case.q.clone().requires_grad_()
    _raises(ValueError, "decode has no backward", attn.decode, q, *args[1:])
    with torch.no_grad():
        attn.decode(q, *args[1:])


def test_runtime_tensors(case):
    """Runtime tensors are checked as in a forward call; document ids span the cache."""
    alibi = ag.compile(VARIANTS["alibi_causal"][0])
    _raises(TypeError, "needs runtime tensor.*slopes", alibi.decode, case.q, case.k, case.v, case.seq_lens)
    docs = ag.compile(ag.Variant(mask=ag.document() & ag.causal(), name="dec_builtin_docs"))
    ids = torch.zeros(2, 40, dtype=torch.int32, device=DEVICE)
    _raises(ValueError, r"document_ids must have shape \(B, L\) = \(2, 40\)", docs.decode, case.q, case.k, case.v,
            case.seq_lens, document_ids=ids[:, :20])
    docs.decode(case.q, case.k, case.v, case.seq_lens, document_ids=ids)


def test_variants_that_cannot_decode(case):
    na = ag.compile(ag.Variant(mask=ag.neighborhood(3), name="dec_na"))
    _raises(ValueError, "variant 'dec_na' cannot decode: neighborhood masks", na.decode, case.q, case.k, case.v)


def test_block_table_outside_the_cache(case, pages):
    """An entry a sequence uses that names no page of the cache, past the end or negative."""
    k_pages, v_pages, table = pages
    attn = ag.compile(CAUSAL)
    for bad in (k_pages.shape[0], -1):
        broken = table.clone()
        broken[1, 2] = bad  # sequence 1 (20 tokens, pages of 8) uses entries 0-2
        _raises(ValueError, rf"block_table\[1, 2\] is {bad}, outside the cache's {k_pages.shape[0]} pages",
                attn.decode, case.q, k_pages, v_pages, case.seq_lens, broken)
    beyond = table.clone()
    beyond[1, 3] = 10 ** 6  # an entry past sequence 1's pages is never read
    attn.decode(case.q, k_pages, v_pages, case.seq_lens, beyond)


def test_lengths_beyond_the_cache(case, pages):
    k_pages, v_pages, table = pages
    attn = ag.compile(CAUSAL)
    _raises(ValueError, r"seq_lens\[0\] is 41, beyond the 40 positions of its block_table row "
            r"\(5 pages x page_size 8\)", attn.decode, case.q, k_pages, v_pages, _i32(41, 20), table)
    _raises(ValueError, r"seq_lens\[1\] is 41, beyond the 40 positions of k_cache \(Lmax\)", attn.decode,
            case.q, case.k, case.v, _i32(40, 41))
    _raises(ValueError, r"seq_lens\[1\] is -1; sequence lengths must be >= 0", attn.decode, case.q, case.k, case.v,
            _i32(40, -1))


def test_more_new_tokens_than_the_sequence(case):
    """With a mask or score that reads query positions, the new tokens must fit in their
    sequence (0 is allowed: an empty sequence); a position-free variant takes any length.
    check=False skips the device read (the positions are then clamped at 0, memory-safe)."""
    q = case.q
    _raises(ValueError, r"seq_lens\[1\] is 1 but q has Lq=2 new tokens.*'dec_causal' reads query positions",
            ag.compile(CAUSAL).decode, q, case.k, case.v, _i32(40, 1))
    ag.compile(CAUSAL).decode(q, case.k, case.v, _i32(40, 0))
    ag.compile(DENSE).decode(q, case.k, case.v, _i32(40, 1))
    ag.compile(CAUSAL).decode(q, case.k, case.v, _i32(40, 1), check=False)
    _raises(ValueError, r"q has Lq=41 new tokens but k_cache holds 40 positions", ag.compile(CAUSAL).decode,
            torch.randn(2, 4, 41, 16, device=DEVICE), case.k, case.v)


def test_paged_append_checks(case, pages):
    k_pages, v_pages, table = pages
    k_new = torch.randn(2, 2, 1, 16, device=DEVICE)
    lens = case.seq_lens  # sequence 0 fills its 5 pages: one more token does not fit
    _raises(ValueError, r"seq_lens\[0\] is 40 \+ 1 new tokens, beyond the 40 positions", ag.paged_append,
            k_pages, v_pages, table, lens, k_new, k_new)
    _raises(ValueError, r"block_table\[1, 3\] is -1, outside the cache.s 9 pages", ag.paged_append, k_pages, v_pages,
            table, _i32(0, 24), k_new, k_new)
    _raises(ValueError, r"k_new has 1 heads but the cache has 2", ag.paged_append, k_pages, v_pages, table, lens,
            k_new[:, :1], k_new)
    _raises(ValueError, r"v_new must have shape \(B, Hkv, L_new, Dv\) = \(2, 2, L_new, 16\)", ag.paged_append,
            k_pages, v_pages, table, lens, k_new, k_new[..., :8])
    _raises(TypeError, "k_new, k_cache and v_cache must share a dtype", ag.paged_append, k_pages, v_pages, table,
            lens, k_new.half(), k_new)
    _raises(ValueError, "k_new has 1 new tokens but v_new has 2", ag.paged_append, k_pages, v_pages, table, lens,
            k_new, torch.cat([k_new, k_new], 2))
    _raises(TypeError, "block_table is required", ag.paged_append, k_pages, v_pages, None, lens, k_new, k_new)
    _raises(TypeError, "seq_lens must be an int32 tensor", ag.paged_append, k_pages, v_pages, table, lens.long(),
            k_new, k_new)
    before = k_pages.clone()
    _raises(ValueError, "beyond", ag.paged_append, k_pages, v_pages, table, _i32(39, 19), torch.cat([k_new] * 2, 2),
            torch.cat([k_new] * 2, 2))
    assert torch.equal(before, k_pages)  # nothing written


def test_checked_layouts_are_remembered_and_bad_ones_still_refused(case):
    """check_cache_call remembers layouts that passed; an argument differing in a checked
    property afterwards is checked again and refused."""
    from attngen.runtime.decode_checks import check_cache_call

    q, k, v, lens = case.q, case.k, case.v, case.seq_lens
    first = check_cache_call(q, k, v, lens, None)
    assert check_cache_call(q.clone(), k.clone(), v.clone(), lens.clone(), None) is first
    decode = ag.compile(CAUSAL).decode
    _raises(TypeError, "seq_lens must be an int32 tensor", decode, q, k, v, lens.long())
    _raises(TypeError, "seq_lens must be a torch.Tensor", decode, q, k, v, lens.tolist())
    _raises(ValueError, "v_cache's \\(Hkv, Lmax\\)", decode, q, k, v[:, :, :-1], lens)
