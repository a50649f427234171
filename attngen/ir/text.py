"""The canonical text form of a Variant, and its parser.

Format (one statement per line, ``#`` starts a comment)::

    attngen 1
    variant alibi_doc
    tensor slopes[1]
    tensor doc[2] captured
    score alibi = score - slopes[h]*Abs(kv_idx - q_idx)
    maskmod same_doc = Eq(doc[b, q_idx], doc[b, kv_idx])
    mask = (causal() & same_doc)
    norm = softmax()

Expressions use sympy's printed syntax (``Abs``, ``Eq``, ``Piecewise``, ``Min``,
``FloorDiv``, ``Mod``, ...), with floats printed so that they read back bit-exactly. Infinities
are sympy's ``oo`` and ``-oo`` (also for folded constants past the double range); NaN has no
spelling, and expressions that fold to it are refused. The parser walks Python's ``ast`` with
a whitelist and builds sympy nodes directly: it never evaluates the text.
"""
from __future__ import annotations

import ast
import hashlib
import math
import re
from pathlib import Path
from typing import Callable

import sympy
from sympy.printing.str import StrPrinter

from .expr import SYMBOLS, FloorDiv, is_boolean, piecewise, tensor_read, undefined_value
from .nodes import (CAPTURED, AndMask, Causal, Document, Neighborhood, Linear, Mask, MaskMod, NotMask, OrMask, ScoreMod,
                    Sigmoid, SlidingWindow, Softmax, TensorParam, Variant)

FORMAT_VERSION = 1


class IRSyntaxError(ValueError):
    """The text is not valid attngen IR; the message names the line."""


# --------------------------------------------------------------------------- printing
class _Printer(StrPrinter):
    """sympy's str printer with floats printed so that they read back exactly."""

    def _print_Float(self, expr: sympy.Float) -> str:
        value = float(expr)
        if math.isinf(value):
            return _print_infinity(value)
        return repr(value)


def _print_infinity(value: float) -> str:
    """sympy Floats have an unbounded exponent, so folded constants such as ``exp(12345.678)``
    or ``1e300 * 1e300`` can leave the double range; every kernel computes them as +-inf.
    They print as sympy's own infinity, ``oo`` / ``-oo``: the one spelling the parser reads,
    and the one that ``float("inf")`` in a score_mod already traces to."""
    return "oo" if value > 0 else "-oo"


_PRINTER = _Printer({"order": "lex"})


def expr_to_text(expr: sympy.Basic) -> str:
    """Canonical text of an IR expression (deterministic across processes)."""
    return _PRINTER.doprint(expr)


def _mask_to_text(mask: Mask, names: dict[MaskMod, str]) -> str:
    if isinstance(mask, Causal):
        return "causal(bottom_right=True)" if mask.bottom_right else "causal()"
    if isinstance(mask, SlidingWindow):
        return f"sliding_window(left={mask.left}, right={mask.right})"
    if isinstance(mask, Document):
        return "document()"
    if isinstance(mask, Neighborhood):
        return (f"neighborhood(kernel_size={mask.kernel_size!r}, dilation={mask.dilation!r}, "
                f"stride={mask.stride!r}, is_causal={mask.is_causal!r})")
    if isinstance(mask, MaskMod):
        return names[mask]
    if isinstance(mask, AndMask):
        return f"({_mask_to_text(mask.a, names)} & {_mask_to_text(mask.b, names)})"
    if isinstance(mask, OrMask):
        return f"({_mask_to_text(mask.a, names)} | {_mask_to_text(mask.b, names)})"
    if isinstance(mask, NotMask):
        return f"~{_mask_to_text(mask.a, names)}"
    raise TypeError(f"cannot print mask node {mask!r}")


def norm_to_text(norm) -> str:
    if isinstance(norm, Softmax):
        return "softmax(sink=True)" if norm.sink else "softmax()"
    if isinstance(norm, Sigmoid):
        return "sigmoid()" if norm.bias is None else f"sigmoid(bias={float(norm.bias)!r})"
    if isinstance(norm, Linear):
        return (f"linear(feature_map={norm.feature_map!r}, decay={norm.decay}, "
                f"normalize={norm.normalize})")
    raise TypeError(f"unknown normalization {norm!r}")


