"""The parser of the textual IR (the format is described in text.py): ``loads``, ``load``.

It walks Python's ``ast`` with a whitelist and builds sympy nodes directly; it never
evaluates the text. Any input, however hostile, ends in a Variant or an ``IRSyntaxError``
with a line and a column (text_guard.py: the limits and the conversion of sympy's errors).
"""
from __future__ import annotations

import ast
import math
import os
import re
from pathlib import Path
from typing import Callable

import sympy

from .expr import SYMBOLS, FloorDiv, check_tensor_name, is_boolean, piecewise, tensor_read, undefined_value
from .nodes import (CAPTURED, AndMask, Causal, Document, Linear, Mask, MaskMod, Neighborhood, NotMask, OrMask,
                    ScoreMod, Sigmoid, SlidingWindow, Softmax, TensorParam, Variant)
from .text import _MASK_CALLS, FORMAT_VERSION, expr_to_text
from .text_guard import (IRSyntaxError, Where, first_bad_character, float_power, guarded, huge_power,
                         non_real_constant, parse_python)

# sympy's Max/Min compare every pair of arguments, with assumption queries, each time one
# is built: 100 arguments take 2 s, 300 take 50 s. Traced torch.maximum chains have a few.
MAX_MINMAX_ARGS = 32

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


def _leaves_double_range(expr: sympy.Basic) -> bool:
    """Whether a sympy Float in ``expr`` is beyond what a double holds: it prints as oo, or
    as 0.0 when it underflows (``10**(-10**10)`` folded in floating point)."""
    return any(math.isinf(float(f)) or (float(f) == 0 and not f.is_zero) for f in expr.atoms(sympy.Float))


