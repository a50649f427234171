"""Neighborhood attention (1-D/2-D/3-D) on the CPU: the brute-force oracle, the reference's
mask, the tile plan, the compiled kernel, the NATTEN-layout entry points and validation.

Every mask here is checked against ``neighborhood_oracle`` (SEMANTICS.md's per-axis rule
written as plain loops over (query, key) pairs), which shares no code with attngen.
"""
from __future__ import annotations

import importlib
import math

import neighborhood_oracle as oracle
import pytest
import variant_strategies as vs
import torch
from helpers import (
    DEVICE,
    DTYPES,
    assert_matches_eager,
    dtype_id,
    eager,
    examples,
    rel_l2,
    tolerance,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attngen as ag
from attngen.library import builtin, builtin_names
from attngen.runtime.neighborhood import Axis, NeighborhoodPlan, axis_tiles, plan, resolve_axes
from attngen.testing import fitting_spatial_shape

SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

neighborhood_matrix = importlib.import_module("attngen.reference").neighborhood_matrix


# --------------------------------------------------------------------------- geometries
class Geo:
    """A neighborhood and the spatial shape it is called with."""

    def __init__(self, shape, kernel_size, dilation=1, stride=1, is_causal=False, name=""):
        self.shape = tuple(shape)
        self.na = ag.neighborhood(kernel_size, dilation=dilation, stride=stride, is_causal=is_causal)
        self.name = name

    @property
    def L(self) -> int:
        return math.prod(self.shape)

    def oracle(self) -> torch.Tensor:
        return oracle.mask_of(self.na, self.shape)

    def __repr__(self) -> str:
        na = self.na
        return (f"Geo(shape={self.shape}, kernel_size={na.kernel_size}, dilation={na.dilation}, "
                f"stride={na.stride}, is_causal={na.is_causal})")


# Odd shapes, even and odd kernels, dilation, stride, causal per axis, kernel = axis length,
# k=1 axes, all-int (rank from spatial_shape) and per-axis tuple forms.
GEOMETRIES = [
    Geo((37,), 7, name="1d_k7"),
    Geo((40,), 8, dilation=2, stride=3, name="1d_k8_d2_s3"),
    Geo((33,), 6, dilation=3, stride=2, is_causal=True, name="1d_causal_k6_d3_s2"),
    Geo((14,), 5, stride=3, is_causal=True, name="1d_causal_k5_s3"),
    Geo((9,), 9, stride=4, name="1d_k_eq_L"),
    Geo((10,), 1, name="1d_k1"),
    Geo((17,), 4, dilation=4, stride=4, is_causal=True, name="1d_causal_blocked_d4"),
    Geo((13, 11), (5, 4), name="2d_13x11_k5x4"),
    Geo((13, 11), 3, dilation=(2, 3), stride=(3, 2), name="2d_13x11_dil_str"),
    Geo((12, 9), (4, 3), stride=(2, 1), is_causal=(True, False), name="2d_causal_axis0"),
    Geo((10, 9), (5, 3), stride=(3, 3), is_causal=(False, True), name="2d_causal_s3"),
    Geo((7, 10), (7, 3), dilation=(1, 3), name="2d_k_eq_axis"),
    Geo((9, 8), (1, 8), name="2d_axial_row"),
    Geo((6, 7), (6, 1), is_causal=(True, False), name="2d_causal_column"),
    Geo((8, 8), 4, stride=4, name="2d_blocked_swin"),
    Geo((5, 6, 7), (3, 2, 5), dilation=(1, 3, 1), stride=(1, 2, 3), is_causal=(False, True, False),
        name="3d_5x6x7_mixed"),
    Geo((4, 5, 6), (1, 5, 1), name="3d_k1_axes"),
    Geo((3, 4, 5), 3, is_causal=True, name="3d_all_causal"),
    Geo((5, 6, 7), (5, 3, 7), dilation=(1, 2, 1), stride=(5, 3, 1), name="3d_k_eq_axes"),
]
GEO_IDS = [g.name for g in GEOMETRIES]


def geometries(max_tokens: int = 150, ranks=(1, 2, 3)):
    """A random valid geometry (variant_strategies.neighborhoods) as a Geo."""
    return vs.neighborhoods(max_tokens, ranks).map(lambda g: Geo(g[0], **g[1]))


def reference_mask(geo: Geo) -> torch.Tensor:
    i = torch.arange(geo.L).view(-1, 1)
    j = torch.arange(geo.L).view(1, -1)
    return torch.as_tensor(neighborhood_matrix(geo.na, geo.shape, i, j)).expand(geo.L, geo.L)


def _axes_of(geo: Geo) -> tuple[Axis, ...]:
    return resolve_axes(geo.na, geo.shape, geo.L)


# =========================================================================== 1. the oracle
def _keys(L, k, d=1, s=1, causal=False):
    return [list(oracle.axis_keys(L, k, d, s, causal, x)) for x in range(L)]


def test_oracle_semantics_examples():
    """SEMANTICS.md's one-axis examples, exactly."""
    assert _keys(8, 3)[0] == [0, 1, 2]
    assert _keys(8, 3)[7] == [5, 6, 7]
    assert _keys(8, 3) == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7], [5, 6, 7]]
    strided = _keys(8, 4, s=2)
    for xs, keys in (((0, 1), [0, 1, 2, 3]), ((2, 3), [1, 2, 3, 4]), ((4, 5), [3, 4, 5, 6]), ((6, 7), [4, 5, 6, 7])):
        for x in xs:
            assert strided[x] == keys, (x, strided[x])
    assert _keys(7, 3, d=2)[5] == [1, 3, 5]
    assert _keys(8, 4, s=2, causal=True)[4] == [2, 3, 4]


