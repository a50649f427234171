"""attngen.distributed's parts in one process: the merge, layouts, the rewrite at global
positions, the chunk pairs' plans and kernel choice, and the halo geometry. The
multi-process runs are tests/test_distributed.py."""
from __future__ import annotations

import math
import random

import pytest
import torch

import attngen as ag
import attngen.distributed as agd
from attngen.distributed.chunk_plan import PairBand, PairGeometry, pair_plan
from attngen.distributed.comm import Group
from attngen.distributed.halo import GridLayout, check_slab, halo_plan, reached_rows, slab
from attngen.distributed.layout import Chunk, SequenceLayout, split_evenly
from attngen.distributed.merge import SoftmaxAccumulator, add_sinks, merge_lse
from attngen.distributed.pairs import Gradients, Setup, backward_block, forward_block, merged, new_accumulators
from attngen.ir.kernel import Band
from attngen.passes import UnsupportedVariant
from attngen.runtime.attention import AttentionCall
from attngen.runtime.neighborhood import Axis
from distributed_cases import variants
from neighborhood_oracle import axis_keys

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU (Triton interpreter) suite")
NEG_INF = float("-inf")


# ------------------------------------------------------------------ merge
def _softmax_parts(scores: torch.Tensor, values: torch.Tensor, cut: int):
    """(out, lse) of softmax over keys [:cut] and [cut:], and over all, from a score matrix
    with -inf entries (rows with no key: out 0, lse -inf)."""
    def part(s, v):
        lse = torch.logsumexp(s, -1)
        p = torch.where(torch.isneginf(lse)[..., None], 0.0, torch.exp(s - lse[..., None].nan_to_num(0.0)))
        return p @ v, lse
    return part(scores[..., :cut], values[:cut]), part(scores[..., cut:], values[cut:]), part(scores, values)


def test_merge_lse_equals_softmax_over_the_union_including_empty_partials():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 10, generator=g, dtype=torch.float64)
    scores[0, :4] = NEG_INF        # row 0: first part empty
    scores[1, 4:] = NEG_INF        # row 1: second part empty
    scores[2, :] = NEG_INF         # row 2: both empty
    values = torch.randn(10, 3, generator=g, dtype=torch.float64)
    (o1, l1), (o2, l2), (o, lse) = _softmax_parts(scores, values, 4)
    out, got = merge_lse(o1, l1, o2, l2)
    assert not torch.isnan(out).any() and not torch.isnan(got).any()
    assert torch.isneginf(got[2]) and torch.equal(out[2], torch.zeros(3, dtype=torch.float32))
    torch.testing.assert_close(out.double(), o, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[:2].double(), lse[:2], rtol=1e-6, atol=1e-6)
    acc = SoftmaxAccumulator((6, 3), torch.device("cpu"))  # starts empty: -inf, 0
    acc.add(o2, l2)
    acc.add(o1, l1)
    torch.testing.assert_close(acc.out.double(), o, rtol=1e-6, atol=1e-6)


