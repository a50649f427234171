"""Symbols and expression helpers shared by every stage.

Score and mask functions are kept as sympy expressions over a fixed set of symbols:

- ``score``: the scaled dot product ``scale * q.k`` a score_mod receives (real);
- ``b``, ``h``, ``q_idx``, ``kv_idx``: batch, query head, query and key positions
  (non-negative integers);
- ``Lq``, ``Lkv``: sequence lengths, used by geometry such as bottom-right causal;
- after lowering, ``qk`` (the raw dot product), ``sm_scale`` and ``qk_scale``
  (``sm_scale * log2(e)``).

Runtime tensors appear as ``sympy.Indexed`` reads (``slopes[h]``). Integer floor
division is the ``FloorDiv`` function below because sympy has no such node; ``%`` is
``sympy.Mod``, which already floors like Python and torch.
"""
from __future__ import annotations

import keyword

import sympy
from sympy.core.logic import fuzzy_and

SCORE = sympy.Symbol("score", real=True)
B = sympy.Symbol("b", integer=True, nonnegative=True)
H = sympy.Symbol("h", integer=True, nonnegative=True)
Q_IDX = sympy.Symbol("q_idx", integer=True, nonnegative=True)
KV_IDX = sympy.Symbol("kv_idx", integer=True, nonnegative=True)
LQ = sympy.Symbol("Lq", integer=True, positive=True)
LKV = sympy.Symbol("Lkv", integer=True, positive=True)
QK = sympy.Symbol("qk", real=True)
SM_SCALE = sympy.Symbol("sm_scale", positive=True)
QK_SCALE = sympy.Symbol("qk_scale", positive=True)

INDEX_SYMBOLS = (B, H, Q_IDX, KV_IDX)
SYMBOLS = {s.name: s for s in (SCORE, B, H, Q_IDX, KV_IDX, LQ, LKV, QK, SM_SCALE, QK_SCALE)}
RESERVED_NAMES = frozenset(SYMBOLS) | {"oo", "True", "False", "pi", "E"}

LN2 = sympy.log(2)


class InNeighborhood(sympy.logic.boolalg.BooleanFunction):
    """``InNeighborhood(q_idx, kv_idx)``: the variant's neighborhood geometry as an opaque
    element-wise predicate, for masks that combine it with ``|`` or ``~`` (the geometry's
    parameters and the grid come from the kernel, not from the expression)."""

    nargs = 2

    @classmethod
    def eval(cls, q, kv):  # noqa: D102 - sympy hook; never folds
        return None


class FloorDiv(sympy.Function):
    """Floor division ``a // b`` with Python/torch semantics (rounds toward -inf)."""

    nargs = 2

    @classmethod
    def eval(cls, a, b):  # noqa: D102 - sympy hook
        if b == 0:
            raise ZeroDivisionError("integer division by zero in a score or mask function")
        if a.is_Number and b.is_Number:
            return sympy.floor(a / b)
        if b == 1 and a.is_integer:
            return a
        return None

    def _eval_is_integer(self):
        return True

    def _eval_is_nonnegative(self):
        a, b = self.args
        return fuzzy_and([a.is_nonnegative, b.is_positive])


def is_boolean(e: sympy.Basic) -> bool:
    """Whether ``e`` is a truth value (a comparison or logic), not a number.

    ``isinstance(e, sympy.Boolean)`` is not enough: sympy's ``Symbol`` subclasses it.
    """
    from sympy.core.relational import Relational
    from sympy.logic.boolalg import BooleanAtom, BooleanFunction

    return isinstance(e, (Relational, BooleanFunction, BooleanAtom))


def piecewise(*pieces: tuple[sympy.Basic, sympy.Basic]) -> sympy.Basic:
    """``sympy.Piecewise``, falling back to an unevaluated one where sympy's argument
    canonicalization recurses forever (seen with ``Eq(Mod(q_idx, 7) - 2*h, 2*b + 3*Mod(q_idx, 5))``)."""
    try:
        return sympy.Piecewise(*pieces)
    except RecursionError:
        return sympy.Piecewise(*pieces, evaluate=False)


