"""Neighborhood attention sharded along the first spatial axis: which rows each rank needs.

A grid (X, Y[, Z]) is split by rows of its first axis X: rank r holds rows [a_r, b_r), each
row being prod(Y, Z) tokens. Its queries attend keys only inside their windows (SEMANTICS.md,
``neighborhood``), so along X a rank needs exactly the rows its queries' windows reach
(``reached``): per dilation group g the windows of consecutive queries overlap (starts move by
at most the stride s <= k), so the rows reached from queries x' in [f, l] of the group are
one run [start(f), end(l)] (causal: [start(f), l]) of that group's rows, y = y' * d + g. The
rows of that set owned by another rank are its halo, and they are all that is sent.

The local computation reuses the ordinary neighborhood kernel on a slab of rows [p0, p1)
chosen so that every local query's window on the slab is its global window shifted by p0:

- p0 is the lowest row reached, rounded down to a multiple of d * s: row groups mod d and
  stride groups of s group positions then line up with the global grid;
- p1 covers the highest row reached and each query's stride leader (a causal window starts
  k - 1 before its leader, which may lie past the query), capped at X;
- the slab is widened (with zero rows, still aligned) until k * d rows fit, never past a
  global border that the windows did not already touch.

Windows shift inward only at the grid's borders, and the slab reaches a global border
exactly where some window does, so no local window is clipped differently from the global
one (``check_slab`` verifies this row by row for every plan). Slab rows that are neither local
nor received are zeros: no local window reaches them. The price is compute: the slab's
rows beyond the local ones run as queries too, and their outputs are dropped.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..ir.nodes import Neighborhood
from ..runtime.neighborhood import RANK, Axis, resolve_axes
from .layout import SequenceLayout, split_evenly


def _window_rows(axis: Axis, x: int) -> tuple[int, int, int]:
    """(first row, last row, leader row) of row x's window on this axis; rows step by d."""
    d, s = axis.dilation, axis.stride
    g, xg = x % d, x // d
    length = axis.group_length(g)
    lo, hi = axis.window(xg, length)
    leader = min((xg // s) * s + (s - 1 if axis.causal else s // 2), length - 1)
    return lo * d + g, hi * d + g, leader * d + g


def reached(axis: Axis, a: int, b: int) -> list[tuple[int, int]]:
    """The rows the windows of rows [a, b) reach, as (first, last) runs of step d, one per
    dilation group present (see the module's docstring)."""
    runs = []
    for g in range(axis.dilation):
        first = a + (g - a) % axis.dilation
        if first >= b:
            continue
        last = first + ((b - 1 - first) // axis.dilation) * axis.dilation
        runs.append((_window_rows(axis, first)[0], _window_rows(axis, last)[1]))
    return runs


def reached_rows(axis: Axis, a: int, b: int) -> torch.Tensor:
    """Every row reached from rows [a, b), sorted (int64)."""
    rows = [torch.arange(lo, hi + 1, axis.dilation) for lo, hi in reached(axis, a, b)]
    return torch.cat(rows).sort().values if rows else torch.empty(0, dtype=torch.int64)


def slab(axis: Axis, a: int, b: int) -> tuple[int, int]:
    """The rows [p0, p1) the kernel runs on for local rows [a, b) (the module's docstring)."""
    runs = reached(axis, a, b)
    unit = axis.dilation * axis.stride
    low = min([a] + [lo for lo, _ in runs])
    high = max([b - 1] + [hi for _, hi in runs] + [_window_rows(axis, x)[2] for x in range(a, b)])
    p0 = (low // unit) * unit
    p1 = min(high + 1, axis.size)
    need = axis.kernel * axis.dilation
    if p1 - p0 < need and p1 < axis.size:
        p1 = min(axis.size, p0 + need)
    while p1 - p0 < need:  # the top is at the grid's end: widen downwards, still aligned
        p0 = max(0, p0 - unit)
    return p0, p1


def check_slab(axis: Axis, a: int, b: int, p0: int, p1: int) -> None:
    """Raise if some local row's window on the slab is not its global one shifted by p0."""
    local = Axis(p1 - p0, axis.kernel, axis.dilation, axis.stride, axis.causal)
    for x in range(a, b):
        expected = _window_rows(axis, x)[:2]
        lo, hi, _ = _window_rows(local, x - p0)
        if (lo + p0, hi + p0) != expected:
            raise AssertionError(f"halo slab [{p0}, {p1}) changes row {x}'s window on an axis of {axis}: "
                                 f"{(lo + p0, hi + p0)} instead of {expected}")


@dataclass(frozen=True)
class GridLayout:
    """A grid ``spatial_shape`` split over ``world_size`` ranks by rows of its first axis:
    ``rows[r]`` rows for rank r (default: as even as possible). Tokens are row-major, so a
    rank's tokens are contiguous; ``sequence`` is that split as a SequenceLayout."""

    spatial_shape: tuple[int, ...]
    world_size: int
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.spatial_shape) if isinstance(self.spatial_shape, (tuple, list)) else None
        if not shape or len(shape) > RANK or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(f"GridLayout: spatial_shape must be 1 to 3 positive ints, got {self.spatial_shape!r}")
        object.__setattr__(self, "spatial_shape", shape)
        rows = tuple(self.rows) if self.rows is not None else None
        if rows is None:
            if shape[0] < self.world_size:
                raise ValueError(f"GridLayout: {shape[0]} rows cannot be split over {self.world_size} ranks")
            rows = tuple(split_evenly(shape[0], self.world_size))
        if len(rows) != self.world_size or any(n < 1 for n in rows) or sum(rows) != shape[0]:
            raise ValueError(f"GridLayout: rows must be {self.world_size} positive counts summing to {shape[0]}, "
                             f"got {self.rows!r}")
        object.__setattr__(self, "rows", rows)

    @property
    def row_size(self) -> int:
        return math.prod(self.spatial_shape[1:])

    @property
    def length(self) -> int:
        return math.prod(self.spatial_shape)

    def rows_of(self, rank: int) -> tuple[int, int]:
        start = sum(self.rows[:rank])
        return start, start + self.rows[rank]

    @functools.cached_property
    def sequence(self) -> SequenceLayout:
        return SequenceLayout(self.length, self.world_size, sizes=tuple(n * self.row_size for n in self.rows))


@dataclass(frozen=True)
class HaloPlan:
    """One rank's part of a sharded neighborhood: the slab rows it computes on, where its own
    rows sit in the slab, and the rows it receives from and sends to each peer (global rows,
    sorted)."""

    slab: tuple[int, int]
    own: tuple[int, int]
    receive: dict[int, torch.Tensor]
    send: dict[int, torch.Tensor]
    axes: tuple[Axis, ...]  # the neighborhood on the slab's grid

    @property
    def slab_shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)


def first_axis(na: Neighborhood, spatial_shape: tuple[int, ...]) -> Axis:
    """The neighborhood's geometry on the grid's first axis (resolve_axes checks the grid)."""
    return resolve_axes(na, spatial_shape, math.prod(spatial_shape))[RANK - len(spatial_shape)]


@functools.lru_cache(maxsize=64)
def halo_plan(na: Neighborhood, grid: GridLayout, rank: int) -> HaloPlan:
    """Rank ``rank``'s plan (every rank derives everyone's halos from the shared geometry)."""
    axis = first_axis(na, grid.spatial_shape)
    bounds = [grid.rows_of(r) for r in range(grid.world_size)]
    needs = [reached_rows(axis, *bounds[r]) for r in range(grid.world_size)]

    def owned(rows: torch.Tensor, r: int) -> torch.Tensor:
        return rows[(rows >= bounds[r][0]) & (rows < bounds[r][1])]

    receive = {r: owned(needs[rank], r) for r in range(grid.world_size) if r != rank}
    send = {r: owned(needs[r], rank) for r in range(grid.world_size) if r != rank}
    a, b = bounds[rank]
    p0, p1 = slab(axis, a, b)
    check_slab(axis, a, b, p0, p1)
    shape = (p1 - p0,) + grid.spatial_shape[1:]
    axes = resolve_axes(na, shape, math.prod(shape))
    return HaloPlan((p0, p1), (a, b), {r: t for r, t in receive.items() if t.numel()},
                    {r: t for r, t in send.items() if t.numel()}, axes)


__all__ = ["GridLayout", "HaloPlan", "check_slab", "first_axis", "halo_plan", "reached", "reached_rows", "slab"]
