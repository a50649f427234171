"""Tile plans of packed variable-length batches, in closed form from ``cu_seqlens``.

A packed varlen variant (passes/varlen.py) is a run-time-classified mask: "same sequence"
and the variant's own mask. The generic classifier (runtime/tiles.py) would evaluate it on
every (row, key) pair of the packed problem, O(total_q * total_k): about 1 ms at 8K tokens
and 16x that at 32K (benchmarks/NOTES.md, "what the spans cost a new batch"), more than the
attention itself. But the structure is known: each sequence's rows keep keys of that
sequence only, and where the variant's mask is a band of ``kv_idx - q_idx`` (causal,
bottom-right causal, sliding windows, no mask) each row keeps one span of keys, computable
from its position:

    row i of sequence S at position p:  keys cu_k[S] + [max(0, p + lo), min(Lk_S - 1, p + hi)]
    key j of sequence S at position p:  rows cu_q[S] + [max(0, p - hi), min(Lq_S - 1, p - lo)]

(lo, hi: the band's bounds at the sequence's lengths). A query tile's tiles are then one run:
from its rows' first kept key to their last, the tiles inside every row's span full (no mask
code), the others partial, tested against the spans (a band test; ``TileLists.spans_exact``).
That is O(total_q + total_k) elementwise work and a few reductions per tile, no host sync.

Where the mask is a band AND something else (a mask_mod, documents), the band still bounds
what a row can keep: the run covers the band's span, every tile partial, and the kernel
evaluates the whole mask in each (``exact`` False). No mask narrower than the sequence is
known for unions and complements: the run is the sequence's keys.

The plan of the backward's dK/dV pass (the lists transposed: one run of query tiles per KV
tile) comes from the keys' spans, built on first use.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import sympy
import torch

from ..ir.expr import LKV, LQ, FloorDiv
from ..ir.kernel import Band
from .tiles import TileLists

_FAR = 2 ** 30  # beyond any position (int32 arithmetic below stays far from overflow)


class UnsupportedBound(ValueError):
    """A band bound this module cannot evaluate per sequence (the plan then ignores it)."""


def evaluate_bound(expr: sympy.Basic | None, lq: torch.Tensor, lk: torch.Tensor) -> torch.Tensor | None:
    """A band bound (an integer expression in Lq, Lkv) at every sequence's lengths, as an int64
    tensor like ``lq``; None for an unbounded side."""
    if expr is None:
        return None

    def ev(e: sympy.Basic):
        if e.is_Integer:
            return int(e)
        if e == LQ:
            return lq
        if e == LKV:
            return lk
        if isinstance(e, sympy.Add):
            return functools.reduce(lambda a, b: a + b, (ev(a) for a in e.args))
        if isinstance(e, sympy.Mul):
            return functools.reduce(lambda a, b: a * b, (ev(a) for a in e.args))
        if isinstance(e, (sympy.Max, sympy.Min)):
            op = torch.maximum if isinstance(e, sympy.Max) else torch.minimum
            return functools.reduce(lambda a, b: op(torch.as_tensor(a, device=lq.device),
                                                    torch.as_tensor(b, device=lq.device)), (ev(a) for a in e.args))
        if isinstance(e, FloorDiv):
            a, b = (ev(x) for x in e.args)
            return torch.div(torch.as_tensor(a, device=lq.device), b, rounding_mode="floor")
        raise UnsupportedBound(f"band bound {e} cannot be evaluated per sequence")

    return torch.as_tensor(ev(expr), device=lq.device).to(torch.int64).expand(lq.shape)


def sequence_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(total,) int32: the sequence of each packed position (empty sequences own none).
    Clamped to a valid sequence, so that malformed ``cu_seqlens`` passed with check=False
    gives wrong numbers, not reads outside the tensors."""
    positions = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    ids = torch.searchsorted(cu_seqlens[1:].contiguous(), positions, right=True)
    return ids.clamp_(max=cu_seqlens.shape[0] - 2).to(torch.int32)


