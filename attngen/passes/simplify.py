"""Pass: normalize the traced expressions with sympy before anything pattern-matches them."""
from __future__ import annotations

import sympy

from ..ir.expr import piecewise
from ..ir.kernel import KernelIR
from ..ir.nodes import AndMask, Mask, MaskMod, NotMask, OrMask
from .pipeline import compiler_pass


def simplify_expr(expr: sympy.Basic) -> sympy.Basic:
    """Fold nested ``Piecewise`` to the top and merge powers, keeping the form readable.

    Full ``sympy.simplify`` is avoided on purpose: it is slow, and it rewrites ``Piecewise``
    into forms (Heaviside, ITE) that later passes and the code printer do not expect.
    """
    try:
        expr = sympy.piecewise_fold(expr)
    except RecursionError:  # sympy cannot canonicalize some conditions; keep them as written
        return expr
    if isinstance(expr, sympy.Piecewise):
        pieces = [(sympy.powsimp(e), c) for e, c in expr.args]
        return piecewise(*pieces)
    return sympy.powsimp(expr)


def _simplify_mask(mask: Mask | None) -> Mask | None:
    if mask is None:
        return None
    if isinstance(mask, MaskMod):
        return MaskMod(sympy.simplify_logic(mask.pred) if mask.pred.atoms(sympy.Indexed) == set()
                       and len(mask.pred.atoms(sympy.core.relational.Relational)) <= 6 else mask.pred,
                       mask.name, mask.params, mask.captures, mask.fn)
    if isinstance(mask, (AndMask, OrMask)):
        return type(mask)(_simplify_mask(mask.a), _simplify_mask(mask.b))
    if isinstance(mask, NotMask):
        return NotMask(_simplify_mask(mask.a))
    return mask


@compiler_pass(provides=("simplified",))
def simplify(ir: KernelIR) -> KernelIR:
    """Simplify score and mask expressions (piecewise folding, power merging, boolean logic)."""
    return ir.replace(score=simplify_expr(ir.score) if ir.score is not None else None,
                      mask=_simplify_mask(ir.mask))