def test_sinks_join_the_denominator_once():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64)
    scores[0, 1, 3] = NEG_INF  # a row with no key: out 0, lse = the sink
    values = torch.randn(8, 4, generator=g, dtype=torch.float64)
    sinks = torch.randn(2, generator=g, dtype=torch.float64)
    (o1, l1), (o2, l2), _ = _softmax_parts(scores, values, 3)
    out, lse = add_sinks(*merge_lse(o1, l1, o2, l2), sinks)
    with_sink = torch.cat((scores, sinks.view(1, 2, 1, 1).expand(1, 2, 5, 1)), -1)
    p = torch.softmax(with_sink, -1)[..., :-1]
    torch.testing.assert_close(out.double(), p @ values, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse.double(), torch.logsumexp(with_sink, -1), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ layouts
@pytest.mark.parametrize("length,world,balanced", [(10, 2, True), (11, 3, True), (10, 3, False), (7, 4, False)])
def test_layout_chunks_cover_the_sequence_and_round_trip(length, world, balanced):
    layout = SequenceLayout(length, world, balanced)
    sizes = [c.length for c in layout.chunks]
    assert sum(sizes) == length and max(sizes) - min(sizes) <= 1
    if balanced:
        assert all(layout.chunks_of(r) == (layout.chunks[r], layout.chunks[2 * world - 1 - r]) for r in range(world))
    held = sorted(i for r in range(world) for i in layout.global_index(r).tolist())
    assert held == list(range(length))
    x = torch.arange(2 * length).view(2, length)
    parts = [layout.shard(x, r, 1) for r in range(world)]
    assert all(torch.equal(p, x[:, layout.global_index(r)]) for r, p in enumerate(parts))
    assert torch.equal(layout.unshard(parts, 1), x)


def test_balanced_layout_evens_out_causal_work():
    length, world = 64, 4

    def work(layout, r):  # causal entries of rank r's rows
        return sum(i + 1 for i in layout.global_index(r).tolist())

    balanced = [work(SequenceLayout(length, world, True), r) for r in range(world)]
    contiguous = [work(SequenceLayout(length, world, False), r) for r in range(world)]
    assert max(balanced) - min(balanced) <= world * 2 and max(contiguous) > 5 * min(contiguous)


def test_layout_for_balances_causal_like_masks_only():
    def balanced(mask):
        return agd.layout_for(ag.Variant(mask=mask), 64, 4).balanced

    assert balanced(ag.causal()) and balanced(ag.causal() & ag.document())
    assert not balanced(ag.sliding_window(8, 8)) and not balanced(None)


def test_layout_arguments_are_checked():
    with pytest.raises(ValueError, match="cannot fill 8 chunks"):
        SequenceLayout(7, 4, True)
    with pytest.raises(ValueError, match="sizes must be 2 positive ints summing to 10"):
        SequenceLayout(10, 2, sizes=(3, 3))
    with pytest.raises(ValueError, match="rows must be 2 positive counts summing to 5"):
        GridLayout((5, 4), 2, rows=(4, 2))
    assert GridLayout((5, 4), 2).sequence.chunks == (Chunk(0, 12), Chunk(12, 8))


# ------------------------------------------------------------------ the rewrite
def test_the_rewrite_refuses_what_it_cannot_shard():
    with pytest.raises(UnsupportedVariant, match="linear attention"):
        agd.offset_variant(ag.Variant(mask=ag.causal(), norm=ag.linear()))

    @ag.mask_mod
    def shifted_doc(b, h, q_idx, kv_idx, document_ids):
        return document_ids[b, q_idx] == document_ids[b, kv_idx + 1]

    with pytest.raises(UnsupportedVariant, match=r"\[b, q_idx\] or\s+\[b, kv_idx\]"):
        agd.offset_variant(ag.Variant(mask=shifted_doc))

    @ag.mask_mod
    def reserved(b, h, q_idx, kv_idx, cp_positions):
        return cp_positions[q_idx] > 0

    with pytest.raises(UnsupportedVariant, match="reserved"):
        agd.offset_variant(ag.Variant(mask=reserved))


def test_context_parallel_needs_a_process_group():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="initialized torch.distributed process group"):
        agd.context_parallel_attention(ag.Variant(mask=ag.causal()), q, q, q, layout=SequenceLayout(8, 1))


# ------------------------------------------------------------------ chunk pairs
def _band_keeps(lo, hi, i, j) -> bool:
    return (lo is None or j - i >= lo) and (hi is None or j - i <= hi)


