"""Pass: fold the softmax scale into the exp2 domain.

The kernel evaluates ``exp2(x - m)`` (one MUFU op) instead of ``exp(s - m)``, so the score is
needed in log2 units: ``score_log2 = score_mod(sm_scale * qk) / ln 2``. When the score_mod is
affine in ``score`` (``a * score + t(b, h, i, j)``: identity, ALiBi, relative bias, ...), the
scale and 1/ln 2 fold into one host-side scalar ``qk_scale = sm_scale * log2(e)`` and the
kernel computes ``a * qk * qk_scale + t / ln 2``: one FMA per score in the common case.
"""
from __future__ import annotations

import sympy

from ..ir.expr import LN2, QK, QK_SCALE, SCORE, SM_SCALE, can_be_neg_inf
from ..ir.kernel import KernelIR
from .normalization import CHUNKED_LINEAR
from .pipeline import compiler_pass


def score_in_log2(score: sympy.Basic | None) -> sympy.Basic:
    f = SCORE if score is None else score
    slope = sympy.diff(f, SCORE)
    offset = sympy.expand(f - slope * SCORE) if not slope.has(SCORE) else None
    if offset is not None and not offset.has(SCORE):
        return slope * QK * QK_SCALE + offset / LN2
    return f.subs(SCORE, QK * SM_SCALE) / LN2


@compiler_pass(requires=("score_mask_split", "algorithm"), provides=("exp2_score",))
def fold_scale_exp2(ir: KernelIR) -> KernelIR:
    """Rewrite the score over the raw dot product ``qk`` in log2 units, folding the scale."""
    if ir.algorithm == CHUNKED_LINEAR:  # linear attention has no score and no scale to fold
        return ir
    s2 = score_in_log2(ir.score)
    return ir.replace(score_log2=s2, score_may_be_neg_inf=can_be_neg_inf(s2))