def spans(seq: torch.Tensor, cu_own: torch.Tensor, cu_other: torch.Tensor, other_total: int,
          lo: torch.Tensor | None, hi: torch.Tensor | None) -> torch.Tensor:
    """(3, n) int32 spans of n positions of one side (sequence ids ``seq``): the first and
    last position of the other side kept, and the count (an empty span is
    [other_total, -1], count 0: TileLists' convention). Each position p of sequence S keeps
    the other side's positions cu_other[S] + [max(0, p + lo_S), min(len_S - 1, p + hi_S)],
    where len_S is the other side's length of S and None bounds are open."""
    s = seq.long()
    own_start = cu_own.long()[s]
    other_start = cu_other.long()[s]
    other_len = cu_other.long()[s + 1] - other_start
    p = torch.arange(seq.shape[0], device=seq.device) - own_start
    first = p + lo[s] if lo is not None else torch.zeros_like(p)
    last = p + hi[s] if hi is not None else other_len - 1
    first = first.clamp(min=0)
    last = torch.minimum(last, other_len - 1)
    kept = first <= last
    first = torch.where(kept, other_start + first, other_total)
    last = torch.where(kept, other_start + last, -1)
    count = torch.where(kept, last - first + 1, 0)
    return torch.stack((first, last, count)).to(torch.int32)


