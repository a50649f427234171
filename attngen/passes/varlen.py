"""Rewrite: a variant over variable-length sequences as one attention over the packed tokens.

FlashAttention's varlen convention packs B sequences of different lengths without padding:
q (total_q, Hq, D), k/v (total_k, Hkv, D), and ``cu_seqlens_q`` / ``cu_seqlens_k`` (B + 1,)
holding where each sequence starts. Read as one attention of (1, Hq, total_q, D) against
(1, Hkv, total_k, D), that is an ordinary variant whose mask is

    same sequence  AND  the variant's mask at the sequence's own coordinates

where, for a packed query row i and key j (S = the sequence of row i):

    b       -> seq_ids_q[i]                           (S)
    q_idx   -> i - cu_seqlens_q[S]                    (position inside the sequence)
    kv_idx  -> j - cu_seqlens_k[S]                    (clamped into [0, Lk_S - 1] inside
                                                       tensor indices, see below)
    Lq, Lkv -> cu_seqlens_q[S + 1] - cu_seqlens_q[S], and the same for k
    same sequence: cu_seqlens_k[S] <= j < cu_seqlens_k[S + 1]

and the score_mod gets the same substitution. Every term reads a per-row value (the row's
sequence and its offsets), so the kernels compute them once per query tile; no key-side
tensor is read. Keys of other sequences are masked by the first conjunct, so their score
is never used; but the kernels still evaluate a mask or score on them where a tile straddles
two sequences, so a user tensor indexed by ``kv_idx`` is read at the clamped position, which
lies inside the row's own sequence: the same reads the unpacked variant makes.

Sigmoid's default bias -ln(Lkv) becomes -ln(Lk_S) of the row's sequence, moved into the
score (bias 0), since the kernels take the bias as one host number.

Why a rewrite and no new kernels: the packed variant is a plain variant with a
run-time-classified mask, so the existing forward, backward, GQA, sinks, sigmoid, score
tensor gradients and custom ops serve it unchanged. What the generic classifier would cost
(evaluating the mask on every (row, key) pair, O(total_q * total_k)) is avoided by the
runtime (runtime/varlen_plan.py), which builds the tile runs and per-row spans in closed form
from ``cu_seqlens`` whenever the variant's mask is a band (causal, bottom-right causal,
sliding windows, band-shaped mask_mods, or no mask): ``VarlenVariant.band`` and ``exact``
say what it may assume.

This is a function ``Variant -> VarlenVariant``, not a registered pipeline pass: it applies
only to varlen calls, before the ordinary lowering (passes/pipeline.py) of its result. It
is pure, and reuses the pipeline's own simplify / extract_score_mask / recognize_geometry
on the input so that the band it reports is the one the lowering would find.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..ir.expr import B, KV_IDX, LKV, LQ, Q_IDX, SCORE, tensor_read
from ..ir.kernel import Band, KernelIR
from ..ir.nodes import RUNTIME, MaskMod, Neighborhood, ScoreMod, Sigmoid, Variant
from .errors import UnsupportedVariant
from .geometry import intersect, recognize_geometry
from .normalization import CHUNKED_LINEAR, lower_normalization
from .score_mask import extract_score_mask
from .simplify import simplify
from .tiles import conjuncts, mask_predicate

# The runtime tensors the packed variant reads besides the user's (runtime/varlen.py fills them).
CU_SEQLENS_Q = "varlen_cu_seqlens_q"   # (B + 1,) int32, the caller's cu_seqlens_q
CU_SEQLENS_K = "varlen_cu_seqlens_k"   # (B + 1,) int32, the caller's cu_seqlens_k
SEQ_IDS_Q = "varlen_seq_ids_q"         # (total_q,) int32, the sequence of each packed query
# ag.document()'s ids are (B, max_seqlen) in a varlen call; renamed so that the generic check
# for ``document_ids`` (shape (B, L) of the packed problem, i.e. (1, total)) does not apply
DOCUMENT_IDS = "varlen_document_ids"
INTERNAL_TENSORS = (CU_SEQLENS_Q, CU_SEQLENS_K, SEQ_IDS_Q, DOCUMENT_IDS)


@dataclass(frozen=True)
class VarlenVariant:
    """The packed variant and what the runtime may assume about its mask.

    ``band``: the variant's mask (inside one sequence) is contained in this band of
    ``kv_idx - q_idx``, with bounds in the sequence's ``Lq`` / ``Lkv`` (an unbounded band when
    nothing narrower is known). ``exact``: the mask is exactly that band, so each row keeps one
    span of keys and tiles inside every row's span need no mask code. ``renamed``: user
    tensor names the packed variant reads under another name."""

    variant: Variant
    band: Band
    exact: bool
    renamed: tuple[tuple[str, str], ...] = ()


def _sequence_terms() -> tuple[dict[sympy.Symbol, sympy.Basic], sympy.Basic, sympy.Basic, sympy.Basic]:
    """(substitutions for b, q_idx, Lq, Lkv; kv_idx outside and inside tensor indices; the
    same-sequence predicate), all over the row's sequence S = seq_ids_q[q_idx]."""
    seq = tensor_read(SEQ_IDS_Q, (Q_IDX,))
    q_start, q_end = tensor_read(CU_SEQLENS_Q, (seq,)), tensor_read(CU_SEQLENS_Q, (seq + 1,))
    k_start, k_end = tensor_read(CU_SEQLENS_K, (seq,)), tensor_read(CU_SEQLENS_K, (seq + 1,))
    simple = {B: seq, Q_IDX: Q_IDX - q_start, LQ: q_end - q_start, LKV: k_end - k_start}
    kv_local = KV_IDX - k_start
    kv_in_range = sympy.Max(0, sympy.Min(kv_local, k_end - k_start - 1))
    same_sequence = sympy.And(sympy.Ge(KV_IDX, k_start), sympy.Lt(KV_IDX, k_end))
    return simple, kv_local, kv_in_range, same_sequence


