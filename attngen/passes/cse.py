"""Pass: common subexpressions of the score and the partial-tile mask become temporaries.

Tensor reads and index arithmetic used by both the score and the mask are computed once.
Code generation later hoists temporaries that do not depend on ``kv_idx`` or ``qk`` out of
the KV loop (they are per query row).
"""
from __future__ import annotations

import sympy

from ..ir.kernel import KernelIR
from .pipeline import compiler_pass


@compiler_pass(requires=("exp2_score", "tile_plan"), provides=("cse",))
def common_subexpressions(ir: KernelIR) -> KernelIR:
    """Extract repeated subexpressions of score_log2 and the tile predicate (sympy.cse)."""
    if ir.score_log2 is None:  # linear attention: no score expression, nothing to share
        return ir
    exprs = [ir.score_log2] + ([ir.tile_pred] if ir.tile_pred is not None else [])
    temps, reduced = sympy.cse(exprs, symbols=sympy.numbered_symbols("cse"), order="canonical")
    # Give each temporary its expression's integer-ness and sign, so later passes and the
    # printer treat it like what it stands for (integer division, transcendental casts).
    typed, rename = [], {}
    for sym, expr in temps:
        expr = expr.xreplace(rename)
        new = sympy.Symbol(sym.name, integer=expr.is_integer or None, nonnegative=expr.is_nonnegative or None)
        rename[sym] = new
        typed.append((new, expr))
    reduced = [e.xreplace(rename) for e in reduced]
    return ir.replace(temps=tuple(typed), score_log2=reduced[0],
                      tile_pred=reduced[1] if ir.tile_pred is not None else None)
