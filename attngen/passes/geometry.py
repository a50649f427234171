"""Pass: recognise band geometry and lower built-in 1-D masks to ``Band`` nodes.

``causal`` and ``sliding_window`` lower directly. A mask_mod's predicate is split along
``&``, ``|`` and ``~``; each comparison that is linear in ``kv_idx - q_idx`` with a
constant offset (``q_idx >= kv_idx``, ``q_idx - kv_idx <= W``, ``Eq(q_idx, kv_idx)``) becomes
a Band, so user-written causal and window masks get closed-form tile ranges too. Bands
under ``&`` merge into one (intersection of intervals).
"""
from __future__ import annotations

import sympy
from sympy.core.relational import Relational

from ..ir.expr import KV_IDX, LKV, LQ, Q_IDX, reads_tensor
from ..ir.kernel import Band, KernelIR, lower_geometry_leaf
from ..ir.nodes import AndMask, Mask, MaskMod, NotMask, OrMask
from .pipeline import compiler_pass


def relation_to_band(rel: Relational) -> Mask | None:
    """A comparison linear in ``kv_idx - q_idx`` as a Band (``!=`` as ``~Band``), else None."""
    d = sympy.expand(rel.lhs - rel.rhs)
    a_kv, a_q = d.coeff(KV_IDX), d.coeff(Q_IDX)
    rest = sympy.expand(d - a_kv * KV_IDX - a_q * Q_IDX)
    if a_kv not in (1, -1) or a_q != -a_kv or not rest.free_symbols <= {LQ, LKV}:
        return None
    if rest.atoms(sympy.Float) or not all(t.is_integer for t in sympy.Add.make_args(rest)):
        return None
    # rel is: a_kv * (kv - q) + rest  OP  0, i.e. t OP' c with t = kv - q
    c = -rest * a_kv
    op = type(rel)
    if a_kv == -1:  # multiplying by -1 flips the direction
        op = {sympy.Le: sympy.Ge, sympy.Lt: sympy.Gt, sympy.Ge: sympy.Le, sympy.Gt: sympy.Lt}.get(op, op)
    if op is sympy.Le:
        return Band(None, c)
    if op is sympy.Lt:
        return Band(None, c - 1)
    if op is sympy.Ge:
        return Band(c, None)
    if op is sympy.Gt:
        return Band(c + 1, None)
    if op is sympy.Eq:
        return Band(c, c)
    if op is sympy.Ne:
        return NotMask(Band(c, c))
    return None


def _from_predicate(pred: sympy.Basic, leaf: MaskMod) -> Mask:
    """Split a predicate into a mask tree, turning linear comparisons into Bands."""
    if isinstance(pred, sympy.And):
        parts = [_from_predicate(a, leaf) for a in pred.args]
        return _fold(AndMask, parts)
    if isinstance(pred, sympy.Or):
        return _fold(OrMask, [_from_predicate(a, leaf) for a in pred.args])
    if isinstance(pred, sympy.Not):
        return NotMask(_from_predicate(pred.args[0], leaf))
    if isinstance(pred, Relational):
        band = relation_to_band(pred)
        if band is not None:
            return band
    if pred == leaf.pred:
        return leaf
    params = tuple(p for p in leaf.params if reads_tensor(pred, p.name))
    return MaskMod(pred, leaf.name, params, leaf.captures, leaf.fn)


def _fold(cls, parts: list[Mask]) -> Mask:
    # Bands first, so that AndMask(Band, Band) merges below.
    parts = sorted(parts, key=lambda m: not isinstance(m, Band))
    out = parts[0]
    for p in parts[1:]:
        out = cls(out, p)
    return out


def _merge(mask: Mask) -> Mask:
    if isinstance(mask, AndMask):
        a, b = _merge(mask.a), _merge(mask.b)
        if isinstance(a, Band) and isinstance(b, Band):
            return intersect(a, b)
        if isinstance(b, Band) and isinstance(a, AndMask) and isinstance(a.a, Band):
            return AndMask(intersect(a.a, b), a.b)
        return AndMask(a, b)
    if isinstance(mask, OrMask):
        return OrMask(_merge(mask.a), _merge(mask.b))
    if isinstance(mask, NotMask):
        return NotMask(_merge(mask.a))
    return mask


def intersect(a: Band, b: Band) -> Band:
    def pick(x, y, fn):
        if x is None:
            return y
        if y is None:
            return x
        return fn(x, y)

    return Band(pick(a.lo, b.lo, sympy.Max), pick(a.hi, b.hi, sympy.Min))


def _lower(mask: Mask | None) -> Mask | None:
    if mask is None:
        return None
    if isinstance(mask, (AndMask, OrMask)):
        return type(mask)(_lower(mask.a), _lower(mask.b))
    if isinstance(mask, NotMask):
        return NotMask(_lower(mask.a))
    if isinstance(mask, MaskMod):
        return _from_predicate(mask.pred, mask)
    return lower_geometry_leaf(mask)


@compiler_pass(requires=("score_mask_split",), provides=("geometry",))
def recognize_geometry(ir: KernelIR) -> KernelIR:
    """Lower causal/sliding_window and band-shaped mask_mod comparisons to merged Bands."""
    mask = _lower(ir.mask)
    return ir.replace(mask=_merge(mask) if mask is not None else None)
