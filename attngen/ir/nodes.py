"""The variant IR: immutable, hashable dataclasses.

A ``Variant`` is a score function, a mask tree and a normalization. Mask trees keep
built-in geometry structured (``Causal``, ``SlidingWindow``, ``Document``) so passes can
reason about it exactly; user predicates are ``MaskMod`` leaves holding a sympy boolean.
Equality is structural: names of functions and variants are labels, not structure, and
captured tensors compare by identity (the tensor object is read at every call).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import sympy

from .expr import check_tensor_name, tensor_arities

RUNTIME = "runtime"
CAPTURED = "captured"
# Geometry sizes are positions and distances; kernels hold positions in 32-bit integers.
MAX_GEOMETRY = 2 ** 31 - 1


@dataclass(frozen=True)
class TensorParam:
    """A tensor a score or mask function reads: ``name[i0, ..., i{ndim-1}]``.

    ``source`` is ``runtime`` (passed by keyword at call time) or ``captured`` (closed over
    by the user's Python function and read by reference at every call).
    """

    name: str
    ndim: int
    source: str = RUNTIME

    def __post_init__(self) -> None:
        check_tensor_name(self.name)
        if self.source not in (RUNTIME, CAPTURED):
            raise ValueError(f"tensor source must be 'runtime' or 'captured', got {self.source!r}")
        if not isinstance(self.ndim, int) or self.ndim < 0:
            raise ValueError(f"tensor '{self.name}': ndim must be a non-negative int")


class _Identity:
    """Wraps a captured tensor so that it compares and hashes by identity."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __repr__(self) -> str:
        return f"<captured {type(self.obj).__name__} at {id(self.obj):#x}>"


def _captures(mapping: Mapping[str, object] | None) -> tuple[tuple[str, _Identity], ...]:
    return tuple(sorted((k, _Identity(v)) for k, v in (mapping or {}).items()))


def _params_for(expr: sympy.Basic, captured: Mapping[str, object] | None) -> tuple[TensorParam, ...]:
    captured = captured or {}
    return tuple(
        TensorParam(name, ndim, CAPTURED if name in captured else RUNTIME)
        for name, ndim in sorted(tensor_arities(expr).items())
    )


class _TracedFunction:
    """What ScoreMod and MaskMod share: built from a traced expression, callable like the
    Python function they came from, and holding their captured tensors by identity."""

    KIND = "function"

    @classmethod
    def build(cls, expr: sympy.Basic, name: str, captured: Mapping[str, object] | None = None,
              fn: object = None):
        expr = sympy.sympify(expr)
        return cls(expr, name, _params_for(expr, captured), _captures(captured), fn)

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            raise TypeError(f"{self.KIND} '{self.name}' was loaded from text and has no Python body")
        return self.fn(*args, **kwargs)

    @property
    def captured(self) -> dict[str, object]:
        return {k: v.obj for k, v in self.captures}


# --------------------------------------------------------------------------- masks
class Mask:
    """Base of mask nodes; ``&``, ``|`` and ``~`` build trees."""

    def __and__(self, other: "Mask") -> "Mask":
        return AndMask(self, _as_mask(other, "&"))

    def __rand__(self, other: "Mask") -> "Mask":
        return AndMask(_as_mask(other, "&"), self)

    def __or__(self, other: "Mask") -> "Mask":
        return OrMask(self, _as_mask(other, "|"))

    def __ror__(self, other: "Mask") -> "Mask":
        return OrMask(_as_mask(other, "|"), self)

    def __invert__(self) -> "Mask":
        return NotMask(self)

    def children(self) -> tuple["Mask", ...]:
        return ()

    def leaves(self) -> list["Mask"]:
        kids = self.children()
        return [self] if not kids else [leaf for k in kids for leaf in k.leaves()]

    def tensors(self) -> tuple[TensorParam, ...]:
        """Tensors read anywhere in this mask tree (leaves override this)."""
        return mask_tensors(self)


# Plain Python functions become MaskMod / ScoreMod leaves by tracing them, which is the
# frontend's job. The IR imports nothing above it, so the frontend registers its coercions
# here when it is imported (``import attngen`` imports it before anything else).
_COERCIONS: dict[str, Callable[..., object]] = {}


def register_coercions(*, score: Callable[[object], "ScoreMod"], mask: Callable[[object, str], Mask]) -> None:
    """Install the functions that turn a plain callable into a ``ScoreMod`` / ``Mask``."""
    _COERCIONS["score"], _COERCIONS["mask"] = score, mask


def _coerce(kind: str, obj: object, *args: object):
    coerce = _COERCIONS.get(kind)
    if coerce is None:
        raise RuntimeError(f"cannot turn {type(obj).__name__} into a {kind}: attngen.frontend is not imported")
    return coerce(obj, *args)


def _as_mask(other: object, op: str) -> Mask:
    if isinstance(other, Mask):
        return other
    return _coerce("mask", other, f"operand of '{op}'")


@dataclass(frozen=True)
class Causal(Mask):
    """``j <= i`` (top-left) or ``j <= i + Lkv - Lq`` (bottom-right)."""

    bottom_right: bool = False

    def tensors(self) -> tuple[TensorParam, ...]:
        return ()


@dataclass(frozen=True)
class SlidingWindow(Mask):
    """``i - left <= j <= i + right`` (flash-attn's window_size convention)."""

    left: int
    right: int = 0

    def __post_init__(self) -> None:
        for arg in ("left", "right"):
            val = getattr(self, arg)
            if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val <= MAX_GEOMETRY:
                raise ValueError(f"sliding_window: {arg} must be an int in [0, 2**31), got {val!r}")

    def tensors(self) -> tuple[TensorParam, ...]:
        return ()


@dataclass(frozen=True)
class Document(Mask):
    """``document_ids[b, i] == document_ids[b, j]`` with runtime ``document_ids`` (B, L)."""

    def tensors(self) -> tuple[TensorParam, ...]:
        return (TensorParam("document_ids", 2),)


def _axis_values(name: str, value: object, kind: type) -> int | bool | tuple:
    """An int/bool or a tuple of 1-3 of them (one per spatial axis), checked."""
    def ok(x: object) -> bool:
        return isinstance(x, bool) if kind is bool else (isinstance(x, int) and not isinstance(x, bool))

    if isinstance(value, (tuple, list)):
        value = tuple(value)
        if not 1 <= len(value) <= 3 or not all(ok(x) for x in value):
            raise TypeError(f"neighborhood: {name} must be {'a bool' if kind is bool else 'an int'} or a tuple "
                            f"of 1 to 3 of them (one per axis), got {value!r}")
        return value
    if not ok(value):
        raise TypeError(f"neighborhood: {name} must be {'a bool' if kind is bool else 'an int'} or a tuple "
                        f"of 1 to 3 of them (one per axis), got {value!r}")
    return value


@dataclass(frozen=True)
class Neighborhood(Mask):
    """NATTEN's neighborhood over a row-major grid of ``spatial_shape`` (given at call time).

    Each field is one value for every axis or a tuple with one per axis; tuples fix the
    rank, all-scalar geometry takes its rank from ``spatial_shape``. Per axis: window
    ``kernel_size``, ``dilation`` (attend within the same residue class), ``stride`` (that
    many consecutive queries share one window) and ``is_causal`` (keys up to the query).
    """

    kernel_size: int | tuple[int, ...]
    dilation: int | tuple[int, ...] = 1
    stride: int | tuple[int, ...] = 1
    is_causal: bool | tuple[bool, ...] = False

    def __post_init__(self) -> None:
        fields = {"kernel_size": int, "dilation": int, "stride": int, "is_causal": bool}
        for name, kind in fields.items():
            object.__setattr__(self, name, _axis_values(name, getattr(self, name), kind))
        ranks = {len(getattr(self, n)) for n in fields if isinstance(getattr(self, n), tuple)}
        if len(ranks) > 1:
            raise ValueError(f"neighborhood: per-axis tuples disagree on the rank ({sorted(ranks)} axes)")
        for name in ("kernel_size", "dilation", "stride"):
            for axis, val in enumerate(self.per_axis(name, self.rank or 1)):
                if not 1 <= val <= MAX_GEOMETRY:
                    raise ValueError(f"neighborhood: {name} must be in [1, 2**31) on every axis, got {val} on axis {axis}")
        for axis, (k, s) in enumerate(zip(self.per_axis("kernel_size", self.rank or 1),
                                          self.per_axis("stride", self.rank or 1))):
            if s > k:
                raise ValueError(f"neighborhood: stride ({s}) must not exceed kernel_size ({k}) on axis {axis}")

    @property
    def rank(self) -> int | None:
        """The number of spatial axes, or None when every field is one value for all axes."""
        for name in ("kernel_size", "dilation", "stride", "is_causal"):
            val = getattr(self, name)
            if isinstance(val, tuple):
                return len(val)
        return None

    def per_axis(self, name: str, rank: int) -> tuple:
        """Field ``name`` as a tuple of ``rank`` values."""
        val = getattr(self, name)
        return val if isinstance(val, tuple) else (val,) * rank

    def tensors(self) -> tuple[TensorParam, ...]:
        return ()


@dataclass(frozen=True)
class MaskMod(_TracedFunction, Mask):
    """A traced user predicate over ``b, h, q_idx, kv_idx`` and tensor reads."""

    pred: sympy.Basic
    name: str = field(default="mask_mod", compare=False)
    params: tuple[TensorParam, ...] = ()
    captures: tuple = field(default=(), repr=False)
    fn: object = field(default=None, compare=False, repr=False)
    KIND = "mask_mod"

    def tensors(self) -> tuple[TensorParam, ...]:
        return self.params


@dataclass(frozen=True)
class AndMask(Mask):
    a: Mask
    b: Mask

    def children(self) -> tuple[Mask, ...]:
        return (self.a, self.b)


@dataclass(frozen=True)
class OrMask(Mask):
    a: Mask
    b: Mask

    def children(self) -> tuple[Mask, ...]:
        return (self.a, self.b)


@dataclass(frozen=True)
class NotMask(Mask):
    a: Mask

    def children(self) -> tuple[Mask, ...]:
        return (self.a,)


def mask_tensors(mask: Mask | None) -> tuple[TensorParam, ...]:
    if mask is None:
        return ()
    seen: dict[str, TensorParam] = {}
    for leaf in mask.leaves():
        for p in leaf.tensors():
            seen.setdefault(p.name, p)
    return tuple(seen[k] for k in sorted(seen))


def mask_captures(mask: Mask | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for leaf in mask.leaves() if mask is not None else ():
        if isinstance(leaf, MaskMod):
            out.update(leaf.captured)
    return out


# --------------------------------------------------------------------------- normalizations
@dataclass(frozen=True)
class Softmax:
    """``exp(s) / sum exp(s)`` over attended keys; ``sink`` adds ``exp(sinks[h])`` below."""

    sink: bool = False


@dataclass(frozen=True)
class Sigmoid:
    """``sigmoid(s + bias)``, no row normalization; bias None means ``-ln(Lkv)``."""

    bias: float | None = None

    def __post_init__(self) -> None:
        # a non-finite bias saturates every weight, and the text form has no spelling for it
        if self.bias is not None and not math.isfinite(self.bias):
            raise ValueError(f"sigmoid: bias must be a finite number, got {self.bias!r}")


@dataclass(frozen=True)
class Linear:
    """Linear attention ``phi(q) . phi(k)`` with optional per-head decay and normalizer."""

    feature_map: str = "elu1"
    decay: bool = False
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.feature_map not in ("identity", "elu1", "relu"):
            raise ValueError(f"linear: feature_map must be identity, elu1 or relu, got {self.feature_map!r}")
        for flag in ("decay", "normalize"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"linear: {flag} must be a bool, got {getattr(self, flag)!r}")


Norm = Softmax | Sigmoid | Linear


# --------------------------------------------------------------------------- score
@dataclass(frozen=True)
class ScoreMod(_TracedFunction):
    """A traced score function: ``expr`` over ``score, b, h, q_idx, kv_idx`` and tensor reads."""

    expr: sympy.Basic
    name: str = field(default="score_mod", compare=False)
    params: tuple[TensorParam, ...] = ()
    captures: tuple = field(default=(), repr=False)
    fn: object = field(default=None, compare=False, repr=False)
    KIND = "score_mod"


# --------------------------------------------------------------------------- variant
@dataclass(frozen=True)
class Variant:
    """One attention variant: score function, mask tree and normalization."""

    score: ScoreMod | None = None
    mask: Mask | None = None
    norm: Norm = field(default_factory=Softmax)
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.score is not None and not isinstance(self.score, ScoreMod):
            object.__setattr__(self, "score", _coerce("score", self.score))
        if self.mask is not None and not isinstance(self.mask, Mask):
            object.__setattr__(self, "mask", _coerce("mask", self.mask, "mask"))
        if not isinstance(self.norm, (Softmax, Sigmoid, Linear)):
            raise TypeError(f"norm must be ag.softmax(), ag.sigmoid() or ag.linear(), got {self.norm!r}")
        if self.name is not None:
            check_tensor_name(self.name, "variant")
        self.tensors()  # raises on conflicting declarations

    @property
    def label(self) -> str:
        """The variant's name, or a stable one derived from its structure."""
        if self.name:
            return self.name
        from .text import variant_digest

        return "variant_" + variant_digest(self)[:10]

    def tensors(self) -> tuple[TensorParam, ...]:
        """Every tensor the variant reads, by name (runtime and captured)."""
        found: dict[str, TensorParam] = {}
        groups = [self.score.params if self.score else (), mask_tensors(self.mask)]
        if isinstance(self.norm, Softmax) and self.norm.sink:
            groups.append((TensorParam("sinks", 1),))
        if isinstance(self.norm, Linear) and self.norm.decay:
            groups.append((TensorParam("decay_log", 1),))
        for group in groups:
            for p in group:
                old = found.setdefault(p.name, p)
                if old != p:
                    raise ValueError(
                        f"tensor '{p.name}' is declared twice in variant {self.name or ''}: "
                        f"{old.ndim}-D {old.source} and {p.ndim}-D {p.source}")
        return tuple(found[k] for k in sorted(found))

    def captured(self) -> dict[str, object]:
        """Captured tensors by name (bound to live objects)."""
        out = dict(self.score.captured) if self.score else {}
        out.update(mask_captures(self.mask))
        return out

    def runtime_tensors(self) -> tuple[TensorParam, ...]:
        return tuple(p for p in self.tensors() if p.source == RUNTIME)

    def with_captures(self, **tensors: object) -> "Variant":
        """A copy whose captured tensors are bound to ``tensors`` (e.g. after ``ag.loads``)."""
        declared = {p.name for p in self.tensors() if p.source == CAPTURED}
        unknown = sorted(set(tensors) - declared)
        if unknown:
            raise TypeError(f"with_captures: {', '.join(unknown)} not captured by this variant "
                            f"(captured: {', '.join(sorted(declared)) or 'none'})")

        def rebind(node):
            if isinstance(node, (ScoreMod, MaskMod)):
                names = {p.name for p in node.params if p.source == CAPTURED}
                caps = {k: v for k, v in node.captured.items()}
                caps.update({k: v for k, v in tensors.items() if k in names})
                return dataclasses.replace(node, captures=_captures(caps))
            if isinstance(node, (AndMask, OrMask)):
                return type(node)(rebind(node.a), rebind(node.b))
            if isinstance(node, NotMask):
                return NotMask(rebind(node.a))
            return node

        return dataclasses.replace(self, score=rebind(self.score) if self.score else None,
                                   mask=rebind(self.mask) if self.mask else None)

    def to_text(self) -> str:
        from .text import variant_to_text

        return variant_to_text(self)

    def __str__(self) -> str:
        return self.to_text()
