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
spelling, and expressions that fold to it are refused. The parser (``parse.py``; ``loads`` and
``load`` are importable from here too) walks Python's ``ast`` with a whitelist and builds sympy
nodes directly: it never evaluates the text.
"""
from __future__ import annotations

import hashlib
import math

import sympy
from sympy.printing.str import StrPrinter

from .expr import SYMBOLS
from .nodes import (CAPTURED, AndMask, Causal, Document, Linear, Mask, MaskMod, Neighborhood, NotMask, OrMask, Sigmoid,
                    SlidingWindow, Softmax, Variant)
from .text_guard import IRSyntaxError

FORMAT_VERSION = 1
_MASK_CALLS = {"causal", "sliding_window", "document", "neighborhood"}  # built-in mask names


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


def __getattr__(name: str):
    """``loads``, ``load`` and ``canonical_expr`` live in parse.py (which imports this module
    for the printer); they stay importable from here, resolved on first use."""
    if name in ("loads", "load", "canonical_expr"):
        from . import parse

        return getattr(parse, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMAT_VERSION", "IRSyntaxError", "expr_to_text", "norm_to_text", "variant_digest", "variant_to_text"]
