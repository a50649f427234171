"""Chunk pairs whose global positions change nothing run the variant's own fastest kernels.

The offset kernel (chunk_kernel.py) serves every pair through tile lists. Two kinds of pair,
which are nearly all of the work of causal context parallelism, compute the same thing
without any offset, as long as the score_mod reads no position (``q_idx``, ``kv_idx``, ``Lq``,
``Lkv``) and, under Ulysses' head offset, no head:

- a *full* pair (the mask is exactly a band and keeps every key of the chunk for every row,
  or there is no mask): the score alone, no mask, runs the dense kernel (closed-form ranges,
  the two-halves forward, warp specialization where the GPU has it);
- a *diagonal* pair (the query and key chunks are the same positions) of a mask that is
  exactly a band with constant bounds (causal, windows): ``kv - q`` is the same locally and
  globally, so the band kernel runs it with its closed-form ranges.

Sigmoid's default bias -ln(Lkv) depends on the global length: sigmoid takes these paths only
with an explicit bias. Sinks are never in these kernels (merge.py adds them once).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..compiler import compile as compile_variant
from ..ir.expr import H, KV_IDX, LKV, LQ, Q_IDX
from ..ir.nodes import MaskMod, ScoreMod, Sigmoid, Softmax, Variant
from ..runtime.attention import CompiledAttention
from .chunk_kernel import OffsetKernel
from .chunk_plan import PairGeometry

POSITION_SYMBOLS = frozenset({Q_IDX, KV_IDX, LQ, LKV})


def _reads(expr: sympy.Basic | None, symbols: frozenset) -> bool:
    """Whether ``expr`` depends on any of ``symbols`` (tensor indices included)."""
    return expr is not None and bool(expr.free_symbols & symbols)


@dataclass(frozen=True)
class PairKernels:
    """The kernels a pair may run on: the offset kernel always, the dense and diagonal ones
    where the module's docstring allows them (None otherwise)."""

    offset: OffsetKernel
    dense: CompiledAttention | None
    diagonal: CompiledAttention | None
    score_reads_head: bool

    @classmethod
    def build(cls, offset: OffsetKernel) -> "PairKernels":
        rewrite = offset.rewrite
        original = offset.original
        length_bias = isinstance(original.norm, Sigmoid) and original.norm.bias is None  # -ln(global Lkv)
        if rewrite.neighborhood is not None or length_bias or _reads(rewrite.local_score, POSITION_SYMBOLS):
            return cls(offset, None, None, False)
        captured = original.captured()
        score = (ScoreMod.build(rewrite.local_score, "score_local", captured)
                 if rewrite.local_score is not None else None)
        norm = Softmax(False) if rewrite.softmax else original.norm
        dense = compile_variant(Variant(score=score, norm=norm, name=f"{original.label}_cp_dense"))
        diagonal = None
        band = rewrite.band
        constant = band is not None and all(b is None or sympy.sympify(b).is_Integer for b in (band.lo, band.hi))
        if rewrite.exact and constant:
            mask = MaskMod.build(band.predicate(), "band", captured)
            diagonal = compile_variant(Variant(score=score, mask=mask, norm=norm, name=f"{original.label}_cp_diag"))
        return cls(offset, dense, diagonal, _reads(rewrite.local_score, frozenset({H})))

    def choose(self, geometry: PairGeometry) -> CompiledAttention:
        """The kernel for a pair the mask does not empty."""
        if geometry.head_offset and self.score_reads_head:
            return self.offset
        rewrite = self.offset.rewrite
        no_mask = rewrite.variant.mask is None
        if self.dense is not None and (no_mask or (rewrite.exact and self.offset.pair(geometry).full)):
            return self.dense
        diagonal = geometry.q_offset == geometry.kv_offset and geometry.q_len == geometry.kv_len
        if self.diagonal is not None and diagonal:
            return self.diagonal
        return self.offset


__all__ = ["PairKernels"]
