"""`attngen explain` for neighborhood masks: the report's counts against brute force over the
reference mask, the issue's flagship numbers, `&` with other masks, and argument errors.
CPU only, no kernel launches."""
from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch

import attngen as ag
from attngen.explain import (
    NeighborhoodReport,
    explain,
    explain_neighborhood,
    split_neighborhood,
)
from attngen.ir.expr import KV_IDX, LKV, LQ, Q_IDX, B, H

reference = importlib.import_module("attngen.reference")


def brute_force(na: ag.Neighborhood, report: NeighborhoodReport) -> dict[str, int]:
    """Tile counts by walking the report's boxes over the materialized reference mask.

    Query tiles are boxes of consecutive positions inside one dilation group per axis; the
    KV tiles of a query tile are boxes of ``kv_box`` anchored at the smallest key it attends
    (per axis, in group positions). A KV tile is visited when some pair in it is attended
    and full when all its key slots exist and every (query, key) pair in it is attended.
    """
    shape = report.spatial_shape
    L = math.prod(shape)
    idx = torch.arange(L)
    M = reference.neighborhood_matrix(na, shape, idx.view(-1, 1), idx.view(1, -1))
    sizes = [a.size for a in report.axes]
    dils = [a.dilation for a in report.axes]

    def flat(c0, c1, c2):
        return (c0 * sizes[1] + c1) * sizes[2] + c2

    def group_len(a, g):
        return len(range(g, sizes[a], dils[a]))

    per_axis = []  # per axis: list of (g, query group positions)
    for a, tm in enumerate(report.q_box):
        tiles = []
        for g in range(dils[a]):
            n = group_len(a, g)
            tiles += [(g, list(range(x0, min(x0 + tm, n)))) for x0 in range(0, n, tm)]
        per_axis.append(tiles)
    out = dict(attended=int(M.sum()), query_tiles=0, visited_tiles=0, full_tiles=0)
    for tile in itertools.product(*per_axis):
        out["query_tiles"] += 1
        qpos = [[g + dils[a] * x for x in xs] for a, (g, xs) in enumerate(tile)]
        q = torch.tensor([flat(*c) for c in itertools.product(*qpos)])
        rows = M[q]
        keys = rows.any(0).nonzero().flatten()
        if not len(keys):
            continue
        kc = [keys // (sizes[1] * sizes[2]), (keys // sizes[2]) % sizes[1], keys % sizes[2]]
        anchors = []
        for a in range(3):
            g = tile[a][0]
            assert bool((kc[a] % dils[a] == g).all())  # keys stay in the query's dilation group
            anchors.append(int((kc[a] // dils[a]).min()))
        kv_axis = []  # per axis: list of (key positions, all slots real)
        for a, tn in enumerate(report.kv_box):
            g, n = tile[a][0], group_len(a, tile[a][0])
            kv_axis.append([([g + dils[a] * y for y in range(y0, min(y0 + tn, n))], y0 + tn <= n)
                            for y0 in range(anchors[a], n, tn)])
        for kt in itertools.product(*kv_axis):
            k = torch.tensor([flat(*c) for c in itertools.product(*(pos for pos, _ in kt))])
            sub = rows[:, k]
            if bool(sub.any()):
                out["visited_tiles"] += 1
                out["full_tiles"] += bool(sub.all()) and all(real for _, real in kt)
    out["visited_entries"] = out["visited_tiles"] * math.prod(report.q_box) * math.prod(report.kv_box)
    return out


CASES = [
    # (neighborhood, spatial_shape, explain kwargs)
    (ag.neighborhood((5, 3)), (12, 10), dict(block_m=16, block_n=16)),
    (ag.neighborhood((5, 3)), (12, 10), dict(q_box=(4, 4), kv_box=(2, 8))),
    (ag.neighborhood((3, 5), dilation=(2, 1), stride=(1, 2), is_causal=(False, True)), (13, 11),
     dict(block_m=16, block_n=8)),
    (ag.neighborhood(4, stride=4), (9, 16), dict(block_m=16, block_n=16)),
    (ag.neighborhood((3, 3, 3), dilation=(1, 2, 1), is_causal=(True, False, False)), (4, 6, 5),
     dict(block_m=8, block_n=8)),
    (ag.neighborhood(7, dilation=3), (37,), dict(block_m=4, block_n=8)),
    # full and partial tiles mixed
    (ag.neighborhood((13, 11)), (24, 20), dict(block_m=16, block_n=16)),
    (ag.neighborhood(17, dilation=2), (40,), dict(block_m=4, block_n=4)),
    (ag.neighborhood((9, 12), stride=(3, 4), is_causal=(True, False)), (20, 24), dict(block_m=16, block_n=16)),
]


@pytest.mark.parametrize("na, shape, kwargs", CASES)
def test_counts_equal_brute_force_over_the_reference_mask(na, shape, kwargs):
    v = ag.Variant(mask=na, name="na")
    r = explain_neighborhood(v, shape, **kwargs)
    brute = brute_force(na, r)
    assert (r.attended, r.query_tiles, r.visited_tiles, r.full_tiles, r.visited_entries) == (
        brute["attended"], brute["query_tiles"], brute["visited_tiles"], brute["full_tiles"],
        brute["visited_entries"])
    L = math.prod(shape)
    assert r.L == L and r.density == pytest.approx(brute["attended"] / L**2)
    assert r.speed_of_light == pytest.approx(L**2 / brute["attended"])
    assert r.tile_bound == pytest.approx(L**2 / brute["visited_entries"])
    assert r.masked_fraction == pytest.approx(1 - brute["attended"] / brute["visited_entries"])
    assert r.block_sparse == (brute["full_tiles"] == brute["visited_tiles"])
    if "q_box" in kwargs:
        assert r.q_box[-len(shape):] == kwargs["q_box"] and r.kv_box[-len(shape):] == kwargs["kv_box"]
    else:
        assert r.block_m == kwargs["block_m"] and r.block_n == kwargs["block_n"]


def test_flagship_128x128_kernel_31():
    r = explain_neighborhood(ag.Variant(mask=ag.neighborhood((31, 31))), (128, 128))
    assert r.block_m == r.block_n == 64  # the runtime's H100 choice for masked variants
    assert r.density == pytest.approx(0.0587, abs=5e-4)  # 31^2 / 128^2
    assert r.speed_of_light == pytest.approx(17.05, abs=0.01)
    assert 1 < r.tile_bound < r.speed_of_light
    assert r.partial_tiles > 0 and not r.block_sparse
    text = "\n".join(r.lines())
    assert "density          0.0587" in text and "17.05x speed of light" in text


def test_blocked_neighborhood_is_perfectly_block_sparse():
    r = explain_neighborhood(ag.Variant(mask=ag.neighborhood(16, stride=16)), (128, 128))
    assert r.block_sparse and r.partial_tiles == 0 and r.masked_fraction == 0
    assert r.speed_of_light == pytest.approx(64) and r.tile_bound == pytest.approx(64)
    assert "no mask code runs" in "\n".join(r.lines())


def test_neighborhood_walk_follows_the_kernels():
    """2-D windows test every box in one loop; 1-D windows and block-sparse plans walk the full
    boxes first (NeighborhoodPlan.full_boxes_first, which the kernels take too)."""
    def walk(kernel, shape, **geometry):
        r = explain_neighborhood(ag.Variant(mask=ag.neighborhood(kernel, **geometry)), shape)
        return r.full_boxes_first, next(line for line in r.lines() if line.startswith("walk"))

    first, line = walk((31, 31), (128, 128))
    assert not first and "in one loop" in line
    first, line = walk(2047, (32768,))
    assert first and "full KV boxes first" in line
    first, line = walk(16, (128, 128), stride=16)
    assert first and "full KV boxes only" in line


def test_rows_as_runs_tell_ranges_from_lists():
    """Packed documents: every query tile's KV tiles form one run (the kernels walk ranges);
    a checkerboard leaves gaps in every row (the kernels walk the lists)."""
    def checkerboard(b, h, q_idx, kv_idx):
        return (q_idx // 16 + kv_idx // 16) % 2 == 0

    docs = explain(ag.Variant(mask=ag.document() & ag.causal()), 256, block_m=32, block_n=32, batch=2)
    assert docs.rows == 2 * 8 and docs.rows_as_runs == docs.rows
    board = explain(ag.Variant(mask=ag.mask_mod(checkerboard)), 128, block_m=16, block_n=16)
    assert board.rows == 8 and board.rows_as_runs == 0
    assert any("walks its index lists" in line for line in board.lines())


def test_spans_are_exact_per_side():
    """Packed causal documents keep one span per query and per key; a sawtooth (each query keeps
    [0, 10 * (q % 5)]) one span per query only; a checkerboard neither."""
    def sawtooth(b, h, q_idx, kv_idx):
        return kv_idx <= (q_idx % 5) * 10

    def checkerboard(b, h, q_idx, kv_idx):
        return (q_idx // 16 + kv_idx // 16) % 2 == 0

    docs = explain(ag.Variant(mask=ag.document() & ag.causal()), 256, block_m=32, block_n=32, batch=2)
    assert docs.query_spans_exact and docs.key_spans_exact
    assert "queries exact, keys exact" in docs.lines()[-1]
    saw = explain(ag.Variant(mask=ag.mask_mod(sawtooth)), 100, 60, block_m=32, block_n=32)
    assert saw.query_spans_exact and not saw.key_spans_exact
    board = explain(ag.Variant(mask=ag.mask_mod(checkerboard)), 128, block_m=16, block_n=16)
    assert not board.query_spans_exact and not board.key_spans_exact


def test_long_blocks_report_the_two_halves_boxes():
    """Blocks of 2048 tokens run as 256-row query boxes (two halves) with 64-key boxes, as the
    runtime picks them on the H100; no box straddles a block."""
    r = explain_neighborhood(ag.Variant(mask=ag.neighborhood((8, 16, 16), stride=(8, 16, 16))), (16, 32, 32))
    assert (r.block_m, r.block_n) == (256, 64)
    assert r.block_sparse and r.partial_tiles == 0 and r.tile_bound == pytest.approx(8)


def _full_mask_count(variant, shape, batch, heads, seed=0):
    from attngen.testing import synthesize_tensors

    L = math.prod(shape)
    tensors = synthesize_tensors(variant, batch, heads, L, L, "cpu", torch.Generator().manual_seed(seed))
    env = {B: torch.arange(batch).view(-1, 1, 1, 1), H: torch.arange(heads).view(1, -1, 1, 1),
           Q_IDX: torch.arange(L).view(1, 1, -1, 1), KV_IDX: torch.arange(L).view(1, 1, 1, -1), LQ: L, LKV: L,
           reference.SPATIAL: shape}
    return int(torch.as_tensor(reference.mask_matrix(variant.mask, env, tensors)).expand(batch, heads, L, L).sum())


@ag.mask_mod
def even_heads_skip(b, h, q_idx, kv_idx):
    return (kv_idx + h) % 3 != 0


@pytest.mark.parametrize("other", [ag.causal(), even_heads_skip, ag.document()])
def test_other_masks_are_counted_inside_the_windows(other):
    na = ag.neighborhood((5, 3), dilation=(1, 2), is_causal=(False, True))
    v = ag.Variant(mask=other & na, name="combo")
    shape, batch, heads = (9, 10), 2, 3
    r = explain_neighborhood(v, shape, block_m=16, block_n=16, batch=batch, heads=heads)
    alone = explain_neighborhood(ag.Variant(mask=na), shape, block_m=16, block_n=16)
    assert (r.visited_tiles, r.full_tiles, r.q_box, r.kv_box) == (alone.visited_tiles, alone.full_tiles,
                                                                    alone.q_box, alone.kv_box)
    assert r.attended_all == _full_mask_count(v, shape, batch, heads)
    L2 = math.prod(shape) ** 2
    assert r.density == pytest.approx(r.attended_all / (batch * heads * L2))
    assert r.density <= alone.density and r.counted and not r.block_sparse
    text = "\n".join(r.lines())
    assert "other masks" in text and "counted exactly" in text

    skipped = explain_neighborhood(v, shape, block_m=16, block_n=16, exact_limit=0)
    assert skipped.attended_all is None and not skipped.counted
    assert skipped.density == alone.density
    assert "NOT counted" in "\n".join(skipped.lines())


def test_neighborhood_outside_and_is_rejected():
    na = ag.neighborhood(3)
    for mask in (na | ag.causal(), ~na, ag.causal() & ~na, na & ag.neighborhood(5)):
        with pytest.raises(ValueError, match="alone or combined with other masks through `&`"):
            split_neighborhood(mask)
    assert split_neighborhood(ag.causal()) == (None, [])
    with pytest.raises(ValueError, match="explain_neighborhood"):
        explain(ag.Variant(mask=na & ag.causal()), 64)


@pytest.mark.parametrize("shape, kwargs, message", [
    ((16, 16), {}, "axis 0: kernel_size 31 x dilation 1 = 31 > 16"),
    ((128, 20), {}, "axis 1: kernel_size 31"),
    ((16384,), {}, "has 1 axes but the neighborhood is 2-D"),
    ((128, 128), dict(q_box=(8, 16), block_m=64), "q_box 8x16 has 128 entries, not block_m = 64"),
    ((128, 128), dict(q_box=(8, 6)), "powers of two"),
    ((128, 128), dict(block_n=48), "block_n must be a power of two"),
])
def test_bad_arguments_name_what_does_not_fit(shape, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        explain_neighborhood(ag.Variant(mask=ag.neighborhood((31, 31))), shape, **kwargs)