def test_oracle_more_one_axis_cases():
    # blocked attention (s = k): non-overlapping windows
    assert _keys(8, 4, s=4) == [[0, 1, 2, 3]] * 4 + [[4, 5, 6, 7]] * 4
    # causal sliding window: the k-1 previous keys and itself, fewer at the start
    assert _keys(6, 3, causal=True) == [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    # dilation: two residue classes of lengths 5 and 4, each a k=3 sliding window
    assert _keys(9, 3, d=2) == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [3, 5, 7],
                                [4, 6, 8], [3, 5, 7], [4, 6, 8]]
    # kernel = axis length: everything; k = 1: only itself
    assert _keys(5, 5) == [[0, 1, 2, 3, 4]] * 5
    assert _keys(5, 1) == [[x] for x in range(5)]


def test_oracle_unravels_row_major():
    # (2, 3) grid, k=(1, 3): a query attends exactly its own row (three consecutive tokens)
    m = oracle.mask((2, 3), (1, 3))
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[:3, :3] = True
    expected[3:, 3:] = True
    assert torch.equal(m, expected)
    # k=(2, 1): a query attends exactly its own column
    m = oracle.mask((2, 3), (2, 1))
    assert torch.equal(m, torch.eye(3, dtype=torch.bool).repeat(2, 2))
    assert oracle.unravel(23, (2, 3, 4)) == (1, 2, 3)
    assert oracle.unravel(17, (2, 3, 4)) == (1, 1, 1)


