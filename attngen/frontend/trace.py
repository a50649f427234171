"""Symbolic tracing of FlexAttention-style score_mod and mask_mod functions.

The user's function is called once with stand-ins (``Sym``) for score, b, h, q_idx and
kv_idx, and with ``TensorProxy`` objects for its named runtime tensors. Python operators on
stand-ins build sympy expressions; ``torch.*`` calls reach ``Sym.__torch_function__``, which
maps the supported ones to sympy and names the first unsupported one in a ``TraceError``.
Real tensors captured by closure are recognised when they are indexed by stand-ins and
become ``captured`` tensor parameters, read by reference at every call.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import sympy
import torch

from ..ir.expr import (B, FloorDiv, is_boolean, piecewise, reads_tensor, H, KV_IDX, Q_IDX, SCORE, check_tensor_name,
                       tensor_read, undefined_value)
from ..ir.nodes import Mask, MaskMod, ScoreMod, register_coercions


class TraceError(TypeError):
    """A score_mod or mask_mod did something attngen cannot trace."""


class _Context:
    """What one trace knows: the function's name and the tensors it may capture."""

    def __init__(self, fn: Callable, kind: str, name: str) -> None:
        self.fn, self.kind, self.name = fn, kind, name
        self.captured: dict[str, torch.Tensor] = {}
        self._names: dict[int, str] = {}
        try:
            cv = inspect.getclosurevars(fn)
            scopes = [cv.nonlocals, cv.globals]
        except (TypeError, ValueError):
            scopes = []
        for scope in scopes:
            for var, val in scope.items():
                if isinstance(val, torch.Tensor):
                    self._names.setdefault(id(val), var)

    def fail(self, what: str) -> TraceError:
        return TraceError(f"{self.kind} '{self.name}': {what}")

    def capture(self, tensor: torch.Tensor) -> str:
        name = self._names.get(id(tensor))
        if name is None:
            name = f"captured{len(self.captured)}"
            self._names[id(tensor)] = name
        try:
            check_tensor_name(name)
        except ValueError:
            name = f"captured_{name.lstrip('_')}" if name.lstrip("_") else f"captured{len(self.captured)}"
        self.captured[name] = tensor
        return name


def _to_sympy(x: Any, ctx: _Context, what: str) -> sympy.Basic:
    if isinstance(x, Sym):
        return x.expr
    if isinstance(x, bool):
        return sympy.true if x else sympy.false
    if isinstance(x, int):
        return sympy.Integer(x)
    if isinstance(x, float):
        if math.isnan(x):
            raise ctx.fail(f"{what}: NaN constants are not supported")
        if math.isinf(x):
            return sympy.oo if x > 0 else -sympy.oo
        return sympy.Float(x)
    if isinstance(x, torch.Tensor):
        raise ctx.fail(f"{what}: a tensor is used as a value; index it with b, h, q_idx or kv_idx "
                       "(e.g. bias[h]) so it is read at run time")
    if isinstance(x, TensorProxy):
        raise ctx.fail(f"{what}: runtime tensor '{x.name}' is used without indexing it")
    if isinstance(x, PartialRead):
        x.incomplete()
    raise ctx.fail(f"{what}: unsupported value of type {type(x).__name__}")


def _arith(e: sympy.Basic) -> sympy.Basic:
    """Booleans used in arithmetic count as 0/1, like torch's bool tensors."""
    if is_boolean(e):
        return piecewise((sympy.Integer(1), e), (sympy.Integer(0), sympy.true))
    return e


def _truth(e: sympy.Basic) -> sympy.Basic:
    """A tensor read as a truth value, as torch reads a bool or int mask tensor: nonzero."""
    return sympy.Ne(e, 0) if isinstance(e, sympy.Indexed) else e


def _boolean(e: sympy.Basic, ctx: _Context, op: str) -> sympy.Basic:
    e = _truth(e)
    if is_boolean(e):
        return e
    raise ctx.fail(f"'{op}' is only supported on boolean values (comparisons), not on {e}")