class _ExprParser:
    """Builds a sympy expression from a Python-syntax AST, allowing only IR constructs."""

    def __init__(self, tensors: dict[str, int], symbols: set[str], where: Where) -> None:
        self.tensors, self.symbols, self.where = tensors, symbols, where
        self.fragment = ""

    def fail(self, msg: str, node: ast.AST | None = None) -> IRSyntaxError:
        return self.where.node_error(msg, self.fragment, node)

    def parse(self, text: str, rereads: int = 2) -> sympy.Basic:
        stripped = text.lstrip()
        self.where = self.where.at(len(text) - len(stripped))
        self.fragment = stripped.rstrip()
        root = parse_python(self.fragment, self.where, "expression")
        try:
            expr = self.visit(root)
            if _leaves_double_range(expr):
                # finite literals folded past the double range (1e300*1e300) print as oo; reading
                # that form back keeps parse(print(e)) == e for every parsed e
                if rereads == 0:
                    raise self.fail("a constant leaves the double range")
                return _ExprParser(self.tensors, self.symbols, self.where).parse(expr_to_text(expr), rereads - 1)
        except RecursionError:  # sympy on a pathological (but within-limits) expression
            raise self.fail("expression is too deeply nested for sympy") from None
        # sympy folds ``oo - oo`` or ``1/0`` while building; such a value would print as
        # ``nan`` / ``zoo``, which no text reads back
        problem = undefined_value(expr)
        if problem is not None:
            raise self.fail(f"the expression evaluates to {problem}")
        complex_part = non_real_constant(expr)
        if complex_part is not None:
            raise self.fail(f"the constant {complex_part} is not a real number (NaN in torch)")
        return expr

    def visit(self, node: ast.AST) -> sympy.Basic:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise self.fail(f"'{ast.unparse(node)[:80]}' is not allowed in IR expressions", node)
        with guarded(self.where, self.fragment, node, "expression"):
            return method(node)

    def boolean(self, node: ast.AST) -> sympy.Basic:
        """``node`` as a truth value (operands of & | ^ ~ and Piecewise conditions)."""
        x = self.visit(node)
        if not is_boolean(x):
            raise self.fail(f"'{ast.unparse(node)[:80]}' is a number where a condition is expected", node)
        return x

    def number(self, node: ast.AST) -> sympy.Basic:
        """``node`` as a number (operands of arithmetic and comparisons, tensor indices)."""
        x = self.visit(node)
        if is_boolean(x):
            raise self.fail(f"'{ast.unparse(node)[:80]}' is a condition where a number is expected", node)
        return x

    def visit_Constant(self, node: ast.Constant) -> sympy.Basic:
        v = node.value
        if isinstance(v, bool):
            return sympy.true if v else sympy.false
        if isinstance(v, int):
            return sympy.Integer(v)
        if isinstance(v, float) and math.isfinite(v):
            return sympy.Float(v)
        raise self.fail(f"constant {v!r} is not a number", node)

    def visit_Name(self, node: ast.Name) -> sympy.Basic:
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in self.symbols:
            return SYMBOLS[node.id]
        if node.id in self.tensors:
            raise self.fail(f"tensor '{node.id}' must be indexed", node)
        if node.id in _NOT_CONSTANTS:
            raise self.fail(f"'{node.id}' is not an IR constant; {_NOT_CONSTANTS[node.id]}", node)
        allowed = ", ".join(sorted(self.symbols))
        raise self.fail(f"unknown name '{node.id}' (allowed here: {allowed} and declared tensors)", node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> sympy.Basic:
        if isinstance(node.op, ast.USub):
            return -self.number(node.operand)
        if isinstance(node.op, ast.UAdd):
            return self.number(node.operand)
        if isinstance(node.op, (ast.Invert, ast.Not)):
            return sympy.Not(self.boolean(node.operand))
        raise self.fail("unsupported unary operator", node)

    _BINOPS: dict[type, Callable] = {
        ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: float_power(a, b) if huge_power(a, b) else a ** b,
        ast.Mod: sympy.Mod, ast.FloorDiv: FloorDiv,
    }
    _LOGIC: dict[type, Callable] = {ast.BitAnd: sympy.And, ast.BitOr: sympy.Or, ast.BitXor: sympy.Xor}

    def visit_BinOp(self, node: ast.BinOp) -> sympy.Basic:
        # a chain ``a + b - c ...`` nests to the left; walk it in a loop, not by recursion
        chain = []
        while isinstance(node, ast.BinOp):
            chain.append(node)
            node = node.left
        acc = self.visit(node)
        for link in reversed(chain):
            with guarded(self.where, self.fragment, link, "expression"):
                acc = self._binop(link, acc)
        return acc

    def _binop(self, node: ast.BinOp, left: sympy.Basic) -> sympy.Basic:
        kind = type(node.op)
        if kind in self._LOGIC:
            if not is_boolean(left):
                raise self.fail(f"'{ast.unparse(node.left)[:80]}' is a number where a condition is expected",
                                node.left)
            return self._LOGIC[kind](left, self.boolean(node.right))
        op = self._BINOPS.get(kind)
        if op is None:
            raise self.fail(f"operator in '{ast.unparse(node)[:80]}' is not supported", node)
        if is_boolean(left):
            raise self.fail(f"'{ast.unparse(node.left)[:80]}' is a condition where a number is expected", node.left)
        return op(left, self.number(node.right))

    _CMPS: dict[type, Callable] = {ast.Lt: sympy.Lt, ast.LtE: sympy.Le, ast.Gt: sympy.Gt, ast.GtE: sympy.Ge,
                                   ast.Eq: sympy.Eq, ast.NotEq: sympy.Ne}

    def visit_Compare(self, node: ast.Compare) -> sympy.Basic:
        if len(node.ops) != 1:
            raise self.fail("chained comparisons are not supported; combine with &", node)
        cmp = self._CMPS.get(type(node.ops[0]))
        if cmp is None:
            raise self.fail(f"comparison in '{ast.unparse(node)[:80]}' is not supported", node)
        left, right = self.number(node.left), self.number(node.comparators[0])
        try:
            return cmp(left, right)
        except TypeError as exc:  # sympy refuses to order NaN or zoo (e.g. q_idx < log(0))
            raise self.fail(f"comparison '{ast.unparse(node)[:80]}' is invalid ({exc})", node) from None

    def visit_Subscript(self, node: ast.Subscript) -> sympy.Basic:
        if not isinstance(node.value, ast.Name) or node.value.id not in self.tensors:
            raise self.fail(f"'{ast.unparse(node.value)[:80]}' is not a declared tensor", node)
        name = node.value.id
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        idx = tuple(self.number(e) for e in elts)
        if len(idx) != self.tensors[name]:
            raise self.fail(f"tensor '{name}' is declared {self.tensors[name]}-D but indexed with {len(idx)}", node)
        for e, i in zip(elts, idx):  # an index is integer arithmetic over b, h, q_idx, kv_idx and reads
            if i.is_integer is False or i.has(SYMBOLS["score"]):
                raise self.fail(f"index '{ast.unparse(e)[:80]}' of tensor '{name}' is not an integer expression", e)
        return tensor_read(name, idx)

    def visit_Call(self, node: ast.Call) -> sympy.Basic:
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise self.fail(f"call '{ast.unparse(node)[:80]}' is not allowed", node)
        name = node.func.id
        if name == "Piecewise":
            pieces = []
            for arg in node.args:
                if not isinstance(arg, ast.Tuple) or len(arg.elts) != 2:
                    raise self.fail("Piecewise takes (value, condition) pairs", arg)
                pieces.append((self.visit(arg.elts[0]), self.boolean(arg.elts[1])))
            if not pieces or pieces[-1][1] is not sympy.true:
                raise self.fail("Piecewise needs a final (value, True) branch", node)
            if len({is_boolean(value) for value, _ in pieces}) > 1:
                raise self.fail("Piecewise mixes conditions and numbers among its values", node)
            return piecewise(*pieces)
        if name not in _FUNCS:
            raise self.fail(f"unknown function '{name}'", node)
        fn, arity = _FUNCS[name]
        if arity is not None and len(node.args) != arity:
            raise self.fail(f"{name} takes {arity} argument(s), got {len(node.args)}", node)
        if name == "Xor":
            return fn(*(self.boolean(a) for a in node.args))
        if name in ("Eq", "Ne"):  # Eq(a, b) of two conditions is their equivalence
            args = [self.visit(a) for a in node.args]
            if is_boolean(args[0]) != is_boolean(args[1]):
                raise self.fail(f"{name} compares a condition with a number", node)
            return fn(*args)
        args = [self.number(a) for a in node.args]
        if name in ("Max", "Min"):
            n_args = sum(len(a.args) if isinstance(a, fn) else 1 for a in args)
            if n_args > MAX_MINMAX_ARGS:
                raise self.fail(f"{name} of more than {MAX_MINMAX_ARGS} arguments", node)
        return fn(*args)


def canonical_expr(expr: sympy.Basic, tensors: dict[str, int], symbols: set[str]) -> sympy.Basic:
    """``expr`` as the text parser would rebuild it from its printed form.

    sympy's automatic evaluation depends on the order an expression was built in, so a
    traced expression and its re-parsed text can differ structurally (``x/2`` under a sum,
    tautologies that fold only when rebuilt). Passing traced expressions through the text
    once makes ``loads(v.to_text()) == v`` hold by construction.
    """
    return _ExprParser(tensors, symbols, Where("<traced>", 1)).parse(expr_to_text(expr))


# Geometry parameters are positions and distances; kernels index positions with 32-bit
# integers, so a larger literal can only be a mistake (or a fuzzer's 10**400).
MAX_LITERAL_INT = 2 ** 31 - 1


def _literal_kwargs(call: ast.Call, where: Where, fragment: str, allowed: dict[str, type | tuple]) -> dict:
    fname = call.func.id  # type: ignore[attr-defined]
    if call.args:
        raise where.node_error(f"{fname}() takes keyword arguments only", fragment, call.args[0])
    out = {}
    for kw in call.keywords:
        if kw.arg not in allowed:
            raise where.node_error(f"unknown argument '{kw.arg}' to {fname}()", fragment, kw.value)
        try:
            val = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise where.node_error(f"argument '{kw.arg}' must be a literal", fragment, kw.value) from None
        kinds = allowed[kw.arg] if isinstance(allowed[kw.arg], tuple) else (allowed[kw.arg],)
        if not isinstance(val, kinds) or (isinstance(val, bool) and bool not in kinds):
            raise where.node_error(f"argument '{kw.arg}' has the wrong type ({str(val)[:40]})", fragment, kw.value)
        items = val if isinstance(val, tuple) else (val,)
        if any(isinstance(x, int) and abs(x) > MAX_LITERAL_INT for x in items):
            raise where.node_error(f"argument '{kw.arg}' is out of range (|value| < 2**31)", fragment, kw.value)
        out[kw.arg] = val
    return out


def _build(where: Where, fragment: str, node: ast.AST, cls: type, kwargs: dict):
    """``cls(**kwargs)``, its validation errors located at ``node``."""
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        raise where.node_error(str(exc), fragment, node) from None


def _parse_mask(text: str, mods: dict[str, MaskMod], where: Where) -> Mask:
    stripped = text.strip()
    where = where.at(len(text) - len(text.lstrip()))
    tree = parse_python(stripped, where, "mask expression", flat_chains=False)

    def visit(node: ast.AST) -> Mask:
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            cls = AndMask if isinstance(node.op, ast.BitAnd) else OrMask
            return cls(visit(node.left), visit(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return NotMask(visit(node.operand))
        if isinstance(node, ast.Name):
            if node.id not in mods:
                raise where.node_error(f"'{node.id}' is not a maskmod defined above", stripped, node)
            return mods[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name == "causal":
                return _build(where, stripped, node, Causal,
                              _literal_kwargs(node, where, stripped, {"bottom_right": bool}))
            if name == "sliding_window":
                kw = _literal_kwargs(node, where, stripped, {"left": int, "right": int})
                if "left" not in kw:
                    raise where.node_error("sliding_window needs left=", stripped, node)
                return _build(where, stripped, node, SlidingWindow, kw)
            if name == "document":
                _literal_kwargs(node, where, stripped, {})
                return Document()
            if name == "neighborhood":
                kw = _literal_kwargs(node, where, stripped, {"kernel_size": (int, tuple), "dilation": (int, tuple),
                                                             "stride": (int, tuple), "is_causal": (bool, tuple)})
                if "kernel_size" not in kw:
                    raise where.node_error("neighborhood needs kernel_size=", stripped, node)
                return _build(where, stripped, node, Neighborhood, kw)
        raise where.node_error(f"'{ast.unparse(node)[:80]}' is not a mask", stripped, node)

    return visit(tree)


def _parse_norm(text: str, where: Where):
    stripped = text.strip()
    where = where.at(len(text) - len(text.lstrip()))
    node = parse_python(stripped, where, "normalization")
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise where.error("expected softmax(...), sigmoid(...) or linear(...)")
    kinds = {"softmax": (Softmax, {"sink": bool}), "sigmoid": (Sigmoid, {"bias": (int, float, type(None))}),
             "linear": (Linear, {"feature_map": str, "decay": bool, "normalize": bool})}
    if node.func.id not in kinds:
        raise where.node_error(f"unknown normalization '{node.func.id}'", stripped, node)
    cls, allowed = kinds[node.func.id]
    kwargs = _literal_kwargs(node, where, stripped, allowed)
    if cls is Sigmoid and kwargs.get("bias") is not None:
        kwargs["bias"] = float(kwargs["bias"])  # an int literal within MAX_LITERAL_INT: exact
    return _build(where, stripped, node, cls, kwargs)


_STATEMENT = re.compile(r"^(attngen|variant|tensor|score|maskmod|mask|norm)\b\s*(.*)$")
_TENSOR = re.compile(r"^([A-Za-z_]\w*)\[(\d{1,6})\](?:\s+(captured|runtime))?$")
_NAMED = re.compile(r"^([A-Za-z_]\w*)\s*=\s*(.+)$")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what editors count as lines (not str.splitlines's \f, \x1c, ...)
# statements a variant is made of: a text with none of them describes no variant
_VARIANT_STATEMENTS = ("variant", "tensor", "score", "maskmod", "mask", "norm")


def loads(text: str, source: str = "<text>") -> Variant:
    """Parse attngen IR text into a Variant. Never executes code from the text.

    Any problem, whatever the input, raises ``IRSyntaxError`` with the source, line and
    column (``str()`` reads ``source:line:column: message``)."""
    if not isinstance(text, str):
        raise TypeError(f"loads: text must be str, got {type(text).__name__}")
    if not isinstance(source, str):
        raise TypeError(f"loads: source must be str, got {type(source).__name__}")
    name = None
    tensors: dict[str, TensorParam] = {}
    tensor_lines: dict[str, Where] = {}
    score: ScoreMod | None = None
    mods: dict[str, MaskMod] = {}
    mask: Mask | None = None
    norm = None
    seen: dict[str, Where] = {}
    lineno = 0
    for lineno, raw in enumerate(_LINE_BREAK.split(text.removeprefix("\ufeff")), 1):
        bad = first_bad_character(raw)
        if bad is not None:
            raise IRSyntaxError(f"character U+{ord(raw[bad]):04X} is not valid text", source, lineno, bad + 1)
        code = raw.split("#", 1)[0]
        line = code.strip()
        if not line:
            continue
        lead = len(code) - len(code.lstrip())
        m = _STATEMENT.match(line)
        if not m:
            raise IRSyntaxError(f"unknown statement '{line.split()[0][:40]}' "
                                "(expected attngen, variant, tensor, score, maskmod, mask or norm)", source, lineno,
                                lead + 1)
        kind, rest = m.group(1), m.group(2).strip()
        where = Where(source, lineno, lead + m.start(2))
        if not seen and kind != "attngen":
            raise where.at(-m.start(2)).error(f"expected 'attngen {FORMAT_VERSION}' as the first statement")
        if kind in ("attngen", "variant", "score", "mask", "norm") and kind in seen:
            first = seen[kind]
            raise where.at(-m.start(2)).error(f"a second '{kind}' statement (the first is on line {first.line})")
        seen.setdefault(kind, where)
        if kind == "attngen":
            if rest != str(FORMAT_VERSION):
                raise where.error(f"IR format version {rest[:20]!r} is not supported (this is {FORMAT_VERSION})")
        elif kind == "variant":
            try:
                name = check_tensor_name(rest, "variant")
            except ValueError as exc:
                raise where.error(str(exc)) from None
        elif kind == "tensor":
            t = _TENSOR.match(rest)
            if not t:
                raise where.error("expected 'tensor NAME[NDIM] [captured]'")
            if t.group(1) in tensors:
                raise where.error(f"tensor '{t.group(1)}' is declared twice")
            try:
                p = TensorParam(t.group(1), int(t.group(2)), t.group(3) or "runtime")
            except ValueError as exc:
                raise where.error(str(exc)) from None
            tensors[p.name] = p
            tensor_lines[p.name] = where
        elif kind in ("score", "maskmod"):
            nm = _NAMED.match(rest)
            if not nm:
                raise where.error(f"expected '{kind} NAME = EXPRESSION'")
            fname, body = nm.groups()
            symbols = {"score", "b", "h", "q_idx", "kv_idx"} if kind == "score" else {"b", "h", "q_idx", "kv_idx"}
            body_at = where.at(nm.start(2))
            expr = _ExprParser({k: p.ndim for k, p in tensors.items()}, symbols, body_at).parse(body)
            used = {str(r.base.label) for r in expr.atoms(sympy.Indexed)}
            captured = {k: None for k in used if tensors[k].source == CAPTURED}
            if kind == "score":
                if is_boolean(expr):
                    raise body_at.error(f"score '{fname}' is a boolean; use maskmod")
                score = ScoreMod.build(expr, fname, captured)
            else:
                if not is_boolean(expr):
                    raise body_at.error(f"maskmod '{fname}' must be a boolean expression")
                if fname in mods or fname in _MASK_CALLS:
                    raise where.error(f"maskmod name '{fname}' is already used")
                mods[fname] = MaskMod.build(expr, fname, captured)
        elif kind in ("mask", "norm"):
            if not rest.startswith("="):
                raise where.error(f"expected '{kind} = {'MASK' if kind == 'mask' else 'NORMALIZATION'}'")
            if kind == "mask":
                mask = _parse_mask(rest[1:], mods, where.at(1))
            else:
                norm = _parse_norm(rest[1:], where.at(1))
    if not seen:
        raise IRSyntaxError("empty text: no attngen IR in it", source, max(lineno, 1), 1)
    if not set(seen) & set(_VARIANT_STATEMENTS):
        raise IRSyntaxError("no variant in the text (only the 'attngen' header)", source, max(lineno, 1), 1)
    last = max(seen.values(), key=lambda w: w.line)
    try:
        variant = Variant(score=score, mask=mask, norm=norm or Softmax(), name=name)
    except (ValueError, TypeError, RecursionError) as exc:
        raise IRSyntaxError(str(exc), source, last.line, 1) from None
    declared = {p.name for p in variant.tensors()}
    unused = sorted(set(tensors) - declared, key=lambda n: tensor_lines[n].line)
    if unused:
        raise tensor_lines[unused[0]].error(f"tensor(s) declared but never read: {', '.join(unused)}")
    return variant


def load(path: str | Path) -> Variant:
    """Read and parse an attngen IR file (UTF-8). A file that cannot be read raises
    FileNotFoundError; one that is not UTF-8 text raises IRSyntaxError at the first bad byte."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load: path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"load: cannot read IR file '{path}': {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        raise IRSyntaxError(f"byte 0x{data[exc.start]:02x} is not UTF-8 text", str(path), line, column) from None
    return loads(text, source=str(path))