def _unique_mask_names(mask: Mask | None, anonymous: bool = False) -> dict[MaskMod, str]:
    names: dict[MaskMod, str] = {}
    used: set[str] = set()
    for leaf in mask.leaves() if mask is not None else ():
        if isinstance(leaf, MaskMod) and leaf not in names:
            base = leaf.name if leaf.name.isidentifier() and leaf.name != "lambda" else "mask_mod"
            base = "mask_mod" if anonymous else base
            name, n = base, 2
            while name in used or name in _MASK_CALLS or name in SYMBOLS:
                name, n = f"{base}_{n}", n + 1
            used.add(name)
            names[leaf] = name
    return names


def variant_to_text(v: Variant, anonymous: bool = False) -> str:
    """The canonical text of ``v`` (``ag.loads(variant_to_text(v)) == v``).

    ``anonymous=True`` leaves out every name that is a label rather than structure (the
    variant's, the score function's, mask functions' own), for structural digests.
    """
    lines = [f"attngen {FORMAT_VERSION}"]
    if v.name and not anonymous:
        lines.append(f"variant {v.name}")
    for p in v.tensors():
        lines.append(f"tensor {p.name}[{p.ndim}]" + (" captured" if p.source == CAPTURED else ""))
    if v.score is not None:
        name = v.score.name if v.score.name.isidentifier() and v.score.name != "lambda" else "score_mod"
        name = "score_mod" if anonymous else name
        lines.append(f"score {name} = {expr_to_text(v.score.expr)}")
    names = _unique_mask_names(v.mask, anonymous)
    for leaf, name in names.items():
        lines.append(f"maskmod {name} = {expr_to_text(leaf.pred)}")
    if v.mask is not None:
        lines.append(f"mask = {_mask_to_text(v.mask, names)}")
    lines.append(f"norm = {norm_to_text(v.norm)}")
    return "\n".join(lines) + "\n"


def variant_digest(v: Variant) -> str:
    """sha256 of the canonical text without the variant's name (a structural identity)."""
    return hashlib.sha256(variant_to_text(v, anonymous=True).encode()).hexdigest()


# --------------------------------------------------------------------------- parsing
_FUNCS: dict[str, tuple[Callable, int | None]] = {
    "Abs": (sympy.Abs, 1), "exp": (sympy.exp, 1), "log": (sympy.log, 1), "sin": (sympy.sin, 1),
    "cos": (sympy.cos, 1), "tan": (sympy.tan, 1), "tanh": (sympy.tanh, 1), "sqrt": (sympy.sqrt, 1),
    "floor": (sympy.floor, 1), "ceiling": (sympy.ceiling, 1), "Max": (sympy.Max, None),
    "Min": (sympy.Min, None), "Eq": (sympy.Eq, 2), "Ne": (sympy.Ne, 2), "Mod": (sympy.Mod, 2),
    "FloorDiv": (FloorDiv, 2), "Xor": (sympy.Xor, None),
}
_CONSTANTS = {"oo": sympy.oo, "True": sympy.true, "False": sympy.false, "pi": sympy.pi, "E": sympy.E}
# Spellings of non-finite values that other printers use; the hint names the IR's own.
_NOT_CONSTANTS = {"inf": "infinities are written oo and -oo", "Infinity": "infinities are written oo and -oo",
                  "nan": "a NaN score or mask is not allowed", "zoo": "an infinity needs a sign: oo or -oo"}
_MASK_CALLS = {"causal", "sliding_window", "document", "neighborhood"}


def _leaves_double_range(expr: sympy.Basic) -> bool:
    """Whether a sympy Float in ``expr`` is beyond what a double holds (it prints as oo)."""
    return any(math.isinf(float(f)) for f in expr.atoms(sympy.Float))