def _ctx_of(args: tuple) -> _Context:
    for a in args:
        if isinstance(a, (Sym, TensorProxy)):
            return a.ctx
        if isinstance(a, (tuple, list)):
            for b in a:
                if isinstance(b, (Sym, TensorProxy)):
                    return b.ctx
    raise RuntimeError("no traced value among the arguments")


def _unary(fn: Callable[[sympy.Basic], sympy.Basic]) -> Callable:
    return lambda ctx, name, x: fn(_arith(_to_sympy(x, ctx, name)))


def _where(ctx: _Context, name: str, cond, a=None, b=None):
    if a is None or b is None:
        raise ctx.fail("torch.where needs three arguments (condition, input, other)")
    c = _boolean(_to_sympy(cond, ctx, name), ctx, name)
    return piecewise((_arith(_to_sympy(a, ctx, name)), c), (_arith(_to_sympy(b, ctx, name)), sympy.true))


def _clamp(ctx: _Context, name: str, x, min=None, max=None):  # noqa: A002 - torch's names
    e = _arith(_to_sympy(x, ctx, name))
    if min is not None:
        e = sympy.Max(e, _to_sympy(min, ctx, name))
    if max is not None:
        e = sympy.Min(e, _to_sympy(max, ctx, name))
    return e


def _binary(fn: Callable) -> Callable:
    return lambda ctx, name, a, b: fn(_arith(_to_sympy(a, ctx, name)), _arith(_to_sympy(b, ctx, name)))


_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _cast(x: "Sym", dtype: torch.dtype | None) -> "Sym":
    """``x.to(dtype)`` on a 0-d stand-in: bool is "nonzero", a truth value in arithmetic is
    0/1, and floats are kept (the kernels compute in fp32 whatever the tensor's dtype)."""
    if dtype is None or not isinstance(dtype, torch.dtype):
        return x
    e = x.expr
    if dtype == torch.bool:
        return Sym(e if is_boolean(e) else sympy.Ne(_arith(e), 0), x.ctx)
    if dtype in _INTEGER_DTYPES and not is_boolean(e) and e.is_integer is not True:
        raise x.ctx.fail(f"casting {e} to {dtype} would truncate a float; integer casts are supported on "
                         "index expressions and truth values only")
    return Sym(_arith(e), x.ctx)


def _constant(ctx: _Context, op: str, value: Any, dtype: torch.dtype | None, size: tuple) -> "Sym":
    """``x.new_ones(())`` and friends: a 0-d constant (FlexAttention's and_masks / or_masks /
    noop_mask start from one)."""
    shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
    if any(d != 1 for d in shape):
        raise ctx.fail(f"{op} with size {tuple(shape)}: only 0-d (scalar) tensors can be traced")
    e = _to_sympy(value, ctx, op)
    if dtype == torch.bool:
        e = e if is_boolean(e) else (sympy.true if e != 0 else sympy.false)
    return Sym(e, ctx) if dtype is None else _cast(Sym(e, ctx), dtype)


def _like(value: Any) -> Callable:
    """torch.ones_like / zeros_like / full_like on a stand-in."""
    def make(ctx: _Context, name: str, x, fill=None, dtype=None, **_):
        return _constant(ctx, name, value if fill is None else fill, dtype, ()).expr
    return make


def _logic(fn: Callable) -> Callable:
    return lambda ctx, name, *xs: fn(*(_boolean(_to_sympy(x, ctx, name), ctx, name) for x in xs))


def _compare(fn: Callable) -> Callable:
    return lambda ctx, name, a, b: fn(_arith(_to_sympy(a, ctx, name)), _arith(_to_sympy(b, ctx, name)))


