"""Parsing untrusted IR text safely: error locations, size limits, and the one exception.

The textual IR may come from anywhere (a file someone sent, a fuzzer), so whatever goes
wrong while reading it must surface as ``IRSyntaxError`` with a line and a column, never as
a ``RecursionError`` from a deeply nested expression, a ``ZeroDivisionError`` or
``TypeError`` from sympy folding constants, or a hang on ``10**10**10``. This module holds
what the parser (``text.py``) needs for that: the exception, the position of a fragment in
its line, ``parse_python`` (``ast.parse`` with depth and size limits) and ``guarded`` (turns
sympy's exceptions into located syntax errors).
"""
from __future__ import annotations

import ast
import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Iterator

import sympy

# Python's own parser and every recursive walk after it (ours, sympy's) use the C or
# Python stack per nesting level; 100 levels is far beyond any traced expression (the
# deepest in the test suite nests about 20) and far below the interpreter's limit.
MAX_DEPTH = 100
# Nodes per expression: bounds sympy's work (canonicalizing Piecewise, And, Xor arguments
# grows faster than their number: 1,000 conditions take 1.5-3 s). Traced score_mods have tens.
MAX_NODES = 2000
# Integer powers of constants are folded exactly by sympy; past this many bits the result
# is computed as a float instead (and prints as oo when it leaves the double range), so
# ``10**10**10`` costs microseconds instead of never finishing.
MAX_EXACT_POWER_BITS = 4096


class IRSyntaxError(ValueError):
    """The text is not valid attngen IR. ``source``, ``line`` and ``column`` (1-based) say
    where; ``str()`` is ``source:line:column: message``."""

    def __init__(self, message: str, source: str = "<text>", line: int = 1, column: int = 1) -> None:
        self.message, self.source, self.line, self.column = message, source, line, column
        super().__init__(f"{source}:{line}:{column}: {message}")

    def __reduce__(self):  # keeps the fields through pickling (multiprocessing, pytest-xdist)
        return type(self), (self.message, self.source, self.line, self.column)


@dataclass(frozen=True)
class Where:
    """A fragment of the text: its line and the 0-based column where it starts."""

    source: str
    line: int
    col0: int = 0

    def error(self, message: str, offset: int = 0) -> IRSyntaxError:
        """An IRSyntaxError at ``offset`` characters into the fragment."""
        return IRSyntaxError(message, self.source, self.line, self.col0 + offset + 1)

    def at(self, offset: int) -> "Where":
        return Where(self.source, self.line, self.col0 + offset)

    def node_error(self, message: str, fragment: str, node: ast.AST | None) -> IRSyntaxError:
        """An IRSyntaxError at ``node`` of ``fragment``'s AST (ast counts UTF-8 bytes)."""
        offset = 0
        if node is not None and hasattr(node, "col_offset"):
            offset = len(fragment.encode()[:node.col_offset].decode(errors="ignore"))
        return self.error(message, offset)


def parse_python(fragment: str, where: Where, what: str, flat_chains: bool = True) -> ast.AST:
    """``ast.parse(fragment, mode="eval").body`` within the depth and size limits; every
    failure is an IRSyntaxError at the offending position.

    ``flat_chains``: a chain ``a + b - c + ...`` (a binary operation on the left of another)
    does not count as nesting: sympy prints a sum of n terms that way and flattens it back,
    and the expression parser walks such chains in a loop. Mask trees stay binary after
    parsing, so there every level counts."""
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" and the like: errors or not, not noise
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(fragment, mode="eval")
    except SyntaxError as exc:
        offset = (exc.offset or 1) - 1 if exc.lineno in (None, 1) else 0
        raise where.error(f"invalid {what} ({exc.msg})", max(offset, 0)) from None
    except (RecursionError, MemoryError):  # CPython's parser on very deep input
        raise where.error(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # e.g. NUL characters on some Python versions
        raise where.error(f"invalid {what} ({exc})") from None
    _check_size(tree.body, fragment, where, what, flat_chains)
    return tree.body


def _check_size(root: ast.AST, fragment: str, where: Where, what: str, flat_chains: bool) -> None:
    """Iteratively (no recursion) refuse trees deeper than MAX_DEPTH or larger than MAX_NODES."""
    stack = [(root, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += isinstance(node, ast.expr)  # not the operator and context nodes
        if depth > MAX_DEPTH:
            raise where.node_error(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)", fragment, node)
        if count > MAX_NODES:
            raise where.error(f"{what} is too large (at most {MAX_NODES} terms)")
        for child in ast.iter_child_nodes(node):
            chained = flat_chains and isinstance(node, ast.BinOp) and child is node.left \
                and isinstance(child, ast.BinOp)
            stack.append((child, depth if chained else depth + 1))


@contextlib.contextmanager
def guarded(where: Where, fragment: str, node: ast.AST | None, what: str) -> Iterator[None]:
    """Turn what sympy raises while building an expression from ``node`` into an
    IRSyntaxError there: ``1 % 0`` (ZeroDivisionError), ``q_idx + (q_idx < 1)`` (TypeError:
    a truth value in arithmetic), floats too large to convert (OverflowError), its own
    recursion on pathological input."""
    try:
        yield
    except IRSyntaxError:
        raise
    except (ArithmeticError, TypeError, ValueError, RecursionError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise where.node_error(f"{what} cannot be built ({detail})", fragment, node) from None


def huge_power(base: sympy.Basic, exponent: sympy.Basic) -> bool:
    """Whether sympy would fold ``base ** exponent`` into an exact number of more than
    MAX_EXACT_POWER_BITS bits (or an exact root of such a number)."""
    if not (isinstance(base, sympy.Rational) and isinstance(exponent, sympy.Number)):
        return False
    if abs(base.p) <= 1 and base.q == 1:  # 0, 1, -1: any power is small
        return False
    try:
        magnitude = abs(float(exponent))
    except (OverflowError, TypeError, ValueError):
        return True
    bits = max(abs(base.p).bit_length(), base.q.bit_length())
    return not math.isfinite(magnitude) or magnitude * bits > MAX_EXACT_POWER_BITS


def float_power(base: sympy.Basic, exponent: sympy.Basic) -> sympy.Basic:
    """``base ** exponent`` in floating point (sympy Floats have an unbounded exponent)."""
    return sympy.Float(base) ** sympy.Float(exponent)


def non_real_constant(expr: sympy.Basic) -> sympy.Basic | None:
    """A constant subexpression that is not real (``sqrt(-1)``, ``log(-2)``), or None.

    torch computes NaN there; the IR has no NaN, so the parser refuses it as the tracer
    refuses NaN."""
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Expr) and node.is_number and node.is_extended_real is False:
            return node
    return None


def first_bad_character(line: str) -> int | None:
    """The index of a character that cannot be encoded (a lone surrogate), or None."""
    for i, ch in enumerate(line):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            return i
    return None
