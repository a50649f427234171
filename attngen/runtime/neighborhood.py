"""Neighborhood geometry at a call's spatial shape: checks, box tiles and the tile plan.

A neighborhood kernel works on three axes; lower-rank grids get leading axes of size 1
(kernel 1), which the kernel's arithmetic folds away. Query and KV tiles are boxes of the
grid inside one dilation group per axis, so a key tile only holds keys the query tile's
residue class can attend.

Per axis, with positions counted inside a dilation group (x' = x div d), the windows are
monotone in the query position, so the keys some query of a tile [x0, x1] attends are
[lo(x0), hi(x1)] and the keys every query attends are [lo(x1), hi(x0)]. KV tiles start at
lo(x0) (not at a multiple of the tile, which would waste a partial tile per axis), so a
tile is full on an axis when it lies inside [lo(x1), hi(x0)]. A KV box is full when it is
full on every axis. Everything factorizes over axes, which is why the planner, the
generated kernel and ``attngen explain`` can all count tiles without a mask of any size.
The kernel template (templates/attention_fwd.py.j2, ``_na_window``) computes the same
windows; tests/test_neighborhood.py checks both against a brute-force mask.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

from ..ir.nodes import Neighborhood

RANK = 3  # axes in the generated kernel; lower ranks are padded in front
MASK_COST = 0.3  # extra cost of a partial tile over a full one (element-wise mask code)


@dataclass(frozen=True)
class Axis:
    """One spatial axis: its length and the neighborhood's geometry on it."""

    size: int
    kernel: int = 1
    dilation: int = 1
    stride: int = 1
    causal: bool = False

    def group_length(self, g: int) -> int:
        """Positions in dilation group ``g`` (x = x' * dilation + g)."""
        return -(-(self.size - g) // self.dilation)

    def window(self, x: int, length: int) -> tuple[int, int]:
        """Keys [lo, hi] (group positions) of query ``x`` in a group of ``length`` positions."""
        k, s = self.kernel, self.stride
        if self.causal:
            leader = min((x // s) * s + s - 1, length - 1)
            return max(leader - k + 1, 0), x
        leader = min((x // s) * s + s // 2, length - 1)
        lo = min(max(leader - k // 2, 0), length - k)
        return lo, lo + k - 1


def resolve_axes(na: Neighborhood, spatial_shape: object, L: int) -> tuple[Axis, ...]:
    """The neighborhood on ``spatial_shape`` as three axes; ValueError names what does not fit."""
    if isinstance(spatial_shape, int) and not isinstance(spatial_shape, bool):
        spatial_shape = (spatial_shape,)
    if (not isinstance(spatial_shape, (tuple, list)) or not 1 <= len(spatial_shape) <= RANK
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in spatial_shape)):
        raise TypeError(f"spatial_shape must be a tuple of 1 to 3 ints, got {spatial_shape!r}")
    shape = tuple(spatial_shape)
    rank = len(shape)
    if na.rank is not None and na.rank != rank:
        raise ValueError(f"spatial_shape {shape} has {rank} axes but the neighborhood is {na.rank}-D "
                         f"(kernel_size={na.kernel_size!r})")
    for axis, size in enumerate(shape):
        if size < 1:
            raise ValueError(f"spatial_shape axis {axis} must be >= 1, got {size}")
    if math.prod(shape) != L:
        raise ValueError(f"spatial_shape {shape} has {math.prod(shape)} positions but the sequence has "
                         f"{L}; prod(spatial_shape) must equal Lq == Lkv")
    axes = []
    for axis, (size, k, d, s, c) in enumerate(zip(shape, na.per_axis("kernel_size", rank),
                                                  na.per_axis("dilation", rank), na.per_axis("stride", rank),
                                                  na.per_axis("is_causal", rank))):
        if k * d > size:
            raise ValueError(f"neighborhood does not fit spatial_shape axis {axis}: kernel_size {k} x dilation "
                             f"{d} = {k * d} > {size}")
        if s > k:
            raise ValueError(f"neighborhood: stride {s} > kernel_size {k} on axis {axis}")
        axes.append(Axis(size, k, d, s, c))
    return (Axis(1),) * (RANK - rank) + tuple(axes)


@dataclass(frozen=True)
class AxisTiles:
    """Per-axis totals over every query tile of one axis (sums factorize over axes)."""

    query_tiles: int      # query tiles along this axis (all dilation groups)
    kv_tiles: int         # sum over query tiles of the KV tiles visited
    full_tiles: int       # ... of which full on this axis
    attended: int         # sum over positions of the window size (keys attended)

    def entries(self, tm: int, tn: int) -> tuple[int, int]:
        """(visited, full) query-key pairs along this axis, padding included."""
        return self.kv_tiles * tm * tn, self.full_tiles * tm * tn


@functools.lru_cache(maxsize=4096)
def axis_tiles(axis: Axis, tm: int, tn: int) -> AxisTiles:
    """Walk the query tiles of one axis as the kernel does and count its KV tiles."""
    per_group = -(-(-(-axis.size // axis.dilation)) // tm)
    kv = full = attended = 0
    for g in range(axis.dilation):
        length = axis.group_length(g)
        for x in range(length):
            lo, hi = axis.window(x, length)
            attended += hi - lo + 1
        for t in range(per_group):
            x0 = t * tm
            if x0 >= length:
                continue
            x1 = min(x0 + tm, length) - 1
            (lo0, hi0), (lo1, hi1) = axis.window(x0, length), axis.window(x1, length)
            n = -(-(hi1 - lo0 + 1) // tn)
            f_lo = min(-(-(lo1 - lo0) // tn), n)
            f_hi = max(min((hi0 - lo0 + 1) // tn, n), f_lo)
            kv += n
            full += f_hi - f_lo
    return AxisTiles(per_group * axis.dilation, kv, full, attended)


def _boxes(block: int) -> list[tuple[int, int, int]]:
    p = block.bit_length() - 1
    return [(1 << a, 1 << b, 1 << (p - a - b)) for a in range(p + 1) for b in range(p + 1 - a)]


@dataclass(frozen=True)
class NeighborhoodPlan:
    """How one call tiles the grid: three axes, the query and KV boxes, and the totals."""

    axes: tuple[Axis, ...]
    q_box: tuple[int, int, int]
    kv_box: tuple[int, int, int]

    @functools.cached_property  # plans are shared (plan() is cached) and asked on every launch
    def per_axis(self) -> tuple[AxisTiles, ...]:
        return tuple(axis_tiles(a, tm, tn) for a, tm, tn in zip(self.axes, self.q_box, self.kv_box))

    @property
    def programs(self) -> int:
        """Query tiles: the first grid dimension of the launch."""
        return math.prod(t.query_tiles for t in self.per_axis)

    @property
    def kv_programs(self) -> int:
        """KV boxes aligned to the grid of each dilation group: the backward dK/dV pass's
        programs."""
        return math.prod(a.dilation * -(-(-(-a.size // a.dilation)) // tn) for a, tn in zip(self.axes, self.kv_box))

    @functools.cached_property
    def _search_constexprs(self) -> dict[str, int]:
        return {f"SEARCH_STEPS{i}": a.size.bit_length() + 1 for i, a in enumerate(self.axes)}

    def search_constexprs(self) -> dict[str, int]:
        """SEARCH_STEPS0..2: the halvings that cover each axis (the dK/dV pass's binary
        searches over query positions; each search loop runs that many times)."""
        return self._search_constexprs

    @property
    def inner_query_boxes(self) -> bool:
        """Whether the dK/dV pass first walks the query boxes that see a whole KV box, without
        the window test. H100 (benchmarks/NOTES.md, Neighborhoods, 2026-11-24): it pays where one axis varies
        (1-D window 2047: fwd+bwd 6.63 -> 6.16 ms) and cost 3-4% on 2-D 31x31 and 3-D 7x15x15,
        where two loops per program each start a pipeline for fewer boxes."""
        return one_axis_varies(self.axes)

    @property
    def query_rows_are_ranges(self) -> bool:
        """Whether the dK/dV pass's query boxes are plain row ranges: only the last axis varies,
        without dilation, and the boxes lie along it. The pass then walks rows from a multiple
        of the box as the band's does (contiguous, aligned rows: vector loads of lse and delta,
        no per-step row arithmetic; benchmarks/NOTES.md, Neighborhoods, 2026-11-24)."""
        *lead, last = self.axes
        return (all(a.size == 1 for a in lead) and last.dilation == 1
                and self.q_box[:-1] == (1,) * (RANK - 1) and self.inner_query_boxes)

    @functools.cached_property
    def has_partial(self) -> bool:
        """Whether any KV tile needs mask code (False: perfectly block sparse)."""
        return any(t.kv_tiles != t.full_tiles for t in self.per_axis)

    def counts(self) -> dict[str, int]:
        """Tile and entry totals for one (batch, head): what ``attngen explain`` prints."""
        per_axis = self.per_axis
        L = math.prod(a.size for a in self.axes)
        return {
            "L": L,
            "attended": math.prod(t.attended for t in per_axis),
            "query_tiles": math.prod(t.query_tiles for t in per_axis),
            "visited_tiles": math.prod(t.kv_tiles for t in per_axis),
            "full_tiles": math.prod(t.full_tiles for t in per_axis),
            "visited_entries": math.prod(t.kv_tiles * tm * tn
                                         for t, tm, tn in zip(per_axis, self.q_box, self.kv_box)),
        }

    @property
    def full_boxes_first(self) -> bool:
        """Whether the forward and dQ passes walk the full KV boxes first, without the window
        test, and the shell after them; otherwise one loop walks every box with the test.
        Split where the full boxes are most of the walk (1-D windows) or all of it
        (block-sparse geometry); one loop on 2-D/3-D windows, whose walk is mostly shell,
        saves a second pipeline fill and the shell's slab arithmetic (NOTES.md, Neighborhoods, 2026-11-24)."""
        return one_axis_varies(self.axes) or not self.has_partial

    # The launchers read the next four on every launch, and a plan is shared (plan() is
    # cached): each is computed once, and the dicts are shared too (unpacked, never modified).
    def constexprs(self) -> dict[str, object]:
        """The forward and dQ kernels' compile-time geometry, tile boxes, HAS_PARTIAL and
        FULL_BOXES."""
        return self._constexprs

    def box_constexprs(self) -> dict[str, object]:
        """The compile-time geometry and tile boxes."""
        return self._box_constexprs

    def sizes(self) -> tuple[int, int, int]:
        return self._sizes

    @functools.cached_property
    def _constexprs(self) -> dict[str, object]:
        return {**self._box_constexprs, "HAS_PARTIAL": self.has_partial, "FULL_BOXES": self.full_boxes_first}

    @functools.cached_property
    def _box_constexprs(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for i, (a, tm, tn) in enumerate(zip(self.axes, self.q_box, self.kv_box)):
            out.update({f"K{i}": a.kernel, f"DIL{i}": a.dilation, f"STR{i}": a.stride, f"CAUSAL{i}": a.causal,
                        f"TM{i}": tm, f"TN{i}": tn})
        # leading axes of size 1 need no window test (only one position, always inside)
        out["FIRST_AXIS"] = next((i for i, a in enumerate(self.axes) if a.size > 1), RANK - 1)
        return out

    @functools.cached_property
    def _sizes(self) -> tuple[int, int, int]:
        return tuple(a.size for a in self.axes)  # type: ignore[return-value]


def _cost(axes: tuple[Axis, ...], q_box: tuple, kv_box: tuple) -> float:
    visited = full = 1
    for a, tm, tn in zip(axes, q_box, kv_box):
        v, f = axis_tiles(a, tm, tn).entries(tm, tn)
        visited, full = visited * v, full * f
    return visited + MASK_COST * (visited - full)


def one_axis_varies(axes: tuple[Axis, ...]) -> bool:
    """Whether the grid is effectively 1-D (every other axis has size 1)."""
    return sum(a.size > 1 for a in axes) <= 1


@functools.lru_cache(maxsize=256)
def plan(axes: tuple[Axis, ...], block_m: int, block_n: int,
         q_box: tuple[int, int, int] | None = None, kv_box: tuple[int, int, int] | None = None) -> NeighborhoodPlan:
    """The query and KV boxes (products ``block_m`` and ``block_n``) that visit the fewest
    entries, partial tiles weighted by their mask code; given boxes are checked instead."""
    for name, box, block in (("q_box", q_box, block_m), ("kv_box", kv_box, block_n)):
        if box is not None and (len(box) != RANK or math.prod(box) != block):
            raise ValueError(f"{name} {box} must have {RANK} entries with product {block}")
    q_options = [q_box] if q_box else _boxes(block_m)
    kv_options = [kv_box] if kv_box else _boxes(block_n)
    best = min(itertools.product(q_options, kv_options), key=lambda qk: (_cost(axes, *qk), qk))
    return NeighborhoodPlan(axes, *best)


@functools.lru_cache(maxsize=256)  # asked on every call, by the forward's and the backward's tile choice
def prefers_dense_tiles(axes: tuple[Axis, ...], dense_block_m: int, dense_block_n: int) -> bool:
    """Whether this grid runs best with the dense kernel's (large) tiles rather than the
    masked variants' smaller ones. H100 measurements (benchmarks/NOTES.md): 1-D windows and
    block-sparse boxes have no window edges inside a tile, so large tiles win, unless a
    program then walks too few KV tiles to fill the pipeline (blocked 16x16 windows with 2
    KV tiles per query tile ran 2x slower than with 64 x 64 tiles); 2-D/3-D windows waste
    less on their edges with small tiles."""
    if one_axis_varies(axes):
        return True
    big = plan(axes, dense_block_m, dense_block_n)
    counts = big.counts()
    return not big.has_partial and counts["visited_tiles"] >= 8 * counts["query_tiles"]


__all__ = ["Axis", "one_axis_varies", "prefers_dense_tiles", "AxisTiles", "NeighborhoodPlan", "RANK", "axis_tiles", "plan", "resolve_axes"]