_TORCH_OPS: dict[Any, Callable] = {
    torch.exp: _unary(sympy.exp),
    torch.exp2: _unary(lambda x: sympy.Integer(2) ** x),
    torch.log: _unary(sympy.log),
    torch.log2: _unary(lambda x: sympy.log(x) / sympy.log(2)),
    torch.tanh: _unary(sympy.tanh),
    torch.sigmoid: _unary(lambda x: 1 / (1 + sympy.exp(-x))),
    torch.sin: _unary(sympy.sin),
    torch.cos: _unary(sympy.cos),
    torch.tan: _unary(sympy.tan),
    torch.sqrt: _unary(sympy.sqrt),
    torch.rsqrt: _unary(lambda x: 1 / sympy.sqrt(x)),
    torch.abs: _unary(sympy.Abs),
    torch.neg: _unary(lambda x: -x),
    torch.minimum: _binary(sympy.Min),
    torch.maximum: _binary(sympy.Max),
    torch.clamp: _clamp,
    torch.where: _where,
    torch.add: _binary(lambda a, b: a + b),
    torch.sub: _binary(lambda a, b: a - b),
    torch.mul: _binary(lambda a, b: a * b),
    torch.div: _binary(lambda a, b: a / b),
    torch.pow: _binary(lambda a, b: a ** b),
    torch.floor_divide: _binary(FloorDiv),
    torch.remainder: _binary(sympy.Mod),
    torch.eq: _compare(sympy.Eq),
    torch.ne: _compare(sympy.Ne),
    torch.lt: _compare(sympy.Lt),
    torch.le: _compare(sympy.Le),
    torch.gt: _compare(sympy.Gt),
    torch.ge: _compare(sympy.Ge),
    torch.logical_and: _logic(sympy.And),
    torch.logical_or: _logic(sympy.Or),
    torch.logical_xor: _logic(sympy.Xor),
    torch.logical_not: _logic(sympy.Not),
    torch.ones_like: _like(1),
    torch.zeros_like: _like(0),
    torch.full_like: _like(None),
}
for _method, _fn in [("exp", torch.exp), ("exp2", torch.exp2), ("log", torch.log), ("tanh", torch.tanh),
                     ("sigmoid", torch.sigmoid), ("sin", torch.sin), ("cos", torch.cos), ("tan", torch.tan),
                     ("sqrt", torch.sqrt), ("abs", torch.abs), ("clamp", torch.clamp), ("neg", torch.neg),
                     ("log2", torch.log2), ("rsqrt", torch.rsqrt)]:
    _TORCH_OPS[getattr(torch.Tensor, _method)] = _TORCH_OPS[_fn]


def _read(ctx: _Context, base: str, key: Any, ndim: int | None, parts: tuple = (),
          boolean: bool = False) -> "Sym | PartialRead":
    """``base[key]`` after the indices ``parts`` (chained indexing: ``t[i][j]``). A tensor of
    known rank read with fewer indices is a ``PartialRead`` awaiting the rest; a bool tensor's
    element is a truth value."""
    idx = key if isinstance(key, tuple) else (key,)
    parts = list(parts)
    for k in idx:
        i = len(parts)
        if isinstance(k, (slice, type(None), type(Ellipsis))) or isinstance(k, torch.Tensor):
            raise ctx.fail(f"indexing '{base}' with {k!r}: only integer index expressions are supported")
        e = _to_sympy(k, ctx, f"index {i} of '{base}'")
        if is_boolean(e) or e.is_integer is False:
            raise ctx.fail(f"index {i} of '{base}' is not an integer expression: {e}")
        parts.append(e)
    if ndim is not None and len(parts) > ndim:
        raise ctx.fail(f"tensor '{base}' has {ndim} dimensions but is indexed with {len(parts)} indices; "
                       "a read must select a single element")
    if ndim is not None and len(parts) < ndim:
        return PartialRead(base, tuple(parts), ndim, boolean, ctx)
    read = tensor_read(base, tuple(parts))
    return ReadSym(sympy.Ne(read, 0) if boolean else read, ctx, base, tuple(parts))