def test_pair_plans_visit_exactly_the_tiles_a_band_keeps():
    rng = random.Random(0)
    for _ in range(150):
        lo = rng.choice([None, -rng.randint(0, 30)])
        hi = rng.choice([None, rng.randint(-5, 30)]) if lo is not None else rng.randint(-5, 30)
        L = 64
        qo, ko = rng.randrange(0, 48), rng.randrange(0, 48)
        ql, kl = rng.randint(1, L - qo), rng.randint(1, L - ko)
        geometry = PairGeometry(qo, ko, ql, kl, L, L)
        pair = PairBand.of(Band(None if lo is None else lo, None if hi is None else hi), geometry)
        keep = torch.tensor([[_band_keeps(lo, hi, qo + i, ko + j) for j in range(kl)] for i in range(ql)])
        assert pair.empty == (not keep.any()) and pair.full == bool(keep.all()), (lo, hi, geometry)
        if pair.empty:
            continue
        bm, bn = rng.choice([4, 8, 16]), rng.choice([4, 8, 16])
        plan = pair_plan(pair, bm, bn, torch.device("cpu"))
        for lists, entries in ((plan, keep), (plan.transposed(), keep.T)):
            rows_per, cols_per = (bm, bn) if lists is plan else (bn, bm)
            kinds = lists.kinds()[0, 0]
            for t in range(kinds.shape[0]):
                for c in range(kinds.shape[1]):
                    block = entries[t * rows_per:(t + 1) * rows_per, c * cols_per:(c + 1) * cols_per]
                    whole = (c + 1) * cols_per <= entries.shape[1]  # a ragged last column tile needs bounds
                    want = 0 if not block.any() else 2 if block.all() and whole else 1
                    assert kinds[t, c] == want, (lo, hi, geometry, t, c)


def _whole_sequence_setup(var, length: int, world: int, balanced: bool):
    """A Setup whose one 'rank' holds every chunk: forward_block/backward_block over all
    chunk pairs in one process, as ring attention does over the ranks."""
    layout = SequenceLayout(length, world, balanced)
    pieces = tuple((c, slice(c.start, c.stop)) for c in layout.chunks)
    call = AttentionCall(None, None, None, True, True, False)
    return Setup(agd.pair_kernels(ag.compile(var)), call, layout, Group(None, 0, 1), None), pieces


