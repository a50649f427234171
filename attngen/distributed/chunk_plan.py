"""Which tiles of a (query chunk, key chunk) pair a band mask keeps, decided on the host.

A pair is a query chunk of ``q_len`` rows starting at global position ``q_offset`` against a
key chunk of ``kv_len`` keys starting at ``kv_offset``. Where the variant's mask is a band
``lo <= kv - q <= hi`` of global positions (causal, windows, band-shaped mask_mods; bounds
evaluated at the global lengths), local row i keeps the local keys

    [i + q_offset - kv_offset + lo,  i + q_offset - kv_offset + hi]  clipped to [0, kv_len - 1]

which is runtime/varlen_plan.py's ``spans`` of one sequence seen from the key chunk's frame
(and, for the backward's dK/dV pass, the keys' rows from the query chunk's frame). Its
``runs`` turn the spans into the run of KV tiles each query tile walks, with the tiles
inside every row's span marked full (no mask code) and the edges tested against the spans.
So a pair visits only the tiles its mask keeps, the kernels are the ordinary tile-list ones,
and the plan costs O(q_len + kv_len) host work once per geometry and tile size.

Whole pairs are decided here too: ``empty`` pairs are never launched, and ``full`` ones walk
every tile without mask code.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy
import torch

from ..ir.expr import LKV, LQ
from ..ir.kernel import Band
from ..runtime.varlen_plan import VarlenTileLists, runs, spans


@dataclass(frozen=True)
class PairGeometry:
    """Where a chunk pair sits in the global problem (all host ints)."""

    q_offset: int
    kv_offset: int
    q_len: int
    kv_len: int
    length_q: int      # global Lq
    length_kv: int     # global Lkv
    head_offset: int = 0

    def positions(self) -> list[int]:
        """The ``cp_positions`` entries (positions.py's order)."""
        return [self.q_offset, self.kv_offset, self.length_q, self.length_kv, self.head_offset]


def band_bounds(band: Band | None, length_q: int, length_kv: int) -> tuple[int | None, int | None]:
    """The band's (lo, hi) at the global lengths; None for an open side (or no band)."""
    if band is None:
        return None, None

    def at(bound):
        if bound is None:
            return None
        value = sympy.sympify(bound).subs({LQ: length_q, LKV: length_kv})
        return int(value)

    return at(band.lo), at(band.hi)


def _spans(own_len: int, other_len: int, own_in_other_frame: int, lo: int | None, hi: int | None) -> torch.Tensor:
    """(3, own_len) spans of each own position p over the other chunk: positions
    [p + own_in_other_frame + lo, ... + hi] clipped to [0, other_len - 1]."""
    seq = torch.zeros(own_len, dtype=torch.int64)
    cu_own = torch.tensor([-own_in_other_frame, 0], dtype=torch.int64)  # only [0] is read
    cu_other = torch.tensor([0, other_len], dtype=torch.int64)
    as_tensor = (lambda x: None if x is None else torch.tensor([x], dtype=torch.int64))
    return spans(seq, cu_own, cu_other, other_len, as_tensor(lo), as_tensor(hi))


@dataclass(frozen=True)
class PairBand:
    """A pair's band in its own local coordinates, and what follows for the whole pair."""

    geometry: PairGeometry
    lo: int | None
    hi: int | None

    @classmethod
    def of(cls, band: Band | None, geometry: PairGeometry) -> "PairBand":
        return cls(geometry, *band_bounds(band, geometry.length_q, geometry.length_kv))

    @property
    def shift(self) -> int:
        """A query row's position in the key chunk's frame, minus its own index."""
        return self.geometry.q_offset - self.geometry.kv_offset

    @functools.cached_property
    def empty(self) -> bool:
        """No row keeps any key of the chunk."""
        g, s = self.geometry, self.shift
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            return True
        below = self.hi is not None and (g.q_len - 1) + s + self.hi < 0     # the last row's last key is before the chunk
        above = self.lo is not None and s + self.lo > g.kv_len - 1          # the first row's first key is after it
        return below or above

    @functools.cached_property
    def full(self) -> bool:
        """Every row keeps every key of the chunk."""
        g, s = self.geometry, self.shift
        return ((self.lo is None or (g.q_len - 1) + s + self.lo <= 0)
                and (self.hi is None or s + self.hi >= g.kv_len - 1))

    def row_spans(self) -> torch.Tensor:
        return _spans(self.geometry.q_len, self.geometry.kv_len, self.shift, self.lo, self.hi)

    def column_spans(self) -> torch.Tensor:
        neg = (lambda x: None if x is None else -x)
        return _spans(self.geometry.kv_len, self.geometry.q_len, -self.shift, neg(self.hi), neg(self.lo))


def pair_plan(pair: PairBand, block_m: int, block_n: int, device: torch.device) -> VarlenTileLists:
    """The forward's (and dQ pass's) tile plan of a pair with an exact band mask, with the
    dK/dV pass's plan built on first use (``transposed()``). Counts are known on the host, so
    no later call reads the device back."""
    def build(span: torch.Tensor, own_block: int, other_block: int, other_len: int) -> VarlenTileLists:
        tile_runs = runs(span, own_block, other_block, True)
        plan = VarlenTileLists.from_runs(tile_runs.to(device), span.to(device), 1, -(-other_len // other_block))
        full = int((tile_runs[:, 2] - tile_runs[:, 1]).sum())
        visited = int((tile_runs[:, 3] - tile_runs[:, 0]).sum())
        plan.partial_share = 1.0 - full / visited if visited else 1.0
        plan._share_known = True
        return plan

    g = pair.geometry
    plan = build(pair.row_spans(), block_m, block_n, g.kv_len)
    plan.column_plan = lambda: build(pair.column_spans(), block_n, block_m, g.q_len)
    return plan


__all__ = ["PairBand", "PairGeometry", "band_bounds", "pair_plan"]