def runs(span: torch.Tensor, rows_per_tile: int, cols_per_tile: int, exact: bool) -> torch.Tensor:
    """(tiles, 4) int32 [lo, full_lo, full_hi, hi) column-tile bounds per tile of
    ``rows_per_tile`` positions (TileLists.runs' layout): the run from the tile's first kept
    column to its last; with ``exact``, the tiles inside every row's span are full (rows
    keeping nothing leave none full). An empty tile is all zeros."""
    first, last, count = span.long()
    n = first.shape[0]
    tiles = -(-n // rows_per_tile)
    pad = tiles * rows_per_tile - n
    kept = count > 0

    def per_tile(x: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, pad), value=fill).view(tiles, rows_per_tile)

    union_first = per_tile(torch.where(kept, first, _FAR), _FAR).amin(1)
    union_last = per_tile(torch.where(kept, last, -1), -1).amax(1)
    any_kept = union_last >= 0
    lo = torch.where(any_kept, union_first // cols_per_tile, 0)
    hi = torch.where(any_kept, union_last // cols_per_tile + 1, 0)
    full_lo = full_hi = hi
    if exact:
        # padding rows (past the last position) are neutral; a row keeping nothing is not
        inter_first = per_tile(torch.where(kept, first, _FAR), -1).amax(1)
        inter_last = per_tile(torch.where(kept, last, -1), _FAR).amin(1)
        f_lo = -(-inter_first // cols_per_tile)
        f_hi = (inter_last + 1) // cols_per_tile
        has_full = f_hi > f_lo
        full_lo = torch.where(has_full, f_lo, hi)
        full_hi = torch.where(has_full, f_hi, hi)
    return torch.stack((lo, full_lo, full_hi, hi), dim=-1).to(torch.int32)


@dataclass(frozen=True)
class SequenceBands:
    """What a plan is built from: the batch's offsets and each sequence's band bounds."""

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    seq_q: torch.Tensor
    total_q: int
    total_k: int
    lo: torch.Tensor | None   # (B,) int64, per sequence; None: unbounded
    hi: torch.Tensor | None
    exact: bool

    @classmethod
    def build(cls, band: Band, exact: bool, cu_q: torch.Tensor, cu_k: torch.Tensor, seq_q: torch.Tensor,
              total_q: int, total_k: int) -> "SequenceBands":
        lq = (cu_q[1:] - cu_q[:-1]).long()
        lk = (cu_k[1:] - cu_k[:-1]).long()
        try:
            lo, hi = evaluate_bound(band.lo, lq, lk), evaluate_bound(band.hi, lq, lk)
        except UnsupportedBound:  # the sequences' keys bound it still; the kernel tests the mask
            lo = hi = None
            exact = False
        return cls(cu_q, cu_k, seq_q, total_q, total_k, lo, hi, exact)

    def row_plan(self, block_m: int, block_n: int, heads: int) -> "VarlenTileLists":
        """The forward's (and dQ pass's) plan: query tiles of block_m rows over KV tiles of block_n."""
        span = spans(self.seq_q, self.cu_q, self.cu_k, self.total_k, self.lo, self.hi)
        plan = VarlenTileLists.from_runs(runs(span, block_m, block_n, self.exact), span if self.exact else None,
                                         heads, -(-self.total_k // block_n))
        plan.column_plan = lambda: self.column_plan(block_n, block_m, heads)
        return plan

    def column_plan(self, block_n: int, block_m: int, heads: int) -> "VarlenTileLists":
        """The dK/dV pass's plan: KV tiles of block_n keys over query tiles of block_m."""
        seq_k = sequence_ids(self.cu_k, self.total_k)
        neg = (lambda x: None if x is None else -x)
        span = spans(seq_k, self.cu_k, self.cu_q, self.total_q, neg(self.hi), neg(self.lo))
        return VarlenTileLists.from_runs(runs(span, block_n, block_m, self.exact), span if self.exact else None,
                                         heads, -(-self.total_q // block_m))


@dataclass
class VarlenTileLists(TileLists):
    """TileLists whose rows are always one run (``runs``) and whose index lists are never
    walked (placeholders; ``kinds`` and ``visited`` read the runs). ``transposed`` builds the
    dK/dV plan from the keys' spans on first use; ``mostly_full_runs`` reads the share of
    partial tiles back once (a host sync, skipped while a CUDA graph is captured, where
    exact plans count as mostly full, as causal masks do)."""

    columns: int = 0  # column tiles (the other side's)
    column_plan: Callable[[], "VarlenTileLists"] | None = field(default=None, repr=False, compare=False)
    _share_known: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def from_runs(cls, tile_runs: torch.Tensor, span: torch.Tensor | None, heads: int,
                  columns: int) -> "VarlenTileLists":
        """Lists over (1, heads) whose runs are ``tile_runs`` (tiles, 4) over ``columns`` column
        tiles, and whose spans are ``span`` (exact) or None. Head-independent plans are expanded (stride 0), for kernels whose
        mask reads h."""
        tiles = tile_runs.shape[0]
        counts = torch.zeros((1, 1, tiles), dtype=torch.int32, device=tile_runs.device).expand(1, heads, tiles)
        index = torch.zeros((1, 1, tiles, 1), dtype=torch.int32, device=tile_runs.device).expand(1, heads, tiles, 1)
        plan = cls(counts, index, counts, index, columns=columns)
        plan.runs = tile_runs.view(1, 1, tiles, 4).expand(1, heads, tiles, 4)
        if span is not None:
            plan.spans = span.view(1, 1, 3, -1).expand(1, heads, 3, span.shape[1])
            plan.spans_exact = True
        return plan

    def kinds(self) -> torch.Tensor:
        """(1, heads, rows, columns) int8: 0 empty, 1 partial, 2 full (from the runs)."""
        r = self.runs.long()
        c = torch.arange(self.columns, device=r.device)
        lo, full_lo, full_hi, hi = (r[..., i, None] for i in range(4))
        visited = (c >= lo) & (c < hi)
        full = (c >= full_lo) & (c < full_hi)
        return (visited.to(torch.int8) + full.to(torch.int8))

    def visited(self) -> tuple[int, int]:
        """(full tiles, partial tiles) summed over every row tile (one host read)."""
        r = self.runs[:, :1].long()
        full, visited = torch.stack(((r[..., 2] - r[..., 1]).sum(), (r[..., 3] - r[..., 0]).sum())).tolist()
        return full, visited - full

    def transposed(self) -> "VarlenTileLists":
        if self._transposed is None:
            self._transposed = self.column_plan()
        return self._transposed

    @property
    def mostly_full_runs(self) -> bool:
        if not self._share_known:
            if self.runs.is_cuda and torch.cuda.is_current_stream_capturing():
                return self.spans_exact
            full, partial = self.visited()
            self.partial_share = partial / (full + partial) if full + partial else 1.0
            self._share_known = True
        return self.partial_share <= 0.25


__all__ = ["SequenceBands", "VarlenTileLists", "evaluate_bound", "runs", "sequence_ids", "spans"]