def tensor_read(name: str, indices: tuple[sympy.Expr, ...]) -> sympy.Indexed:
    """The IR node for ``name[indices]`` (a read of a runtime or captured tensor)."""
    return sympy.IndexedBase(name, real=True)[indices]


def reads_tensor(expr: sympy.Basic, name: str) -> bool:
    """Whether ``expr`` reads the tensor ``name``."""
    return any(str(r.base.label) == name for r in expr.atoms(sympy.Indexed))


def exact_relation(rel: sympy.Basic) -> tuple[sympy.Basic, sympy.Basic]:
    """A comparison as (lhs', rhs') free of rational coefficients, for exact evaluation.

    sympy may present an integer comparison such as ``3*kv_idx <= q_idx + 1`` with
    rational coefficients (``kv_idx <= q_idx/3 + 1/3``); evaluated in floating point that
    can round the wrong way at equality. Multiplying both sides by the (positive) common
    denominator restores integer arithmetic: ``3*kv_idx - q_idx - 1 <= 0``.
    """
    lhs, rhs = rel.args
    fractions = [r for r in (lhs - rhs).atoms(sympy.Rational) if r.q != 1]
    if not fractions or lhs.has(sympy.oo, -sympy.oo) or rhs.has(sympy.oo, -sympy.oo):
        return lhs, rhs
    num, den = sympy.fraction(sympy.together(lhs - rhs))
    if den.is_Integer and den > 0:
        return sympy.expand(num), sympy.Integer(0)
    return lhs, rhs


def tensor_reads(expr: sympy.Basic) -> list[sympy.Indexed]:
    """Every tensor read in ``expr``, in a deterministic order."""
    return sorted(expr.atoms(sympy.Indexed), key=sympy.default_sort_key)


def tensor_arities(expr: sympy.Basic) -> dict[str, int]:
    """Map each tensor named in ``expr`` to the number of indices it is read with."""
    arities: dict[str, int] = {}
    for read in tensor_reads(expr):
        name = str(read.base.label)
        n = len(read.indices)
        if arities.setdefault(name, n) != n:
            raise ValueError(f"tensor '{name}' is indexed with {arities[name]} and with {n} indices")
    return arities


def check_tensor_name(name: str, what: str = "tensor") -> str:
    """Reject names that would collide with the IR's own symbols or are not identifiers."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{what} name {name!r} is not a Python identifier")
    if name in RESERVED_NAMES or name.startswith("_"):
        raise ValueError(f"{what} name {name!r} is reserved by attngen; rename it")
    return name


def depends_on(expr: sympy.Basic, *symbols: sympy.Symbol) -> bool:
    """Whether ``expr`` reads any of ``symbols`` (through tensor indices too)."""
    free = expr.free_symbols
    return any(s in free for s in symbols)


def undefined_value(expr: sympy.Basic) -> str | None:
    """Why ``expr`` has no value a kernel could compute, or None if it has one.

    Folding constants in sympy can produce NaN (``oo - oo``, ``0*oo``), the unsigned
    infinity ``zoo`` (``1/0``, ``log(0)``) and ranges (``sin(oo)`` is ``AccumBounds(-1, 1)``).
    None is a score or a mask anyone means (torch would give NaN or an infinity whose sign
    sympy has lost), and none has a text form, so the tracer and the parser refuse them up
    front instead of failing later.
    """
    if expr.has(sympy.S.NaN):
        return "NaN (e.g. inf - inf or 0 * inf among constants)"
    if expr.has(sympy.S.ComplexInfinity):
        return "an infinity of unknown sign (e.g. 1/0 or log(0) of a constant)"
    if expr.atoms(sympy.AccumBounds):
        return "a range instead of a value (e.g. sin or cos of an infinity, NaN in torch)"
    return None


def can_be_neg_inf(expr: sympy.Basic) -> bool:
    """Conservatively, whether ``expr`` may evaluate to -inf (it contains -oo)."""
    return expr.has(sympy.S.NegativeInfinity) or expr.has(sympy.S.ComplexInfinity)
