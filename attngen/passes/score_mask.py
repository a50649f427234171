"""Pass: a score_mod that returns -inf under a condition is a mask in disguise.

FlexAttention code often writes ``torch.where(q_idx >= kv_idx, score, -inf)``. Left in the
score, the kernel would compute and discard every masked tile. Moved into the mask, the
geometry passes can recognise it (here: causal) and skip those tiles entirely.
"""
from __future__ import annotations

import sympy

from ..ir.expr import SCORE, depends_on, piecewise, reads_tensor
from ..ir.kernel import KernelIR
from ..ir.nodes import AndMask, MaskMod
from .pipeline import compiler_pass


def split_neg_inf(expr: sympy.Basic) -> tuple[sympy.Basic, sympy.Basic] | None:
    """``Piecewise(..., (-oo, True))`` -> (score without the -oo branch, where it is finite)."""
    if not isinstance(expr, sympy.Piecewise) or expr.args[-1].expr != -sympy.oo:
        return None
    pieces = expr.args[:-1]
    if not pieces or any(p.expr == -sympy.oo or depends_on(p.cond, SCORE) for p in pieces):
        return None
    keep = sympy.Or(*(p.cond for p in pieces))
    if len(pieces) == 1:
        score = pieces[0].expr
    else:
        score = piecewise(*[(p.expr, p.cond) for p in pieces[:-1]], (pieces[-1].expr, sympy.true))
    return score, keep


@compiler_pass(requires=("simplified",), provides=("score_mask_split",))
def extract_score_mask(ir: KernelIR) -> KernelIR:
    """Move ``where(cond, s, -inf)`` out of the score into the mask as ``cond``."""
    split = split_neg_inf(ir.score) if ir.score is not None else None
    if split is None:
        return ir
    score, keep = split
    params = tuple(p for p in ir.tensors if reads_tensor(keep, p.name))
    leaf = MaskMod(keep, f"{ir.score_name or 'score'}_finite", params)
    return ir.replace(score=score, mask=leaf if ir.mask is None else AndMask(ir.mask, leaf))