class _ExprParser:
    """Builds a sympy expression from a Python-syntax AST, allowing only IR constructs."""

    def __init__(self, tensors: dict[str, int], symbols: set[str], where: str) -> None:
        self.tensors, self.symbols, self.where = tensors, symbols, where

    def fail(self, msg: str) -> IRSyntaxError:
        return IRSyntaxError(f"{self.where}: {msg}")

    def parse(self, text: str, rereads: int = 2) -> sympy.Basic:
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise self.fail(f"invalid expression ({exc.msg})") from None
        expr = self.visit(tree.body)
        if _leaves_double_range(expr):
            # finite literals folded past the double range (1e300*1e300) print as oo; reading
            # that form back keeps parse(print(e)) == e for every parsed e
            if rereads == 0:
                raise self.fail("a constant leaves the double range")
            return self.parse(expr_to_text(expr), rereads - 1)
        # sympy folds ``oo - oo`` or ``1/0`` while building; such a value would print as
        # ``nan`` / ``zoo``, which no text reads back
        problem = undefined_value(expr)
        if problem is not None:
            raise self.fail(f"the expression evaluates to {problem}")
        return expr

    def visit(self, node: ast.AST) -> sympy.Basic:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise self.fail(f"'{ast.unparse(node)}' is not allowed in IR expressions")
        return method(node)

    def visit_Constant(self, node: ast.Constant) -> sympy.Basic:
        v = node.value
        if isinstance(v, bool):
            return sympy.true if v else sympy.false
        if isinstance(v, int):
            return sympy.Integer(v)
        if isinstance(v, float) and math.isfinite(v):
            return sympy.Float(v)
        raise self.fail(f"constant {v!r} is not a number")

    def visit_Name(self, node: ast.Name) -> sympy.Basic:
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in self.symbols:
            return SYMBOLS[node.id]
        if node.id in self.tensors:
            raise self.fail(f"tensor '{node.id}' must be indexed")
        if node.id in _NOT_CONSTANTS:
            raise self.fail(f"'{node.id}' is not an IR constant; {_NOT_CONSTANTS[node.id]}")
        allowed = ", ".join(sorted(self.symbols))
        raise self.fail(f"unknown name '{node.id}' (allowed here: {allowed} and declared tensors)")

    def visit_UnaryOp(self, node: ast.UnaryOp) -> sympy.Basic:
        x = self.visit(node.operand)
        if isinstance(node.op, ast.USub):
            return -x
        if isinstance(node.op, ast.UAdd):
            return x
        if isinstance(node.op, (ast.Invert, ast.Not)):
            return sympy.Not(x)
        raise self.fail("unsupported unary operator")

    _BINOPS: dict[type, Callable] = {
        ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b, ast.Mod: sympy.Mod,
        ast.FloorDiv: FloorDiv, ast.BitAnd: sympy.And, ast.BitOr: sympy.Or, ast.BitXor: sympy.Xor,
    }

    def visit_BinOp(self, node: ast.BinOp) -> sympy.Basic:
        op = self._BINOPS.get(type(node.op))
        if op is None:
            raise self.fail(f"operator in '{ast.unparse(node)}' is not supported")
        return op(self.visit(node.left), self.visit(node.right))

    _CMPS: dict[type, Callable] = {ast.Lt: sympy.Lt, ast.LtE: sympy.Le, ast.Gt: sympy.Gt, ast.GtE: sympy.Ge,
                                   ast.Eq: sympy.Eq, ast.NotEq: sympy.Ne}

    def visit_Compare(self, node: ast.Compare) -> sympy.Basic:
        if len(node.ops) != 1:
            raise self.fail("chained comparisons are not supported; combine with &")
        cmp = self._CMPS.get(type(node.ops[0]))
        if cmp is None:
            raise self.fail(f"comparison in '{ast.unparse(node)}' is not supported")
        left, right = self.visit(node.left), self.visit(node.comparators[0])
        try:
            return cmp(left, right)
        except TypeError as exc:  # sympy refuses to order NaN or zoo (e.g. q_idx < log(0))
            raise self.fail(f"comparison '{ast.unparse(node)}' is invalid ({exc})") from None

    def visit_Subscript(self, node: ast.Subscript) -> sympy.Basic:
        if not isinstance(node.value, ast.Name) or node.value.id not in self.tensors:
            raise self.fail(f"'{ast.unparse(node.value)}' is not a declared tensor")
        name = node.value.id
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        idx = tuple(self.visit(e) for e in elts)
        if len(idx) != self.tensors[name]:
            raise self.fail(f"tensor '{name}' is declared {self.tensors[name]}-D but indexed with {len(idx)}")
        return tensor_read(name, idx)

    def visit_Call(self, node: ast.Call) -> sympy.Basic:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise self.fail(f"call '{ast.unparse(node)}' is not allowed")
        name = node.func.id
        if name == "Piecewise":
            pieces = []
            for arg in node.args:
                if not isinstance(arg, ast.Tuple) or len(arg.elts) != 2:
                    raise self.fail("Piecewise takes (value, condition) pairs")
                pieces.append((self.visit(arg.elts[0]), self.visit(arg.elts[1])))
            if not pieces or pieces[-1][1] is not sympy.true:
                raise self.fail("Piecewise needs a final (value, True) branch")
            return piecewise(*pieces)
        if name not in _FUNCS:
            raise self.fail(f"unknown function '{name}'")
        fn, arity = _FUNCS[name]
        if arity is not None and len(node.args) != arity:
            raise self.fail(f"{name} takes {arity} argument(s), got {len(node.args)}")
        return fn(*(self.visit(a) for a in node.args))