def _substitute(expr: sympy.Basic, simple: dict, kv_local: sympy.Basic, kv_in_range: sympy.Basic,
                in_index: bool = False) -> sympy.Basic:
    """``expr`` at the sequence's coordinates; ``kv_idx`` is clamped only inside tensor indices
    (elsewhere the unclamped form keeps differences such as kv_idx - q_idx cheap)."""
    if expr == KV_IDX:
        return kv_in_range if in_index else kv_local
    if expr in simple:
        return simple[expr]
    if isinstance(expr, sympy.Indexed):
        return expr.base[tuple(_substitute(i, simple, kv_local, kv_in_range, True) for i in expr.indices)]
    if not expr.args:
        return expr
    return expr.func(*(_substitute(a, simple, kv_local, kv_in_range, in_index) for a in expr.args))


def _rename_reads(expr: sympy.Basic, renamed: dict[str, str]) -> sympy.Basic:
    if not renamed:
        return expr
    return expr.replace(lambda e: isinstance(e, sympy.Indexed) and str(e.base.label) in renamed,
                        lambda e: tensor_read(renamed[str(e.base.label)], e.indices))


def _band_of(mask) -> tuple[Band, bool]:
    """The band containing a lowered mask, and whether the mask is exactly that band."""
    if mask is None:
        return Band(), True
    bands = [p for p in conjuncts(mask) if isinstance(p, Band)]
    band = Band()
    for part in bands:
        band = intersect(band, part)
    return band, len(bands) == len(conjuncts(mask))


def varlen_variant(variant: Variant) -> VarlenVariant:
    """The packed variant of ``variant`` (see the module's docstring). Raises
    ``UnsupportedVariant`` for neighborhood and linear variants and for variants that already
    read a tensor with one of the names in ``INTERNAL_TENSORS``."""
    if not isinstance(variant, Variant):
        raise TypeError(f"varlen: expected an ag.Variant, got {type(variant).__name__}")
    name = variant.label
    ir = lower_normalization(KernelIR.from_variant(variant))
    if ir.algorithm == CHUNKED_LINEAR:
        raise UnsupportedVariant(
            f"variant '{name}': linear attention has no varlen path; run each sequence's prefill with "
            "attn.prefill(...) (its state carries on with attn.step)")
    if variant.mask is not None and any(isinstance(m, Neighborhood) for m in variant.mask.leaves()):
        raise UnsupportedVariant(
            f"variant '{name}': neighborhood masks are defined on a grid (spatial_shape) that every sequence "
            "would need to share, which a variable-length batch does not have; pad to one grid and call attn(...)")
    taken = sorted({p.name for p in variant.tensors()} & set(INTERNAL_TENSORS))
    if taken:
        raise UnsupportedVariant(f"variant '{name}': tensor name(s) {', '.join(taken)} are reserved for varlen calls; "
                                 "rename them")
    # the pipeline's first passes, so that the band below is the one lowering finds
    ir = recognize_geometry(extract_score_mask(simplify(ir)))
    band, exact = _band_of(ir.mask)

    renamed = {p.name: DOCUMENT_IDS for p in variant.tensors() if p.name == "document_ids" and p.source == RUNTIME}
    simple, kv_local, kv_in_range, same_sequence = _sequence_terms()

    def packed(expr: sympy.Basic) -> sympy.Basic:
        return _rename_reads(_substitute(expr, simple, kv_local, kv_in_range), renamed)

    inner = mask_predicate(ir.mask) if ir.mask is not None else sympy.true
    captured = variant.captured()
    mask = MaskMod.build(sympy.And(same_sequence, packed(inner)), "same_sequence", captured)
    score = ir.score
    norm = variant.norm
    if score is not None:
        score = packed(score)
    if isinstance(norm, Sigmoid) and norm.bias is None:
        # -ln(Lkv) of the row's sequence; Max(., 1): an empty sequence's rows keep no key anyway
        score = (SCORE if score is None else score) - sympy.log(sympy.Max(simple[LKV], 1))
        norm = Sigmoid(0.0)
    score_mod = None if score is None else ScoreMod.build(score, f"{ir.score_name or 'score'}_varlen", captured)
    packed_variant = Variant(score=score_mod, mask=mask, norm=norm, name=f"{name}_varlen")
    return VarlenVariant(packed_variant, band, exact, tuple(sorted(renamed.items())))


__all__ = ["CU_SEQLENS_K", "CU_SEQLENS_Q", "DOCUMENT_IDS", "INTERNAL_TENSORS", "SEQ_IDS_Q", "VarlenVariant",
           "varlen_variant"]