class PartialRead:
    """``t[i]`` of a tensor with more dimensions: only further indexing is allowed."""

    def __init__(self, base: str, parts: tuple, ndim: int, boolean: bool, ctx: _Context) -> None:
        self.base, self.parts, self.ndim, self.boolean, self.ctx = base, parts, ndim, boolean, ctx

    def __getitem__(self, key: Any) -> "Sym | PartialRead":
        return _read(self.ctx, self.base, key, self.ndim, self.parts, self.boolean)

    def incomplete(self, *_args, **_kwargs):
        raise self.ctx.fail(f"'{self.base}' is {self.ndim}-D but is read with {len(self.parts)} indices; "
                            "a read must select a single element")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        part = next(a for a in tuple(args) + tuple((kwargs or {}).values()) if isinstance(a, PartialRead))
        raise part.ctx.fail(
            f"{getattr(func, '__name__', func)} on '{part.base}' read with {len(part.parts)} of its {part.ndim} "
            "indices: operations over a tensor's dimension (dot products, sums) cannot be traced; compute the "
            "result into a tensor before the call and read one element of it")


for _op in ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "floordiv", "rfloordiv", "mod",
            "rmod", "pow", "rpow", "neg", "abs", "lt", "le", "gt", "ge", "eq", "ne", "and", "rand", "or", "ror",
            "invert", "bool", "index", "int", "float"):
    setattr(PartialRead, f"__{_op}__", PartialRead.incomplete)  # using t[i] of a 2-D t as a value


class TensorProxy:
    """Stand-in for a named runtime tensor parameter of a score_mod or mask_mod."""

    def __init__(self, name: str, ctx: _Context) -> None:
        self.name, self.ctx = name, ctx

    def __getitem__(self, key: Any) -> "Sym":
        return _read(self.ctx, self.name, key, None)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        ctx = _ctx_of(args)
        raise ctx.fail(f"{getattr(func, '__name__', func)} on runtime tensor: index it first (t[h])")