def canonical_expr(expr: sympy.Basic, tensors: dict[str, int], symbols: set[str]) -> sympy.Basic:
    """``expr`` as the text parser would rebuild it from its printed form.

    sympy's automatic evaluation depends on the order an expression was built in, so a
    traced expression and its re-parsed text can differ structurally (``x/2`` under a sum,
    tautologies that fold only when rebuilt). Passing traced expressions through the text
    once makes ``loads(v.to_text()) == v`` hold by construction.
    """
    return _ExprParser(tensors, symbols, "<traced>").parse(expr_to_text(expr))


def _literal_kwargs(call: ast.Call, where: str, allowed: dict[str, type | tuple]) -> dict:
    if call.args:
        raise IRSyntaxError(f"{where}: {call.func.id}() takes keyword arguments only")  # type: ignore[attr-defined]
    out = {}
    for kw in call.keywords:
        if kw.arg not in allowed:
            raise IRSyntaxError(f"{where}: unknown argument '{kw.arg}' to {call.func.id}()")  # type: ignore[attr-defined]
        try:
            val = ast.literal_eval(kw.value)
        except ValueError:
            raise IRSyntaxError(f"{where}: argument '{kw.arg}' must be a literal") from None
        if not isinstance(val, allowed[kw.arg]) or (isinstance(val, bool) and allowed[kw.arg] is int):
            raise IRSyntaxError(f"{where}: argument '{kw.arg}' has the wrong type ({val!r})")
        out[kw.arg] = val
    return out


