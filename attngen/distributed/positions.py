"""Rewrite: a variant evaluated at global positions while a call sees one chunk of them.

Context parallelism computes a chunk of queries against a chunk of keys. Masks and score_mods
are defined on absolute positions (SEMANTICS.md), so the chunk's call must see the positions
its rows and keys have in the whole sequence. This is a pure ``Variant -> OffsetVariant``
rewrite, in the manner of passes/varlen.py, with the offsets as one small runtime tensor
``cp_positions`` (int32, 5 entries, read once per program, never per element):

    q_idx  -> q_idx + cp_positions[0]        (the query chunk's first global position)
    kv_idx -> kv_idx + cp_positions[1]       (the key chunk's first global position)
    Lq     -> cp_positions[2], Lkv -> cp_positions[3]     (the global lengths)
    h      -> h + cp_positions[4]            (the first query head: Ulysses' head groups)

applied to the score and to every mask leaf except neighborhoods (which stay structured and
are evaluated on a grid chosen so that its windows equal the global ones: halo.py).

``ag.document()`` is the exception by design: its ids are sharded with the sequence, so the
queries' ids are the query chunk's own (``document_ids[b, q_idx]``, unshifted) and the keys'
ids travel with the keys (``cp_kv_document_ids[b, kv_idx]``, unshifted). Every other tensor a
mod reads at a position is global (each rank holds all of it) and is read at the shifted
position.

Sinks and sigmoid's default bias depend on all keys of a row: the rewritten variant has no
sinks (merge.py adds them once, after the chunks are merged) and the bias -ln(Lkv) moves into
the score at the global Lkv.

The band that the original mask lies in (passes/geometry.py's analysis, at global positions)
is kept beside the rewrite: the runtime decides from it, on the host, which chunk pairs are
empty and which tiles of a pair to visit (chunk_plan.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.expr import H, KV_IDX, LKV, LQ, Q_IDX, SCORE, tensor_read
from ..ir.kernel import Band, KernelIR
from ..ir.nodes import (AndMask, Mask, MaskMod, Neighborhood, NotMask, OrMask, ScoreMod, Sigmoid, Softmax,
                        Variant)
from ..passes.errors import UnsupportedVariant
from ..passes.geometry import recognize_geometry
from ..passes.normalization import CHUNKED_LINEAR, lower_normalization
from ..passes.score_mask import extract_score_mask
from ..passes.simplify import simplify
from ..passes.tiles import mask_predicate
from ..passes.varlen import _band_of  # the same band analysis varlen's closed-form plans use

POSITIONS = "cp_positions"
KV_DOCUMENT_IDS = "cp_kv_document_ids"
RESERVED_TENSORS = (POSITIONS, KV_DOCUMENT_IDS)
Q_OFFSET, KV_OFFSET, GLOBAL_LQ, GLOBAL_LKV, HEAD_OFFSET = range(5)
DOCUMENT_IDS = "document_ids"


@dataclass(frozen=True)
class OffsetVariant:
    """The rewritten variant and what the runtime needs from the original.

    ``band``: the original mask lies in this band of global ``kv_idx - q_idx`` (bounds in the
    global ``Lq``/``Lkv``), None when nothing narrower than all keys is known. ``exact``: the
    mask is exactly that band (each row keeps one span of keys). ``sink``: the original adds
    ``sinks`` to every row's denominator. ``softmax``: False for sigmoid. ``neighborhood``:
    the original's neighborhood geometry, if any. ``local_score``: the original's score after
    its -inf conditions moved into the mask, unshifted (fast_paths.py runs it on pairs where
    positions change nothing), None without a score_mod."""

    variant: Variant
    band: Band | None
    exact: bool
    sink: bool
    softmax: bool
    neighborhood: Neighborhood | None
    local_score: sympy.Basic | None = None


def _offsets() -> dict[sympy.Symbol, sympy.Basic]:
    read = (lambda i: tensor_read(POSITIONS, (sympy.Integer(i),)))
    return {Q_IDX: Q_IDX + read(Q_OFFSET), KV_IDX: KV_IDX + read(KV_OFFSET), LQ: read(GLOBAL_LQ),
            LKV: read(GLOBAL_LKV), H: H + read(HEAD_OFFSET)}


def _document_read(read: sympy.Indexed, shift: dict) -> sympy.Basic:
    """A read of ``document_ids``: at the query's own row or at the key's, both unshifted."""
    b_index, position = read.indices
    b_index = _shift(b_index, shift)
    if position == Q_IDX:
        return tensor_read(DOCUMENT_IDS, (b_index, Q_IDX))
    if position == KV_IDX:
        return tensor_read(KV_DOCUMENT_IDS, (b_index, KV_IDX))
    raise UnsupportedVariant(
        f"context parallelism shards document_ids with the sequence, so it must be read at [b, q_idx] or "
        f"[b, kv_idx]; this variant reads {read}")


def _shift(expr: sympy.Basic, shift: dict) -> sympy.Basic:
    """``expr`` at global positions (see the module's docstring)."""
    if expr in shift:
        return shift[expr]
    if isinstance(expr, sympy.Indexed):
        if str(expr.base.label) == DOCUMENT_IDS:
            return _document_read(expr, shift)
        return expr.base[tuple(_shift(i, shift) for i in expr.indices)]
    if not expr.args:
        return expr
    return expr.func(*(_shift(a, shift) for a in expr.args))


def _shift_mask(mask: Mask, shift: dict, captured: dict) -> Mask:
    """The mask tree with every leaf but neighborhoods as a shifted MaskMod."""
    if isinstance(mask, Neighborhood):
        return mask
    if isinstance(mask, (AndMask, OrMask)):
        return type(mask)(_shift_mask(mask.a, shift, captured), _shift_mask(mask.b, shift, captured))
    if isinstance(mask, NotMask):
        return NotMask(_shift_mask(mask.a, shift, captured))
    name = mask.name if isinstance(mask, MaskMod) else type(mask).__name__.lower()
    return MaskMod.build(_shift(mask_predicate(mask), shift), f"{name}_cp", captured)


def offset_variant(variant: Variant) -> OffsetVariant:
    """The rewrite described in the module's docstring. Raises ``UnsupportedVariant`` for
    linear attention (its chunks carry a state, not a log-sum-exp) and for variants that
    already read a tensor named like the rewrite's own."""
    if not isinstance(variant, Variant):
        raise TypeError(f"context parallel: expected an ag.Variant, got {type(variant).__name__}")
    name = variant.label
    ir = lower_normalization(KernelIR.from_variant(variant))
    if ir.algorithm == CHUNKED_LINEAR:
        raise UnsupportedVariant(f"variant '{name}': linear attention has no context-parallel path (its chunks "
                                 "pass a recurrent state, not a log-sum-exp)")
    taken = sorted({p.name for p in variant.tensors()} & set(RESERVED_TENSORS))
    if taken:
        raise UnsupportedVariant(f"variant '{name}': tensor name(s) {', '.join(taken)} are reserved for "
                                 "context-parallel calls; rename them")
    ir = recognize_geometry(extract_score_mask(simplify(ir)))
    neighborhood = next((m for m in ir.mask.leaves() if isinstance(m, Neighborhood)), None) if ir.mask else None
    band, exact = (None, False) if ir.mask is None or neighborhood is not None else _band_of(ir.mask)
    if band is not None and band.lo is None and band.hi is None:
        band = None
    shift = _offsets()
    captured = variant.captured()
    mask = None if ir.mask is None else _shift_mask(ir.mask, shift, captured)
    score = None if ir.score is None else _shift(ir.score, shift)
    norm = variant.norm
    if isinstance(norm, Sigmoid) and norm.bias is None:  # -ln(Lkv) of the whole sequence
        score = (SCORE if score is None else score) - sympy.log(shift[LKV])
        norm = Sigmoid(0.0)
    sink = isinstance(norm, Softmax) and norm.sink
    if sink:
        norm = Softmax(False)
    score_mod = None if score is None else ScoreMod.build(score, f"{ir.score_name or 'score'}_cp", captured)
    rewritten = Variant(score=score_mod, mask=mask, norm=norm, name=f"{name}_cp")
    return OffsetVariant(rewritten, band, exact and band is not None, sink, isinstance(norm, Softmax), neighborhood,
                         ir.score)


__all__ = ["DOCUMENT_IDS", "GLOBAL_LKV", "GLOBAL_LQ", "HEAD_OFFSET", "KV_DOCUMENT_IDS", "KV_OFFSET", "OffsetVariant",
           "POSITIONS", "Q_OFFSET", "RESERVED_TENSORS", "offset_variant"]