class Sym:
    """A traced value: wraps a sympy expression and records operations on it."""

    __slots__ = ("expr", "ctx")

    def __init__(self, expr: sympy.Basic, ctx: _Context) -> None:
        self.expr, self.ctx = expr, ctx

    # -- helpers
    def _lift(self, other: Any, op: str) -> sympy.Basic:
        return _to_sympy(other, self.ctx, f"operand of '{op}'")

    def _num(self, op: str, fn: Callable, other: Any, reverse: bool = False) -> "Sym":
        a, b = _arith(self.expr), _arith(self._lift(other, op))
        return Sym(fn(b, a) if reverse else fn(a, b), self.ctx)

    # -- arithmetic
    def __add__(self, o): return self._num("+", lambda a, b: a + b, o)
    def __radd__(self, o): return self._num("+", lambda a, b: a + b, o, True)
    def __sub__(self, o): return self._num("-", lambda a, b: a - b, o)
    def __rsub__(self, o): return self._num("-", lambda a, b: a - b, o, True)
    def __mul__(self, o): return self._num("*", lambda a, b: a * b, o)
    def __rmul__(self, o): return self._num("*", lambda a, b: a * b, o, True)
    def __truediv__(self, o): return self._num("/", lambda a, b: a / b, o)
    def __rtruediv__(self, o): return self._num("/", lambda a, b: a / b, o, True)
    def __floordiv__(self, o): return self._num("//", FloorDiv, o)
    def __rfloordiv__(self, o): return self._num("//", FloorDiv, o, True)
    def __mod__(self, o): return self._num("%", sympy.Mod, o)
    def __rmod__(self, o): return self._num("%", sympy.Mod, o, True)
    def __pow__(self, o): return self._num("**", lambda a, b: a ** b, o)
    def __rpow__(self, o): return self._num("**", lambda a, b: a ** b, o, True)
    def __neg__(self): return Sym(-_arith(self.expr), self.ctx)
    def __pos__(self): return self
    def __abs__(self): return Sym(sympy.Abs(_arith(self.expr)), self.ctx)

    # -- comparisons
    def _cmp(self, op: str, fn: Callable, o: Any) -> "Sym":
        return Sym(fn(_arith(self.expr), _arith(self._lift(o, op))), self.ctx)

    def __lt__(self, o): return self._cmp("<", sympy.Lt, o)
    def __le__(self, o): return self._cmp("<=", sympy.Le, o)
    def __gt__(self, o): return self._cmp(">", sympy.Gt, o)
    def __ge__(self, o): return self._cmp(">=", sympy.Ge, o)
    def __eq__(self, o): return self._cmp("==", sympy.Eq, o)  # type: ignore[override]
    def __ne__(self, o): return self._cmp("!=", sympy.Ne, o)  # type: ignore[override]
    __hash__ = None  # type: ignore[assignment]

    # -- logic
    def _logic(self, op: str, fn: Callable, o: Any, reverse: bool = False) -> "Sym":
        a = _boolean(self.expr, self.ctx, op)
        b = _boolean(self._lift(o, op), self.ctx, op)
        return Sym(fn(b, a) if reverse else fn(a, b), self.ctx)

    def __and__(self, o): return self._logic("&", sympy.And, o)
    def __rand__(self, o): return self._logic("&", sympy.And, o, True)
    def __or__(self, o): return self._logic("|", sympy.Or, o)
    def __ror__(self, o): return self._logic("|", sympy.Or, o, True)
    def __xor__(self, o): return self._logic("^", sympy.Xor, o)
    def __invert__(self): return Sym(sympy.Not(_boolean(self.expr, self.ctx, "~")), self.ctx)

    # -- what cannot be traced
    def __bool__(self):
        raise self.ctx.fail(
            f"Python control flow on a traced value ({self.expr}): `if`, `and`, `or`, `not` and bool() "
            "need concrete values; use torch.where, &, | and ~ instead")

    def __index__(self):
        raise self.ctx.fail(f"the traced value {self.expr} is used as a Python int (e.g. to index a list)")

    def __int__(self):
        raise self.ctx.fail(f"int() of the traced value {self.expr}")

    def __float__(self):
        raise self.ctx.fail(f"float() of the traced value {self.expr}")

    def __getitem__(self, key):
        raise self.ctx.fail(f"indexing the traced value {self.expr}")

    def __iter__(self):
        raise self.ctx.fail(f"iterating over the traced value {self.expr}")

    # -- tensor-like methods and attributes a FlexAttention mod may use (on 0-d tensors)
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # stand-ins live on no device; new_ones(device=...) ignores it

    @property
    def dtype(self) -> torch.dtype:
        return torch.bool if is_boolean(self.expr) else torch.int32 if self.expr.is_integer else torch.float32

    @property
    def shape(self) -> torch.Size:
        return torch.Size()

    @property
    def ndim(self) -> int:
        return 0

    def dim(self) -> int: return 0
    def size(self, dim=None): return torch.Size() if dim is None else self[dim]

    def to(self, *args, **kwargs):
        dtype = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), None))
        return _cast(self, dtype)

    def type(self, dtype=None): return _cast(self, dtype)
    def bool(self): return _cast(self, torch.bool)
    def int(self): return _cast(self, torch.int32)
    def long(self): return _cast(self, torch.int64)
    def float(self): return _cast(self, torch.float32)
    def half(self): return _cast(self, torch.float16)
    def bfloat16(self): return _cast(self, torch.bfloat16)
    def double(self): return _cast(self, torch.float64)
    def new_ones(self, *size, dtype=None, **_): return _constant(self.ctx, "new_ones", 1, dtype, size)
    def new_zeros(self, *size, dtype=None, **_): return _constant(self.ctx, "new_zeros", 0, dtype, size)
    def new_full(self, size, fill_value, dtype=None, **_):
        return _constant(self.ctx, "new_full", fill_value, dtype, (size,))
    def new_tensor(self, data, dtype=None, **_): return _constant(self.ctx, "new_tensor", data, dtype, ())
    def exp(self): return Sym(sympy.exp(_arith(self.expr)), self.ctx)
    def abs(self): return abs(self)
    def tanh(self): return Sym(sympy.tanh(_arith(self.expr)), self.ctx)
    def sigmoid(self): return Sym(_TORCH_OPS[torch.sigmoid](self.ctx, "sigmoid", self), self.ctx)
    def clamp(self, min=None, max=None): return Sym(_clamp(self.ctx, "clamp", self, min, max), self.ctx)  # noqa: A002
    def maximum(self, o): return Sym(_TORCH_OPS[torch.maximum](self.ctx, "maximum", self, o), self.ctx)
    def minimum(self, o): return Sym(_TORCH_OPS[torch.minimum](self.ctx, "minimum", self, o), self.ctx)
    def logical_and(self, o): return self & o
    def logical_or(self, o): return self | o
    def logical_not(self): return ~self

    def __getattr__(self, name: str):
        raise self.ctx.fail(f"'.{name}' on a traced value is not supported")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ctx = _ctx_of(tuple(args) + tuple(kwargs.values()))
        name = getattr(func, "__name__", repr(func))
        if func is torch.Tensor.__getitem__:
            tensor, key = args
            return _read(ctx, ctx.capture(tensor), key, tensor.ndim, boolean=tensor.dtype == torch.bool)
        op = _TORCH_OPS.get(func)
        if op is None:
            raise ctx.fail(f"unsupported operation torch.{name}; supported: arithmetic, comparisons, &, |, ~, "
                           "abs, torch.where/exp/exp2/log/tanh/sigmoid/sin/cos/tan/sqrt/abs/minimum/maximum/clamp "
                           "and indexing tensors with index expressions")
        return Sym(op(ctx, name, *args, **kwargs), ctx)