def _parse_mask(text: str, mods: dict[str, MaskMod], where: str) -> Mask:
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise IRSyntaxError(f"{where}: invalid mask expression ({exc.msg})") from None

    def visit(node: ast.AST) -> Mask:
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            cls = AndMask if isinstance(node.op, ast.BitAnd) else OrMask
            return cls(visit(node.left), visit(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return NotMask(visit(node.operand))
        if isinstance(node, ast.Name):
            if node.id not in mods:
                raise IRSyntaxError(f"{where}: '{node.id}' is not a maskmod defined above")
            return mods[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name == "causal":
                return Causal(**_literal_kwargs(node, where, {"bottom_right": bool}))
            if name == "sliding_window":
                kw = _literal_kwargs(node, where, {"left": int, "right": int})
                if "left" not in kw:
                    raise IRSyntaxError(f"{where}: sliding_window needs left=")
                return SlidingWindow(**kw)
            if name == "document":
                _literal_kwargs(node, where, {})
                return Document()
            if name == "neighborhood":
                kw = _literal_kwargs(node, where, {"kernel_size": (int, tuple), "dilation": (int, tuple),
                                                   "stride": (int, tuple), "is_causal": (bool, tuple)})
                if "kernel_size" not in kw:
                    raise IRSyntaxError(f"{where}: neighborhood needs kernel_size=")
                try:
                    return Neighborhood(**kw)
                except (TypeError, ValueError) as exc:
                    raise IRSyntaxError(f"{where}: {exc}") from None
        raise IRSyntaxError(f"{where}: '{ast.unparse(node)}' is not a mask")

    return visit(tree)


def _parse_norm(text: str, where: str):
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise IRSyntaxError(f"{where}: invalid normalization ({exc.msg})") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise IRSyntaxError(f"{where}: expected softmax(...), sigmoid(...) or linear(...)")
    kinds = {"softmax": (Softmax, {"sink": bool}), "sigmoid": (Sigmoid, {"bias": (int, float, type(None))}),
             "linear": (Linear, {"feature_map": str, "decay": bool, "normalize": bool})}
    if node.func.id not in kinds:
        raise IRSyntaxError(f"{where}: unknown normalization '{node.func.id}'")
    cls, allowed = kinds[node.func.id]
    kwargs = _literal_kwargs(node, where, allowed)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise IRSyntaxError(f"{where}: {exc}") from None


_STATEMENT = re.compile(r"^(attngen|variant|tensor|score|maskmod|mask|norm)\b\s*(.*)$")
_TENSOR = re.compile(r"^([A-Za-z_]\w*)\[(\d+)\](?:\s+(captured|runtime))?$")
_NAMED = re.compile(r"^([A-Za-z_]\w*)\s*=\s*(.+)$")


def loads(text: str, source: str = "<text>") -> Variant:
    """Parse attngen IR text into a Variant. Never executes code from the text."""
    if not isinstance(text, str):
        raise TypeError(f"loads: text must be str, got {type(text).__name__}")
    name = None
    tensors: dict[str, TensorParam] = {}
    score: ScoreMod | None = None
    mods: dict[str, MaskMod] = {}
    mask: Mask | None = None
    norm = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{lineno}"
        m = _STATEMENT.match(line)
        if not m:
            raise IRSyntaxError(f"{where}: unknown statement '{line.split()[0]}' "
                                "(expected attngen, variant, tensor, score, maskmod, mask or norm)")
        kind, rest = m.group(1), m.group(2).strip()
        if kind == "attngen":
            if rest != str(FORMAT_VERSION):
                raise IRSyntaxError(f"{where}: IR format version {rest!r} is not supported (this is {FORMAT_VERSION})")
        elif kind == "variant":
            if not rest.isidentifier():
                raise IRSyntaxError(f"{where}: variant name must be an identifier")
            name = rest
        elif kind == "tensor":
            t = _TENSOR.match(rest)
            if not t:
                raise IRSyntaxError(f"{where}: expected 'tensor NAME[NDIM] [captured]'")
            try:
                p = TensorParam(t.group(1), int(t.group(2)), t.group(3) or "runtime")
            except ValueError as exc:
                raise IRSyntaxError(f"{where}: {exc}") from None
            tensors[p.name] = p
        elif kind in ("score", "maskmod"):
            nm = _NAMED.match(rest)
            if not nm:
                raise IRSyntaxError(f"{where}: expected '{kind} NAME = EXPRESSION'")
            fname, body = nm.groups()
            symbols = {"score", "b", "h", "q_idx", "kv_idx"} if kind == "score" else {"b", "h", "q_idx", "kv_idx"}
            expr = _ExprParser({k: p.ndim for k, p in tensors.items()}, symbols, where).parse(body)
            used = {str(r.base.label) for r in expr.atoms(sympy.Indexed)}
            captured = {k: None for k in used if tensors[k].source == CAPTURED}
            if kind == "score":
                if score is not None:
                    raise IRSyntaxError(f"{where}: a variant has one score function")
                if is_boolean(expr):
                    raise IRSyntaxError(f"{where}: score '{fname}' is a boolean; use maskmod")
                score = ScoreMod.build(expr, fname, captured)
            else:
                if not is_boolean(expr):
                    raise IRSyntaxError(f"{where}: maskmod '{fname}' must be a boolean expression")
                if fname in mods or fname in _MASK_CALLS:
                    raise IRSyntaxError(f"{where}: maskmod name '{fname}' is already used")
                mods[fname] = MaskMod.build(expr, fname, captured)
        elif kind == "mask":
            body = rest[1:].strip() if rest.startswith("=") else None
            if body is None:
                raise IRSyntaxError(f"{where}: expected 'mask = MASK'")
            mask = _parse_mask(body, mods, where)
        elif kind == "norm":
            body = rest[1:].strip() if rest.startswith("=") else None
            if body is None:
                raise IRSyntaxError(f"{where}: expected 'norm = NORMALIZATION'")
            norm = _parse_norm(body, where)
    try:
        variant = Variant(score=score, mask=mask, norm=norm or Softmax(), name=name)
    except (ValueError, TypeError) as exc:
        raise IRSyntaxError(f"{source}: {exc}") from None
    declared = {p.name for p in variant.tensors()}
    unused = sorted(set(tensors) - declared)
    if unused:
        raise IRSyntaxError(f"{source}: tensor(s) declared but never read: {', '.join(unused)}")
    return variant


def load(path: str | Path) -> Variant:
    """Read and parse an attngen IR file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FileNotFoundError(f"load: cannot read IR file '{path}': {exc.strerror}") from None
    return loads(text, source=str(path))