@pytest.mark.parametrize("geo", GEOMETRIES, ids=GEO_IDS)
def test_oracle_invariants(geo):
    """Every query attends itself; a non-causal query attends exactly prod(k) keys; keys share
    the query's residue class mod the dilation on every axis."""
    m = geo.oracle()
    assert m.diagonal().all()
    rank = len(geo.shape)
    ks = geo.na.per_axis("kernel_size", rank)
    causal = geo.na.per_axis("is_causal", rank)
    if not any(causal):
        assert (m.sum(1) == math.prod(ks)).all()
    else:
        assert (m.sum(1) <= math.prod(ks)).all()
    shape = torch.tensor(geo.shape)
    idx = torch.arange(geo.L)
    coords = torch.stack([(idx // int(math.prod(geo.shape[a + 1:]))) % shape[a] for a in range(rank)], 1)
    ii, jj = m.nonzero(as_tuple=True)
    for a, d in enumerate(geo.na.per_axis("dilation", rank)):
        assert torch.equal(coords[ii, a] % d, coords[jj, a] % d)


# =========================================================================== 2. ag.reference's mask
@pytest.mark.parametrize("geo", GEOMETRIES, ids=GEO_IDS)
def test_reference_mask_matches_oracle(geo):
    assert torch.equal(reference_mask(geo), geo.oracle()), geo


@settings(max_examples=60, **SETTINGS)
@given(geo=geometries())
def test_reference_mask_matches_oracle_random(geo):
    got, want = reference_mask(geo), geo.oracle()
    assert torch.equal(got, want), f"{geo}: differ at {(got != want).nonzero()[:5].tolist()}"


@pytest.mark.parametrize("geo", [g for g in GEOMETRIES if g.name in
                                 ("2d_13x11_dil_str", "3d_5x6x7_mixed", "1d_causal_k6_d3_s2")], ids=lambda g: g.name)
def test_reference_output_matches_oracle_softmax(geo):
    """ag.reference end to end (float64) equals a masked softmax over the oracle's mask."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4 if t == "q" else 2, geo.L, 16) for t in "qkv")
    out, lse = ag.reference(ag.Variant(mask=geo.na))(q, k, v, spatial_shape=geo.shape, return_lse=True)
    exp_out, exp_lse = eager(q, k, v, mask_fn=geo.oracle())
    torch.testing.assert_close(out, exp_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, exp_lse, rtol=1e-12, atol=1e-12)


# =========================================================================== 3. the tile plan
def _visited_per_axis(axis: Axis, tm: int, tn: int) -> tuple[torch.Tensor, int, int]:
    """(size, size) bool: key y lies in a KV tile the kernel visits for query x; the number of
    KV tiles visited (summed over query tiles) and how many of them are full by brute force.

    The kernel's tiling (attngen/runtime/neighborhood.py's docstring): query tiles are runs of
    ``tm`` positions of one dilation group; the KV tiles of a query tile start at the first
    key of its first query and run in steps of ``tn`` up to the last key of its last query."""
    n, d = axis.size, axis.dilation
    visited = torch.zeros(n, n, dtype=torch.bool)
    tiles = full = 0
    for g in range(d):
        length = axis.group_length(g)
        for x0 in range(0, length, tm):
            x1 = min(x0 + tm, length) - 1
            lo0 = axis.window(x0, length)[0]
            hi1 = axis.window(x1, length)[1]
            n_tiles = -(-(hi1 - lo0 + 1) // tn)
            tiles += n_tiles
            for t in range(n_tiles):
                keys = range(lo0 + t * tn, lo0 + (t + 1) * tn)
                for xg in range(x0, x1 + 1):
                    for yg in keys:
                        if yg < length:
                            visited[xg * d + g, yg * d + g] = True
                # full: no padding key, and every query of the tile attends every key (oracle)
                if keys[-1] < length and all(
                        oracle.axis_attends(axis.size, axis.kernel, d, axis.stride, axis.causal, xg * d + g, yg * d + g)
                        for xg in range(x0, x1 + 1) for yg in keys):
                    full += 1
    return visited, tiles, full


def _boxes(block: int) -> list[tuple[int, int, int]]:
    p = block.bit_length() - 1
    return [(1 << a, 1 << b, 1 << (p - a - b)) for a in range(p + 1) for b in range(p + 1 - a)]


def _check_plan(geo: Geo, block_m: int, block_n: int, q_box=None, kv_box=None):
    axes = _axes_of(geo)
    assert len(axes) == 3
    assert tuple(a.size for a in axes[3 - len(geo.shape):]) == geo.shape
    assert all(a.size == 1 and a.kernel == 1 for a in axes[:3 - len(geo.shape)])
    p = plan(axes, block_m, block_n, q_box, kv_box)
    assert math.prod(p.q_box) == block_m and math.prod(p.kv_box) == block_n
    if q_box is not None:
        assert p.q_box == q_box and p.kv_box == kv_box
    m = geo.oracle()
    counts = p.counts()
    assert counts["L"] == geo.L
    assert counts["attended"] == int(m.sum()), (geo, counts)

    # every attended (query, key) pair lies in a visited KV tile; tile counts agree
    visited = torch.ones(geo.L, geo.L, dtype=torch.bool)
    idx = torch.arange(geo.L)
    stride = 1
    any_partial = False
    for axis, tm, tn in reversed(list(zip(axes, p.q_box, p.kv_box))):
        vis, tiles, full = _visited_per_axis(axis, tm, tn)
        got = axis_tiles(axis, tm, tn)
        assert got.kv_tiles == tiles, (geo, axis, tm, tn)
        assert got.full_tiles == full, (geo, axis, tm, tn, got.full_tiles, full)
        any_partial |= tiles != full
        c = (idx // stride) % axis.size
        visited &= vis[c.view(-1, 1), c.view(1, -1)]
        stride *= axis.size
    missing = m & ~visited
    assert not missing.any(), f"{geo}: attended pairs outside every visited tile: {missing.nonzero()[:5].tolist()}"
    assert p.has_partial == any_partial
    assert counts["visited_entries"] >= counts["attended"]


@pytest.mark.parametrize("geo", GEOMETRIES, ids=GEO_IDS)
@pytest.mark.parametrize("block_m,block_n", [(16, 16), (64, 32)])
def test_plan_counts_and_coverage(geo, block_m, block_n):
    _check_plan(geo, block_m, block_n)


@settings(max_examples=40, **SETTINGS)
@given(geo=geometries(max_tokens=120), data=st.data())
def test_plan_counts_and_coverage_random(geo, data):
    block_m = data.draw(st.sampled_from([8, 16, 32, 64]))
    block_n = data.draw(st.sampled_from([8, 16, 32, 64]))
    if data.draw(st.booleans()):
        q_box = data.draw(st.sampled_from(_boxes(block_m)))
        kv_box = data.draw(st.sampled_from(_boxes(block_n)))
        _check_plan(geo, block_m, block_n, q_box, kv_box)
    else:
        _check_plan(geo, block_m, block_n)


def test_blocked_plan_needs_no_mask_code():
    """Blocked attention (stride = kernel) whose blocks match the tiles is perfectly block sparse."""
    geo = Geo((16, 16), 4, stride=4)
    p = plan(_axes_of(geo), 16, 16, (1, 4, 4), (1, 4, 4))
    assert not p.has_partial
    c = p.counts()
    assert c["visited_entries"] == c["attended"] == 256 * 16


def test_plan_rejects_bad_boxes():
    axes = _axes_of(Geo((8, 8), 3))
    with pytest.raises(ValueError, match="q_box"):
        plan(axes, 16, 16, (2, 2, 2), (1, 4, 4))
    with pytest.raises(ValueError, match="kv_box"):
        plan(axes, 16, 16, (1, 4, 4), (4, 4))


# --------------------------------------------------------------------------- resolve_axes errors
def test_resolve_axes_errors_name_the_axis():
    with pytest.raises(ValueError, match="axis 1"):
        resolve_axes(ag.neighborhood(5, dilation=2), (12, 9), 108)  # 5 * 2 = 10 > 9 on axis 1
    with pytest.raises(ValueError, match="axis 0"):
        resolve_axes(ag.neighborhood((6, 2)), (5, 9), 45)
    with pytest.raises(ValueError, match="positions"):
        resolve_axes(ag.neighborhood(3), (5, 9), 44)
    with pytest.raises(ValueError, match="2-D"):
        resolve_axes(ag.neighborhood((3, 3)), (45,), 45)
    with pytest.raises(TypeError, match="spatial_shape"):
        resolve_axes(ag.neighborhood(3), "5x9", 45)
    assert resolve_axes(ag.neighborhood(3), 9, 9) == (Axis(1), Axis(1), Axis(9, 3))


def test_neighborhood_construction_and_text():
    with pytest.raises(ValueError, match="stride"):
        ag.neighborhood(3, stride=4)
    with pytest.raises(ValueError, match="stride"):
        ag.neighborhood((3, 5), stride=(2, 6))
    with pytest.raises(ValueError):
        ag.neighborhood((3, 3), dilation=(1, 1, 1))
    with pytest.raises(ValueError):
        ag.neighborhood(0)
    with pytest.raises(TypeError):
        ag.neighborhood(3.0)
    for geo in GEOMETRIES:
        v = ag.Variant(mask=geo.na)
        assert ag.loads(v.to_text()) == v
    v = ag.Variant(mask=GEOMETRIES[7].na & ag.causal(), score=_softcap)
    assert ag.loads(v.to_text()) == v


# =========================================================================== 4. the compiled kernel
B, H, D = 1, 2, 32


def _softcap(score, b, h, q_idx, kv_idx):
    return 2.0 * torch.tanh(score / 2.0)


def _rpb_2d(X: int, W: int):
    """NATTEN-style relative-position bias on an X x W grid: a per-head table indexed by the
    key's offset from the query along each axis (sized for every pair, masked or not)."""
    def rpb(score, b, h, q_idx, kv_idx, rpb_table):
        return score + rpb_table[h, kv_idx // W - q_idx // W + (X - 1), kv_idx % W - q_idx % W + (W - 1)]
    return rpb


def _every_fifth_query_empty(b, h, q_idx, kv_idx):
    return q_idx % 5 != 2


def _inputs(L, dtype, Hq=H, Hkv=H, Dv=D, batch=B):
    q = torch.randn(batch, Hq, L, D, device=DEVICE).to(dtype)
    k = torch.randn(batch, Hkv, L, D, device=DEVICE).to(dtype)
    v = torch.randn(batch, Hkv, L, Dv, device=DEVICE).to(dtype)
    return q, k, v


def na_compare(attn, q, k, v, shape, *, scale=None, tol=None, oracle_mask=None, score_fn=None, config=None,
               **tensors):
    """helpers.compare with ``spatial_shape``: the kernel against ag.reference (float64), and,
    when ``oracle_mask`` is given, against an eager float64 softmax over that mask too.
    ``config``: a fixed launch configuration (tile sizes) for the kernel."""
    tol = tolerance(q.dtype) if tol is None else tol
    before = [t.clone() for t in (q, k, v, *tensors.values())]
    out, lse = attn(q, k, v, spatial_shape=shape, scale=scale, return_lse=True, config=config, **tensors)
    ref_out, ref_lse = ag.reference(attn.variant)(q, k, v, spatial_shape=shape, scale=scale, return_lse=True,
                                                  **tensors)
    Bq, Hq, L, _ = q.shape
    assert out.shape == (Bq, Hq, L, v.shape[-1]) and out.dtype == q.dtype and out.device == q.device
    assert lse.shape == (Bq, Hq, L) and lse.dtype == torch.float32
    assert not torch.isnan(out).any(), f"NaN in out at {torch.isnan(out).nonzero()[:5].tolist()}"
    assert torch.isfinite(out).all(), "inf in out"
    assert not torch.isnan(lse).any(), f"NaN in lse at {torch.isnan(lse).nonzero()[:5].tolist()}"
    assert not torch.isposinf(lse).any(), "+inf in lse"
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty), (
        f"empty rows differ: first at {(torch.isneginf(lse) != empty).nonzero()[:5].tolist()}")
    assert (out[empty] == 0).all()
    rows = ~empty
    if rows.any():
        err = rel_l2(out[rows], ref_out[rows])
        if err > tol:
            per_query = (out.double() - ref_out).norm(dim=-1).amax(dim=(0, 1))
            bad = (per_query > tol * ref_out.norm(dim=-1).amax().item()).nonzero().flatten()
            raise AssertionError(f"out: relative L2 error {err:.3g} > {tol:g}; worst queries "
                                 f"{bad[:10].tolist()} (of {len(bad)}) on grid {shape}")
        dl = (lse[rows].double() - ref_lse[rows]).abs()
        bound = tol * (1 + ref_lse[rows].abs())
        assert (dl <= bound).all(), f"lse: max error {dl.max().item():.3g}"
    if oracle_mask is not None:
        assert_matches_eager(out, lse, *eager(q, k, v, score_fn=score_fn, mask_fn=oracle_mask.to(q.device),
                                              scale=scale, **tensors), tol)
    for t, t0 in zip((q, k, v, *tensors.values()), before):
        assert torch.equal(t, t0), "the kernel modified one of its inputs"
    return out, lse


@pytest.mark.parametrize("geo", GEOMETRIES, ids=GEO_IDS)
def test_kernel_geometries(geo):
    attn = ag.compile(ag.Variant(mask=geo.na))
    q, k, v = _inputs(geo.L, torch.float32)
    na_compare(attn, q, k, v, geo.shape, oracle_mask=geo.oracle())


# Tile sizes other than the interpreter's default (as large as the problem allows): many
# query and KV boxes per axis, full boxes (no window test) and shells around them.
CONFIG_CASES = [
    (Geo((12, 13), (9, 7), name="2d_big_kernel"), (16, 16)),
    (Geo((16, 15), (9, 7), name="2d_big_kernel"), (32, 64)),
    (Geo((13, 11), 3, dilation=(2, 3), stride=(3, 2), name="2d_13x11_dil_str"), (16, 32)),
    (Geo((5, 6, 7), (3, 2, 5), dilation=(1, 3, 1), stride=(1, 2, 3), is_causal=(False, True, False),
         name="3d_5x6x7_mixed"), (16, 16)),
    (Geo((6, 7, 8), (5, 5, 8), stride=(1, 5, 4), is_causal=(True, False, False), name="3d_big_kernel"),
     (64, 16)),
    (Geo((61,), 19, dilation=2, stride=3, name="1d_k19_d2_s3"), (16, 16)),
    (Geo((8, 12), 4, stride=4, name="2d_blocked"), (16, 16)),
]


@pytest.mark.parametrize("geo,blocks", CONFIG_CASES,
                         ids=[f"{g.name}-{bm}x{bn}" for g, (bm, bn) in CONFIG_CASES])
def test_kernel_tile_sizes(geo, blocks):
    config = ag.KernelConfig(*blocks, 4, 1)
    p = plan(_axes_of(geo), *blocks)
    c = p.counts()
    assert c["visited_tiles"] > 1
    attn = ag.compile(ag.Variant(mask=geo.na))
    q, k, v = _inputs(geo.L, torch.float32, Hq=2, Hkv=1)
    na_compare(attn, q, k, v, geo.shape, oracle_mask=geo.oracle(), config=config)
    assert attn.last_config == config


@pytest.mark.parametrize("geo,blocks", CONFIG_CASES[:4], ids=[g.name for g, _ in CONFIG_CASES[:4]])
def test_kernel_full_boxes_first_on_2d_and_3d(geo, blocks, monkeypatch):
    """The forward's split walk (full boxes without the window test, then the shell's slabs;
    the launcher takes it on 1-D grids and block-sparse plans) is exact on 2-D/3-D windows too,
    where the launcher walks every box with the test in one loop."""
    assert plan(_axes_of(geo), *blocks).has_partial and not plan(_axes_of(geo), *blocks).full_boxes_first
    monkeypatch.setattr(NeighborhoodPlan, "full_boxes_first", property(lambda self: True))
    attn = ag.compile(ag.Variant(mask=geo.na))
    q, k, v = _inputs(geo.L, torch.float32, Hq=2, Hkv=1)
    na_compare(attn, q, k, v, geo.shape, oracle_mask=geo.oracle(), config=ag.KernelConfig(*blocks, 4, 1))


def test_kernel_tile_sizes_cover_both_paths():
    """The cases above include full boxes (no window test), partial shells, and a perfectly
    block-sparse plan (the kernel's HAS_PARTIAL=False path)."""
    plans = [plan(_axes_of(g), *blocks) for g, blocks in CONFIG_CASES]
    assert any(p.has_partial for p in plans) and not all(p.has_partial for p in plans)
    counts = [p.counts() for p in plans]
    assert any(c["full_tiles"] > 0 for c in counts)
    assert any(c["full_tiles"] < c["visited_tiles"] for c in counts)
    assert sum(c["full_tiles"] for c in counts) >= 20


@settings(max_examples=examples(10), **SETTINGS)
@given(geo=geometries(max_tokens=72), data=st.data())
def test_kernel_random_geometries(geo, data):
    block_m = data.draw(st.sampled_from([16, 32, 64]), label="block_m")
    block_n = data.draw(st.sampled_from([16, 32, 64]), label="block_n")
    hkv = data.draw(st.sampled_from([1, 2]), label="Hkv")
    attn = ag.compile(ag.Variant(mask=geo.na))
    q, k, v = _inputs(geo.L, torch.float32, Hq=2, Hkv=hkv, Dv=16)
    na_compare(attn, q, k, v, geo.shape, oracle_mask=geo.oracle(), config=ag.KernelConfig(block_m, block_n, 4, 1))


FP16_CASES = ["1d_k8_d2_s3", "2d_13x11_k5x4", "3d_5x6x7_mixed"]


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=dtype_id)
@pytest.mark.parametrize("geo", [g for g in GEOMETRIES if g.name in FP16_CASES], ids=lambda g: g.name)
def test_kernel_half(geo, dtype):
    attn = ag.compile(ag.Variant(mask=geo.na))
    q, k, v = _inputs(geo.L, dtype, Dv=16)
    na_compare(attn, q, k, v, geo.shape, oracle_mask=geo.oracle())


def test_kernel_gqa():
    geo = Geo((9, 10), (5, 4), dilation=(1, 2), stride=(2, 1), is_causal=(False, True))
    attn = ag.compile(ag.Variant(mask=geo.na))
    q, k, v = _inputs(geo.L, torch.float32, Hq=4, Hkv=2, Dv=16, batch=2)
    na_compare(attn, q, k, v, geo.shape, oracle_mask=geo.oracle())


def test_kernel_softcap_and_scale():
    geo = Geo((5, 6, 7), (3, 4, 5), dilation=(1, 1, 1), stride=(2, 1, 3))
    attn = ag.compile(ag.Variant(mask=geo.na, score=_softcap))
    q, k, v = _inputs(geo.L, torch.float32)
    na_compare(attn, q, k, v, geo.shape, scale=0.4, oracle_mask=geo.oracle(), score_fn=_softcap)


def test_kernel_relative_position_bias():
    X, W = 11, 9
    geo = Geo((X, W), (5, 3), dilation=(2, 1), is_causal=(False, True))
    fn = _rpb_2d(X, W)
    attn = ag.compile(ag.Variant(mask=geo.na, score=fn))
    table = torch.randn(H, 2 * X - 1, 2 * W - 1, device=DEVICE)
    q, k, v = _inputs(geo.L, torch.float32)
    na_compare(attn, q, k, v, geo.shape, oracle_mask=geo.oracle(), score_fn=fn, rpb_table=table)


def test_kernel_and_causal():
    geo = Geo((8, 9), 5, stride=(1, 2))
    attn = ag.compile(ag.Variant(mask=geo.na & ag.causal()))
    q, k, v = _inputs(geo.L, torch.float32)
    na_compare(attn, q, k, v, geo.shape, oracle_mask=geo.oracle() & torch.ones(geo.L, geo.L, dtype=torch.bool).tril())


def test_kernel_and_mask_mod_with_empty_rows():
    """A mask_mod that removes every key of some queries: those rows are 0 with lse -inf."""
    geo = Geo((7, 9), (3, 5), dilation=(2, 1))
    attn = ag.compile(ag.Variant(mask=geo.na & ag.mask_mod(_every_fifth_query_empty)))
    q, k, v = _inputs(geo.L, torch.float32)
    keep = (torch.arange(geo.L) % 5 != 2).view(-1, 1).expand(geo.L, geo.L)
    _, lse = na_compare(attn, q, k, v, geo.shape, oracle_mask=geo.oracle() & keep)
    assert torch.isneginf(lse[..., 2::5]).all() and torch.isfinite(lse[..., 0::5]).all()


def test_kernel_same_variant_other_shapes():
    """One all-int variant, called on 1-D, 2-D and 3-D grids (rank from spatial_shape)."""
    na = ag.neighborhood(3, dilation=1, stride=2)
    attn = ag.compile(ag.Variant(mask=na))
    for shape in ((19,), (5, 7), (3, 4, 5)):
        q, k, v = _inputs(math.prod(shape), torch.float32)
        na_compare(attn, q, k, v, shape, oracle_mask=oracle.mask_of(na, shape))


# --------------------------------------------------------------------------- NATTEN layout
NA_FUNCS = {1: "na1d", 2: "na2d", 3: "na3d"}


@pytest.mark.parametrize("shape,kw,dtype", [
    ((23,), dict(kernel_size=5, dilation=2, stride=2), torch.float16),
    ((9, 10), dict(kernel_size=(3, 4), stride=(1, 2), dilation=(2, 1), is_causal=(True, False), scale=0.3),
     torch.float32),
    ((4, 5, 6), dict(kernel_size=3, is_causal=(False, False, True)), torch.float32),
], ids=["na1d", "na2d", "na3d"])
def test_natten_layout(shape, kw, dtype):
    rank = len(shape)
    kw = dict(kw)
    fn = getattr(ag, NA_FUNCS[rank])
    Bn, Hn, Dv = 2, 2, 16
    L = math.prod(shape)
    qn = torch.randn(Bn, *shape, Hn, D, device=DEVICE).to(dtype)
    kn = torch.randn(Bn, *shape, Hn, D, device=DEVICE).to(dtype)
    vn = torch.randn(Bn, *shape, Hn, Dv, device=DEVICE).to(dtype)
    before = [t.clone() for t in (qn, kn, vn)]
    out = fn(qn, kn, vn, **kw)
    assert out.shape == (Bn, *shape, Hn, Dv) and out.dtype == dtype and out.device == qn.device

    # the same computation through ag.compile on (B, H, L, D) views of the same memory
    scale = kw.pop("scale", None)
    attn = ag.compile(ag.Variant(mask=ag.neighborhood(**kw)))
    q, k, v = (t.flatten(1, rank).transpose(1, 2) for t in (qn, kn, vn))
    assert q.data_ptr() == qn.data_ptr() and q.shape == (Bn, Hn, L, D)
    out_bhld, _ = na_compare(attn, q, k, v, shape, scale=scale, oracle_mask=oracle.mask_of(attn.variant.mask, shape))
    expected = out_bhld.transpose(1, 2).reshape(Bn, *shape, Hn, Dv)
    tol = tolerance(dtype)
    err = rel_l2(out, expected)
    assert err <= tol, f"{NA_FUNCS[rank]} differs from ag.compile on a permuted view: relative L2 {err:.3g}"
    for t, t0 in zip((qn, kn, vn), before):
        assert torch.equal(t, t0)


def test_natten_layout_validation():
    qn = torch.randn(1, 6, 7, 2, D, device=DEVICE)
    with pytest.raises(ValueError, match="axis 1"):
        ag.na2d(qn, qn, qn, kernel_size=(3, 4), dilation=2)  # 4 * 2 = 8 > 7 on axis 1
    with pytest.raises(ValueError, match="stride"):
        ag.na2d(qn, qn, qn, kernel_size=3, stride=4)
    with pytest.raises((TypeError, ValueError)):
        ag.na3d(qn, qn, qn, kernel_size=3)  # a 2-D grid given to na3d


# --------------------------------------------------------------------------- validation
CALLERS = ["compiled", "reference"]


def _caller(kind: str, variant: ag.Variant):
    return ag.compile(variant) if kind == "compiled" else ag.reference(variant)


@pytest.mark.parametrize("kind", CALLERS)
def test_missing_spatial_shape(kind):
    f = _caller(kind, ag.Variant(mask=ag.neighborhood(3)))
    q, k, v = _inputs(30, torch.float32)
    with pytest.raises(TypeError, match="spatial_shape"):
        f(q, k, v)


@pytest.mark.parametrize("kind", CALLERS)
def test_spatial_shape_errors(kind):
    f = _caller(kind, ag.Variant(mask=ag.neighborhood((3, 5), dilation=(1, 2))))
    q, k, v = _inputs(30, torch.float32)
    with pytest.raises(ValueError, match="spatial_shape"):
        f(q, k, v, spatial_shape=(5, 7))  # 35 positions, L = 30
    with pytest.raises(ValueError, match="axis 1"):
        f(q, k, v, spatial_shape=(6, 5))  # 5 * 2 = 10 > 5 on axis 1
    with pytest.raises(ValueError, match="axis 0"):
        f(q, k, v, spatial_shape=(2, 15))  # 3 > 2 on axis 0
    with pytest.raises(ValueError):
        f(q, k, v, spatial_shape=(30,))  # a 2-D neighborhood on a 1-D grid
    with pytest.raises(TypeError):
        f(q, k, v, spatial_shape="3x10")


@pytest.mark.parametrize("kind", CALLERS)
def test_cross_attention_rejected(kind):
    f = _caller(kind, ag.Variant(mask=ag.neighborhood(3)))
    q = torch.randn(1, 2, 20, D, device=DEVICE)
    k = torch.randn(1, 2, 30, D, device=DEVICE)
    with pytest.raises(ValueError, match="Lq"):
        f(q, k, k, spatial_shape=(4, 5))


@pytest.mark.parametrize("kind", CALLERS)
def test_spatial_shape_on_other_variants(kind):
    f = _caller(kind, ag.Variant(mask=ag.causal()))
    q, k, v = _inputs(30, torch.float32)
    with pytest.raises(TypeError, match="spatial_shape"):
        f(q, k, v, spatial_shape=(5, 6))


@ag.mask_mod
def _global_tokens(b, h, q_idx, kv_idx):
    return (kv_idx < 3) | (q_idx < 2)


@pytest.mark.parametrize("mask,shape", [
    (ag.neighborhood((3, 3)) | _global_tokens, (6, 7)),
    (~ag.neighborhood(3, dilation=2), (6, 7)),
    (ag.neighborhood((2, 3, 3), stride=(1, 2, 1), is_causal=(True, False, False)) | ag.causal(), (3, 4, 5)),
    (ag.sliding_window(4) | (ag.neighborhood((3, 3)) & ag.causal()), (5, 6)),
    ((ag.neighborhood(5) | ag.sliding_window(1, 0)) & ag.document(), (23,)),
], ids=["or_global_tokens", "not_dilated", "or_causal_3d", "nested", "and_document_1d"])
def test_neighborhood_under_or_and_not(mask, shape):
    """A neighborhood under '|' or '~' is tested element-wise by the run-time classifier."""
    variant = ag.Variant(mask=mask)
    attn = ag.compile(variant)
    assert attn.ir.strategy == "tiles"
    L = math.prod(shape)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 2, L, 16, generator=g).to(DEVICE, DTYPES[0])
    k, v = (torch.randn(2, 1, L, 16, generator=g).to(DEVICE, DTYPES[0]) for _ in range(2))
    tensors = {}
    if "document" in variant.to_text():
        tensors["document_ids"] = (torch.arange(L, device=DEVICE) // 9).repeat(2, 1)
    na_compare(attn, q, k, v, shape, config=ag.KernelConfig(16, 16, 4, 1), **tensors)
    na_compare(attn, q, k, v, shape, **tensors)


def test_two_neighborhood_geometries_are_unsupported():
    with pytest.raises(ag.UnsupportedVariant, match="one neighborhood"):
        ag.compile(ag.Variant(mask=ag.neighborhood(3) | ag.neighborhood(5)))


# --------------------------------------------------------------------------- built-in library
_NA_BUILTINS = [n for n in builtin_names() if fitting_spatial_shape(builtin(n)) is not None]


def test_library_has_the_neighborhood_builtins():
    assert {"na2d", "dilated_na2d", "gna_strided", "blocked_window", "axial_row", "halonet"} <= set(_NA_BUILTINS)


@pytest.mark.parametrize("name", _NA_BUILTINS)
def test_builtin_neighborhood_matches_reference(name):
    variant = builtin(name)
    shape = fitting_spatial_shape(variant)
    L = math.prod(shape)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, L, 16, generator=g).to(DEVICE, DTYPES[0]) for _ in range(3))
    na_compare(ag.compile(variant), q, k, v, shape, oracle_mask=oracle.mask_of(variant.mask, shape))