class ReadSym(Sym):
    """An element read from a tensor; indexing it again reads with more indices (a runtime
    tensor's rank is unknown while tracing, so ``t[i][j]`` is the read ``t[i, j]``)."""

    __slots__ = ("base", "parts")

    def __init__(self, expr: sympy.Basic, ctx: _Context, base: str, parts: tuple) -> None:
        super().__init__(expr, ctx)
        self.base, self.parts = base, parts

    def __getitem__(self, key):
        if isinstance(self.expr, sympy.Indexed):
            return _read(self.ctx, self.base, key, None, self.parts)
        return super().__getitem__(key)


def _fn_name(fn: Callable) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return name if name.isidentifier() and name != "<lambda>" else "lambda"


def _trace(fn: Callable, kind: str, fixed: tuple[sympy.Symbol, ...], name: str | None):
    if not callable(fn):
        raise TypeError(f"{kind} must be a function, got {type(fn).__name__}")
    name = name or _fn_name(fn)
    ctx = _Context(fn, kind, name)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TraceError(f"{kind} '{name}': cannot read its signature ({exc})") from None
    params = list(sig.parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise TraceError(f"{kind} '{name}': *args and **kwargs are not supported; name each runtime tensor")
    if len(params) < len(fixed):
        expected = ", ".join(s.name for s in fixed)
        raise TraceError(f"{kind} '{name}' takes {len(params)} parameters; expected ({expected}, *tensors)")
    args: list[Any] = [Sym(s, ctx) for s in fixed]
    for p in params[len(fixed):]:
        if isinstance(p.default, torch.Tensor):
            args.append(p.default)
            ctx._names.setdefault(id(p.default), p.name)
            continue
        try:
            check_tensor_name(p.name)
        except ValueError as exc:
            raise TraceError(f"{kind} '{name}': runtime tensor parameter: {exc}") from None
        args.append(TensorProxy(p.name, ctx))
    try:
        with torch.no_grad():
            result = fn(*args)
    except TraceError:
        raise
    except Exception as exc:  # the user's code failed on stand-ins: say where
        raise TraceError(f"{kind} '{name}' failed while tracing: {type(exc).__name__}: {exc}") from exc
    expr = _to_sympy(result, ctx, "return value")
    _check_defined(expr, ctx)
    return expr, ctx, name


def _check_defined(expr: sympy.Basic, ctx: _Context) -> None:
    """Refuse a result that sympy folded to NaN, an unsigned infinity or a range: it is a bug
    in the user's function, and naming the function here beats a text-parser error later."""
    problem = undefined_value(expr)
    if problem is not None:
        raise ctx.fail(f"the result contains {problem}: {expr}")


def _canonical(expr: sympy.Basic, fixed: tuple[sympy.Symbol, ...], kind: str, name: str) -> sympy.Basic:
    from ..ir.text import IRSyntaxError, canonical_expr

    arities = {str(r.base.label): len(r.indices) for r in expr.atoms(sympy.Indexed)}
    try:
        return canonical_expr(expr, arities, {s.name for s in fixed})
    except IRSyntaxError as exc:
        # reading the text back can fold further (a Float past the double range becomes oo,
        # and oo - oo is NaN); that is still the user's function, so name it
        raise TraceError(f"{kind} '{name}': {str(exc).removeprefix('<traced>: ')}") from None


def trace_score_mod(fn: Callable, name: str | None = None) -> ScoreMod:
    """Trace ``fn(score, b, h, q_idx, kv_idx, *tensors)`` into a ``ScoreMod``."""
    fixed = (SCORE, B, H, Q_IDX, KV_IDX)
    expr, ctx, name = _trace(fn, "score_mod", fixed, name)
    if is_boolean(expr):
        raise TraceError(f"score_mod '{name}' returns a boolean ({expr}); did you mean @ag.mask_mod?")
    expr = _canonical(expr, fixed, "score_mod", name)
    return ScoreMod.build(expr, name, {k: t for k, t in ctx.captured.items() if reads_tensor(expr, k)}, fn)


def trace_mask_mod(fn: Callable, name: str | None = None) -> MaskMod:
    """Trace ``fn(b, h, q_idx, kv_idx, *tensors)`` into a ``MaskMod``."""
    fixed = (B, H, Q_IDX, KV_IDX)
    pred, ctx, name = _trace(fn, "mask_mod", fixed, name)
    pred = _truth(pred)  # `return keep[b, h, q_idx // 64, kv_idx // 64]` on a bool or int tensor
    if not is_boolean(pred):
        raise TraceError(f"mask_mod '{name}' must return a boolean (a comparison), got {pred}")
    pred = _canonical(pred, fixed, "mask_mod", name)
    return MaskMod.build(pred, name, {k: t for k, t in ctx.captured.items() if reads_tensor(pred, k)}, fn)


def score_mod(fn: Callable | None = None, *, name: str | None = None):
    """Decorator: ``@ag.score_mod`` turns ``fn(score, b, h, q_idx, kv_idx, *tensors)`` into IR."""
    if fn is None:
        return lambda f: trace_score_mod(f, name)
    return trace_score_mod(fn, name)


def mask_mod(fn: Callable | None = None, *, name: str | None = None):
    """Decorator: ``@ag.mask_mod`` turns ``fn(b, h, q_idx, kv_idx, *tensors) -> bool`` into IR."""
    if fn is None:
        return lambda f: trace_mask_mod(f, name)
    return trace_mask_mod(fn, name)


def as_score_mod(obj: Any) -> ScoreMod:
    if isinstance(obj, ScoreMod):
        return obj
    if callable(obj):
        return trace_score_mod(obj)
    raise TypeError(f"score must be a score_mod function, got {type(obj).__name__}")


def as_mask(obj: Any, what: str = "mask") -> Mask:
    if isinstance(obj, Mask):
        return obj
    if callable(obj):
        return trace_mask_mod(obj)
    raise TypeError(f"{what} must be a mask (ag.causal(), a mask_mod, ...), got {type(obj).__name__}")


# ag.Variant(score=fn, mask=ag.causal() & fn) traces plain functions through these; the IR
# cannot import the frontend (it sits below it), so the frontend hands them over.
register_coercions(score=as_score_mod, mask=as_mask)
