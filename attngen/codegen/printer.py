"""Print IR expressions as Triton code.

The printer tracks a coarse type per subexpression (int, float, bool, or unknown for
tensor reads, whose dtype is only known at launch) because Python/torch semantics differ
from Triton's in two places: integer ``//`` and ``%`` round toward -inf in torch and toward
zero in Triton, and transcendental functions need float arguments. Where operands are
known non-negative the plain operators are emitted; otherwise a small helper is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy
from sympy.core.relational import Relational

import ast

from ..ir.expr import FloorDiv, exact_relation

INT, FLOAT, BOOL, ANY = "int", "float", "bool", "any"
FLOAT_BOOL = "float_bool"  # the result of comparing floats; see _print_And


# Neighborhood geometry in scope wherever an element-wise neighborhood test is printed
NA_GEOMETRY_ARGS = ("S0, S1, S2, K0, K1, K2, DIL0, DIL1, DIL2, STR0, STR1, STR2, "
                    "CAUSAL0, CAUSAL1, CAUSAL2")


@dataclass
class TritonPrinter:
    """Prints one scope's expressions; ``names`` maps symbols to variables in scope."""

    names: dict[sympy.Symbol, str]
    helpers: set[str] = field(default_factory=set)
    kinds: dict[sympy.Symbol, str] = field(default_factory=dict)

    def code(self, expr: sympy.Basic) -> str:
        return self._p(expr)[0]

    def define(self, sym: sympy.Symbol, expr: sympy.Basic) -> str:
        """Code for a temporary ``sym = expr``; later uses of ``sym`` get expr's type."""
        code, kind = self._p(expr)
        self.kinds[sym] = kind
        return code

    # -- dispatch
    def _p(self, e: sympy.Basic) -> tuple[str, str]:
        if e in self.names:
            kind = self.kinds.get(e) or (INT if e.is_integer else FLOAT)
            return self.names[e], kind
        if e is sympy.true or e is sympy.false:
            return ("True" if e is sympy.true else "False"), BOOL
        if e == sympy.oo:
            return 'float("inf")', FLOAT
        if e == -sympy.oo:
            return 'float("-inf")', FLOAT
        if e.is_Integer:
            return str(int(e)), INT
        if e.is_Number or (not e.free_symbols and not e.atoms(sympy.Indexed) and e.is_real):
            return repr(float(e)), FLOAT
        if isinstance(e, sympy.Symbol):
            raise ValueError(f"symbol '{e}' is not available in this kernel scope")
        method = getattr(self, "_print_" + type(e).__name__, None)
        if method is None:
            for cls in type(e).__mro__:
                method = getattr(self, "_print_" + cls.__name__, None)
                if method is not None:
                    break
        if method is None:
            raise NotImplementedError(f"cannot generate Triton code for {type(e).__name__}: {e}")
        return method(e)

    def _float(self, e: sympy.Basic) -> str:
        code, kind = self._p(e)
        return code if kind == FLOAT else f"({code}).to(tl.float32)"

    @staticmethod
    def _join_kind(kinds: list[str]) -> str:
        if FLOAT in kinds:
            return FLOAT
        if ANY in kinds:
            return ANY
        return INT

    @staticmethod
    def _wrap(code: str) -> str:
        """Parenthesize ``code`` unless it is a single operand (name, number, call, ...)."""
        try:
            node = ast.parse(code, mode="eval").body
        except SyntaxError:
            return f"({code})"
        atomic = (ast.Name, ast.Constant, ast.Call, ast.Attribute, ast.Subscript)
        if isinstance(node, atomic) and not code.startswith("-"):
            return code
        if code.startswith("(") and code.endswith(")"):
            depth = 0
            for i, ch in enumerate(code):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0 and i < len(code) - 1:
                    break
            else:
                return code  # already one parenthesized group
        return f"({code})"

    # -- arithmetic
    def _print_Add(self, e: sympy.Add) -> tuple[str, str]:
        terms = e.as_ordered_terms()
        out, kinds = "", []
        for i, t in enumerate(terms):
            coeff, rest = t.as_coeff_Mul()
            if coeff.is_Number and coeff < 0:
                code, kind = self._p(-t)
                sep = " - " if i else "-"
                code = self._wrap(code) if isinstance(-t, sympy.Add) else code
            else:
                code, kind = self._p(t)
                sep = " + " if i else ""
            out += sep + code
            kinds.append(kind)
        return out, self._join_kind(kinds)

    def _print_Mul(self, e: sympy.Mul) -> tuple[str, str]:
        # Constant factors (including 1/ln 2 from the exp2 pass) fold into one literal.
        const, factors = sympy.Integer(1), []
        for f in sympy.Mul.make_args(e):
            if not f.free_symbols and not f.atoms(sympy.Indexed) and f.is_real:
                const *= f
            else:
                factors.append(f)
        sign = ""
        if const.is_number and const < 0:
            sign, const = "-", -const
        num, den, kinds = [], [], []
        if const != 1:
            num.append(str(int(const)) if const.is_Integer else repr(float(const)))
            kinds.append(INT if const.is_Integer else FLOAT)
        for f in factors:
            if f.is_Pow and f.exp.is_Number and f.exp < 0:
                code, _ = self._p(f.base ** -f.exp)
                den.append(self._wrap(code))
                kinds.append(FLOAT)  # true division, as in torch
            else:
                code, kind = self._p(f)
                num.append(self._wrap(code))
                kinds.append(kind)
        code = " * ".join(num) if num else "1.0"
        if den:
            code += " / " + (den[0] if len(den) == 1 else "(" + " * ".join(den) + ")")
        return sign + (self._wrap(code) if sign and " " in code else code), self._join_kind(kinds)

    def _print_Pow(self, e: sympy.Pow) -> tuple[str, str]:
        base, exp = e.base, e.exp
        if base == 2:
            return f"tl.exp2({self._float(exp)})", FLOAT
        if base == sympy.E:
            return f"tl.exp({self._float(exp)})", FLOAT
        if exp == sympy.Rational(1, 2):
            return f"tl.sqrt({self._float(base)})", FLOAT
        if exp == -sympy.Rational(1, 2):
            return f"tl.rsqrt({self._float(base)})", FLOAT
        if exp.is_Integer and 0 < exp <= 4:
            code, kind = self._p(base)
            code = self._wrap(code)
            return " * ".join([code] * int(exp)), kind
        if exp.is_Integer and exp < 0:
            return f"1.0 / {self._wrap(self._p(base ** -exp)[0])}", FLOAT
        return f"tl.exp2({self._float(exp)} * tl.log2({self._float(base)}))", FLOAT

    def _print_FloorDiv(self, e: FloorDiv) -> tuple[str, str]:
        (a, ka), (b, kb) = self._p(e.args[0]), self._p(e.args[1])
        if FLOAT in (ka, kb):
            return f"tl.floor({a} / {b})", FLOAT
        if e.args[0].is_nonnegative and e.args[1].is_positive:
            return f"({self._wrap(a)} // {self._wrap(b)})", INT
        self.helpers.add("floordiv")
        return f"_floordiv({a}, {b})", INT

    def _print_Mod(self, e: sympy.Mod) -> tuple[str, str]:
        (a, ka), (b, kb) = self._p(e.args[0]), self._p(e.args[1])
        if FLOAT in (ka, kb):
            return f"({a} - {self._wrap(b)} * tl.floor({a} / {b}))", FLOAT
        if e.args[0].is_nonnegative and e.args[1].is_positive:
            return f"({self._wrap(a)} % {self._wrap(b)})", INT
        self.helpers.add("floormod")
        return f"_floormod({a}, {b})", INT

    # -- functions
    def _fn(self, name: str, e: sympy.Basic) -> tuple[str, str]:
        return f"{name}({self._float(e.args[0])})", FLOAT

    def _print_exp(self, e): return self._fn("tl.exp", e)
    def _print_log(self, e): return self._fn("tl.log", e)
    def _print_sin(self, e): return self._fn("tl.sin", e)
    def _print_cos(self, e): return self._fn("tl.cos", e)

    def _print_tan(self, e):
        x = self._float(e.args[0])
        return f"(tl.sin({x}) / tl.cos({x}))", FLOAT

    def _print_tanh(self, e):
        # tanh(x) = 2 sigmoid(2x) - 1: one exp, and Triton has no portable tanh
        return f"(2.0 * tl.sigmoid(2.0 * {self._wrap(self._float(e.args[0]))}) - 1.0)", FLOAT

    def _print_floor(self, e):
        code, kind = self._p(e.args[0])
        return (code, INT) if kind == INT else (f"tl.floor({code})", FLOAT)

    def _print_ceiling(self, e):
        code, kind = self._p(e.args[0])
        return (code, INT) if kind == INT else (f"tl.ceil({code})", FLOAT)

    def _print_Abs(self, e):
        code, kind = self._p(e.args[0])
        return f"tl.abs({code})", kind

    def _minmax(self, name: str, e) -> tuple[str, str]:
        parts = [self._p(a) for a in sympy.Tuple(*e.args).args]
        code, kinds = parts[0][0], [parts[0][1]]
        for c, k in parts[1:]:
            code = f"{name}({code}, {c})"
            kinds.append(k)
        return code, self._join_kind(kinds)

    def _print_Min(self, e): return self._minmax("tl.minimum", e)
    def _print_Max(self, e): return self._minmax("tl.maximum", e)

    def _print_Piecewise(self, e: sympy.Piecewise) -> tuple[str, str]:
        *pieces, last = e.args
        if last.cond is not sympy.true:
            raise NotImplementedError(f"Piecewise without a default branch: {e}")
        code, kind = self._p(last.expr)
        kinds = [kind]
        for p in reversed(pieces):
            val, k = self._p(p.expr)
            kinds.append(k)
            code = f"tl.where({self.code(p.cond)}, {val}, {code})"
        return code, self._join_kind(kinds)

    # -- logic
    _OPS = {"StrictLessThan": "<", "LessThan": "<=", "StrictGreaterThan": ">", "GreaterThan": ">=",
            "Equality": "==", "Unequality": "!="}

    def _print_Relational(self, e: Relational) -> tuple[str, str]:
        op = self._OPS[type(e).__name__]
        lhs, rhs = exact_relation(e)
        (a, ka), (b, kb) = self._p(lhs), self._p(rhs)
        return f"({a} {op} {b})", FLOAT_BOOL if FLOAT in (ka, kb) or ANY in (ka, kb) else BOOL

    def _operand(self, e: sympy.Basic) -> str:
        # The Triton interpreter cannot combine a float comparison on per-program scalars
        # with a block of booleans ("ufunc 'bitwise_and' not supported"); comparing the
        # result with 0 gives it an ordinary boolean type. Compiled code is unaffected.
        code, kind = self._p(e)
        return f"({code} != 0)" if kind == FLOAT_BOOL else code

    def _bool(self, op: str, e) -> tuple[str, str]:
        return "(" + f" {op} ".join(self._operand(a) for a in e.args) + ")", BOOL

    def _print_And(self, e): return self._bool("&", e)
    def _print_Or(self, e): return self._bool("|", e)
    def _print_Xor(self, e): return self._bool("^", e)

    def _print_Not(self, e):
        return f"~{self._wrap(self._operand(e.args[0]))}", BOOL

    # derivatives of abs/min/max/where (backward kernels)
    def _print_Heaviside(self, e):
        x = self._float(e.args[0])
        half = self._float(e.args[1]) if len(e.args) > 1 else "0.5"
        return f"tl.where({x} > 0, 1.0, tl.where({x} < 0, 0.0, {half}))", FLOAT

    def _print_sign(self, e):
        x = self._float(e.args[0])
        return f"tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, 0.0))", FLOAT

    def _print_DiracDelta(self, e):
        return "0.0", FLOAT  # only nonzero on a set of measure zero

    def _print_InNeighborhood(self, e):
        self.helpers.add("na_keep")
        q, kv = (self.code(a) for a in e.args)
        return f"_na_keep({q}, {kv}, {NA_GEOMETRY_ARGS})", BOOL

    # -- tensor reads
    def offset(self, e: sympy.Indexed, strides: str = "stride") -> str:
        """The element offset of a tensor read, over the strides ``{name}_{strides}{dim}``."""
        name = str(e.base.label)
        return " + ".join(f"{self._wrap(self.code(i))} * {name}_{strides}{d}" for d, i in enumerate(e.indices))

    def _print_Indexed(self, e: sympy.Indexed) -> tuple[str, str]:
        name = str(e.base.label)
        return f"_read({name}_ptr + {self.offset(e)}, {name.upper()}_AS_F32)", ANY


class HostPrinter(TritonPrinter):
    """Prints integer expressions (band bounds over Lq, Lkv) as plain Python for the launcher."""

    def _print_Min(self, e): return self._minmax_py("min", e)
    def _print_Max(self, e): return self._minmax_py("max", e)

    def _minmax_py(self, name: str, e) -> tuple[str, str]:
        return f"{name}({', '.join(self.code(a) for a in e.args)})", INT

    def _print_FloorDiv(self, e):
        return f"({self.code(e.args[0])} // {self.code(e.args[1])})", INT

    def _print_Mod(self, e):
        return f"({self.code(e.args[0])} % {self.code(e.args[1])})", INT