@pytest.mark.parametrize("name", ["alibi_causal_sinks", "doc_causal", "window", "sigmoid_causal", "prefix_lm"])
def test_every_chunk_pair_merged_is_the_whole_attention(name):
    var, makers, learned = variants()[name]
    g = torch.Generator().manual_seed(3)
    B, H, L, D = 1, 2, 26, 16
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    tensors = {n: make(B, H, L, g) for n, make in makers.items()}
    setup, pieces = _whole_sequence_setup(var, L, 2, balanced=True)  # 4 uneven chunks, 16 pairs
    user = {n: tensors[n] for n in setup.kernel.user_names}
    accumulators = new_accumulators(setup, q, D, pieces)
    forward_block(setup, q, pieces, accumulators, k, v, pieces, tensors.get("document_ids"), user)
    out, lse = merged(accumulators, q.dtype)
    softmax = setup.softmax
    if setup.kernel.rewrite.sink:
        out, lse = add_sinks(out, lse, tensors["sinks"])
    qr, kr, vr = (x.double().requires_grad_() for x in (q, k, v))
    ref = ag.reference(var)(qr, kr, vr, return_lse=softmax, **tensors)
    ref_out, ref_lse = ref if softmax else (ref, None)
    torch.testing.assert_close(out.double(), ref_out.detach(), rtol=2e-5, atol=2e-5)
    if softmax:
        torch.testing.assert_close(lse.double(), ref_lse.detach(), rtol=2e-5, atol=2e-5)
    if name in ("alibi_causal_sinks", "window"):  # the backward from the merged (out, lse)
        dout = torch.randn(out.shape, generator=g)
        (ref_out * dout.double()).sum().backward()
        merged_out, merged_lse = merged(accumulators, q.dtype)
        grads = Gradients.zeros(q, ())
        dout_merged, dlse_merged = dout, None
        if setup.kernel.rewrite.sink:  # what reaches the merged (out, lse) through add_sinks
            leaves = (merged_out.clone().requires_grad_(), merged_lse.clone().requires_grad_())
            (add_sinks(*leaves, tensors["sinks"])[0] * dout).sum().backward()
            dout_merged, dlse_merged = leaves[0].grad, leaves[1].grad
        dk, dv = backward_block(setup, (q, merged_out, merged_lse, dout_merged, dlse_merged), pieces, k, v, pieces,
                                None, user, grads)
        for got, want in ((grads.dq, qr.grad), (dk, kr.grad), (dv, vr.grad)):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_pairs_run_the_fastest_kernel_their_geometry_allows():
    causal = agd.pair_kernels(ag.compile(variants()["causal"][0]))
    diag, full, edge = PairGeometry(8, 8, 8, 8, 32, 32), PairGeometry(16, 0, 8, 8, 32, 32), PairGeometry(8, 4, 8, 8, 32, 32)
    assert causal.choose(diag) is causal.diagonal and causal.choose(full) is causal.dense
    assert causal.choose(edge) is causal.offset
    alibi = agd.pair_kernels(ag.compile(variants()["alibi_causal_sinks"][0]))  # the score reads positions
    assert alibi.dense is None and alibi.choose(full) is alibi.offset
    softcap = agd.pair_kernels(ag.compile(variants()["softcap_dense"][0]))
    assert softcap.choose(edge) is softcap.dense
    sigmoid = agd.pair_kernels(ag.compile(variants()["sigmoid_causal"][0]))  # -ln(Lkv) of the whole sequence
    assert sigmoid.dense is None and sigmoid.choose(full) is sigmoid.offset
    documents = agd.pair_kernels(ag.compile(variants()["doc_causal"][0]))  # not exactly a band
    assert documents.choose(full) is documents.offset and documents.choose(diag) is documents.offset


# ------------------------------------------------------------------ halos
def test_halo_slabs_reproduce_every_global_window():
    rng = random.Random(0)
    for _ in range(3000):
        d, k = rng.randint(1, 3), rng.randint(1, 6)
        s, causal = rng.randint(1, k), rng.random() < 0.5
        L = rng.randint(k * d, 40)
        world = rng.randint(1, min(5, L))
        cuts = sorted(rng.sample(range(1, L), world - 1))
        axis = Axis(L, k, d, s, causal)
        for a, b in zip([0] + cuts, cuts + [L]):
            want = sorted({y for x in range(a, b) for y in axis_keys(L, k, d, s, causal, x)})
            assert reached_rows(axis, a, b).tolist() == want, (axis, a, b)
            p0, p1 = slab(axis, a, b)
            check_slab(axis, a, b, p0, p1)
            assert p0 <= min(want + [a]) and max(want + [b - 1]) < p1 <= L and p1 - p0 >= k * d
            for x in range(a, b):  # the oracle's windows on the slab, shifted back
                assert [y + p0 for y in axis_keys(p1 - p0, k, d, s, causal, x - p0)] == \
                    list(axis_keys(L, k, d, s, causal, x)), (axis, a, b, p0, p1, x)


def test_halo_plans_send_what_peers_receive():
    na = ag.neighborhood((5, 3), dilation=(2, 1))
    grid = GridLayout((13, 4), 4, rows=(2, 5, 3, 3))
    plans = [halo_plan(na, grid, r) for r in range(4)]
    for r, plan in enumerate(plans):
        for peer, rows in plan.receive.items():
            assert torch.equal(plans[peer].send[r], rows)
            lo, hi = grid.rows_of(peer)
            assert ((rows >= lo) & (rows < hi)).all()
        assert plan.slab_shape[-2:] == (plan.slab[1] - plan.slab[0], 4)
    assert math.prod(grid.spatial_shape) == grid.length and split_evenly(13, 4) == [4, 3, 3, 3]
