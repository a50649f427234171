"""Check every call's inputs before anything runs on them.

Errors are ``TypeError`` (wrong kind of object, missing or unexpected tensor, dtype) or
``ValueError`` (shapes, devices, sizes), and always name the argument.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

import torch

from ..ir.nodes import TensorParam

T = TypeVar("T")

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
# The kernels add each (batch, head) slice's base offset in 64-bit integers (so tensors of
# any size work), but index inside a slice, and inside runtime tensors, with 32-bit
# products: position * stride costs one 32-bit multiply per element that way. A layout
# whose offsets inside a slice reach 2**31 would wrap around; it is refused here instead.
MAX_OFFSET = 2 ** 31 - 1


@dataclass(frozen=True)
class Problem:
    """The sizes of one call."""

    B: int
    HQ: int
    HKV: int
    Lq: int
    Lkv: int
    D: int
    DV: int
    dtype: torch.dtype
    device: torch.device


def in_graph(*tensors: torch.Tensor) -> bool:
    """Whether this call is being traced into a graph (torch.compile, torch.export, or
    make_fx-style tracing with tensor subclasses), where the launch must be a custom op."""
    return torch.compiler.is_compiling() or any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors)


def _tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _span(t: torch.Tensor, dims: range) -> int:
    """The largest element offset reached through ``dims`` (from the tensor's base)."""
    return sum((t.shape[d] - 1) * abs(t.stride(d)) for d in dims if t.shape[d] > 0)


def check_slice_offsets(t: torch.Tensor, name: str, dims: range = range(2, 4),
                        what: str = "one (batch, head) slice") -> None:
    """A tensor whose ``dims`` (a (B, H, L, D) tensor's (L, D) slice by default) the kernels
    can index with 32-bit offsets."""
    span = _span(t, dims)
    if span > MAX_OFFSET:
        raise ValueError(f"{name}: offsets inside {what} reach {span} (shape {tuple(t.shape)}, "
                         f"strides {t.stride()}), past 2**31 - 1; the kernels index it with 32-bit "
                         f"offsets: pass {name}.contiguous()")


def check_head_dims(D: int, DV: int) -> None:
    for name, val in (("q/k head dim D", D), ("v head dim Dv", DV)):
        if not MIN_HEAD_DIM <= val <= MAX_HEAD_DIM:
            raise ValueError(f"{name} is {val}; supported: {MIN_HEAD_DIM}..{MAX_HEAD_DIM}")


_CHECKED_QKV: dict[tuple, Problem] = {}  # check_qkv's memo: layouts that passed
MEMO_SIZE = 256  # layouts a checker remembers (dynamic shapes: the memo is cleared when full)


def remembered(memo: dict, key: tuple, check: Callable[[], T]) -> T:
    """``memo[key]``, or ``check()``'s result stored there (a check that raises stores nothing)."""
    found = memo.get(key)
    if found is None:
        found = check()
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[key] = found
    return found


def check_qkv(q: object, k: object, v: object, allow_float64: bool = False) -> Problem:
    """Shapes, dtypes and devices of q, k, v (``allow_float64``: the reference's gradcheck).
    A layout that passed once (shapes, strides, dtypes, devices) is not checked again: the
    checks cost about a third of an eager call's host time."""
    q, k, v = _tensor(q, "q"), _tensor(k, "k"), _tensor(v, "v")
    if in_graph(q, k, v):  # traced: hashing symbolic sizes would specialize them
        return _check_qkv(q, k, v, allow_float64)
    key = (q.shape, q.stride(), q.dtype, q.device, k.shape, k.stride(), k.dtype, k.device,
           v.shape, v.stride(), v.dtype, v.device, allow_float64)
    return remembered(_CHECKED_QKV, key, lambda: _check_qkv(q, k, v, allow_float64))


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allow_float64: bool) -> Problem:
    dtypes = DTYPES + ((torch.float64,) if allow_float64 else ())
    for name, t, dims in (("q", q, "(B, Hq, Lq, D)"), ("k", k, "(B, Hkv, Lkv, D)"), ("v", v, "(B, Hkv, Lkv, Dv)")):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D {dims}, got shape {tuple(t.shape)}")
        if t.dtype not in dtypes:
            raise TypeError(f"{name} must be float16, bfloat16 or float32"
                            f"{' (or float64)' if allow_float64 else ''}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; put them on one device")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"q is on {q.device}; attngen runs on CUDA, or on the CPU under the Triton interpreter")
    B, HQ, Lq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q has {B}, k has {k.shape[0]}, v has {v.shape[0]}")
    HKV, Lkv = k.shape[1], k.shape[2]
    if v.shape[1] != HKV:
        raise ValueError(f"v has {v.shape[1]} heads but k has {HKV}")
    if v.shape[2] != Lkv:
        raise ValueError(f"v has {v.shape[2]} positions but k has {Lkv}")
    if HQ % HKV:
        raise ValueError(f"q's head count ({HQ}) must be a multiple of k's ({HKV}) for GQA/MQA")
    if k.shape[3] != D:
        raise ValueError(f"k's head dim ({k.shape[3]}) must equal q's ({D})")
    DV = v.shape[3]
    check_head_dims(D, DV)
    if not allow_float64:  # the reference materializes in torch: no 32-bit offsets there
        for name, t in (("q", q), ("k", k), ("v", v)):
            check_slice_offsets(t, name)
    return Problem(B, HQ, HKV, Lq, Lkv, D, DV, q.dtype, q.device)


def check_scale(scale: object, D: int) -> float:
    if scale is None:
        return D ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python number or None, got {type(scale).__name__}")
    if scale != scale or scale in (float("inf"), float("-inf")):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_runtime_tensors(params: tuple[TensorParam, ...], given: Mapping[str, object],
                          captured: Mapping[str, object], p: Problem, variant: str) -> dict[str, torch.Tensor]:
    """Match keyword tensors to the variant's declarations; returns every tensor by name."""
    runtime = {t.name: t for t in params if t.source == "runtime"}
    missing = sorted(set(runtime) - set(given))
    if missing:
        raise TypeError(f"variant '{variant}' needs runtime tensor(s) {', '.join(missing)} "
                        f"(pass them by keyword, e.g. {missing[0]}=...)")
    unexpected = sorted(set(given) - set(runtime))
    if unexpected:
        expected = ", ".join(sorted(runtime)) or "none"
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unexpected)}; variant '{variant}' "
                        f"takes runtime tensors: {expected}")
    out: dict[str, torch.Tensor] = {}
    for t in params:
        value = given[t.name] if t.source == "runtime" else captured.get(t.name)
        what = t.name if t.source == "runtime" else f"captured tensor {t.name}"
        if value is None:
            raise TypeError(f"{what} is not bound; use variant.with_captures({t.name}=...)")
        value = _tensor(value, what)
        if value.dim() != t.ndim:
            raise ValueError(f"{what} must be {t.ndim}-D (it is indexed with {t.ndim} indices), "
                             f"got shape {tuple(value.shape)}")
        if value.device != p.device:
            raise ValueError(f"{what} is on {value.device} but q is on {p.device}")
        if value.dtype.is_complex:
            raise TypeError(f"{what} has dtype {value.dtype}; use a real floating, integer or bool dtype")
        span = _span(value, range(value.dim()))
        if span > MAX_OFFSET:
            raise ValueError(f"{what}: its offsets reach {span} (shape {tuple(value.shape)}, strides "
                             f"{value.stride()}), past 2**31 - 1; kernels read runtime tensors with 32-bit offsets")
        out[t.name] = value
    if "sinks" in out:  # ag.softmax(sink=True)'s per-head logits
        sinks = out["sinks"]
        if not sinks.dtype.is_floating_point:
            raise TypeError(f"sinks must be a floating tensor, got {sinks.dtype}")
        if tuple(sinks.shape) != (p.HQ,):
            raise ValueError(f"sinks must have shape (Hq,) = ({p.HQ},), got {tuple(sinks.shape)}")
    if "document_ids" in out:
        doc = out["document_ids"]
        if doc.dtype.is_floating_point:
            raise TypeError(f"document_ids must be an integer tensor, got {doc.dtype}")
        if p.Lq != p.Lkv:
            raise ValueError(f"document masks need Lq == Lkv (self-attention), got Lq={p.Lq}, Lkv={p.Lkv}")
        if tuple(doc.shape) != (p.B, p.Lq):
            raise ValueError(f"document_ids must have shape (B, L) = ({p.B}, {p.Lq}), got {tuple(doc.shape)}")
    return out


def resolve_spatial(mask, spatial_shape: object, p: Problem):
    """The neighborhood of ``mask`` resolved at ``spatial_shape`` (three axes), checked."""
    if spatial_shape is None:
        raise TypeError("spatial_shape is required for neighborhood variants, e.g. spatial_shape=(H, W)")
    if p.Lq != p.Lkv:
        raise ValueError(f"neighborhood attention needs Lq == Lkv, got Lq={p.Lq}, Lkv={p.Lkv}")
    if isinstance(spatial_shape, (tuple, list)) and all(type(s) is int for s in spatial_shape):
        try:
            return _resolved(mask, tuple(spatial_shape), p.Lq)  # the usual call: remembered
        except TypeError:  # an unhashable mask; or the geometry's own TypeError, raised again below
            pass
    return _resolve(mask, spatial_shape, p.Lq)


def _resolve(mask, spatial_shape: object, length: int) -> list:
    from ..ir.nodes import Neighborhood
    from .neighborhood import resolve_axes

    return [resolve_axes(na, spatial_shape, length) for na in mask.leaves() if isinstance(na, Neighborhood)]


@functools.lru_cache(maxsize=256)
def _resolved(mask, spatial_shape: tuple[int, ...], length: int) -> list:
    """``_resolve`` for a grid of plain ints: every eager call of a neighborhood variant asks
    it, and the geometry's checks cost more than a launch's arithmetic. Errors are raised,
    never cached. The result is shared: callers read it."""
    return _resolve(mask, spatial_shape, length)


def check_out(out: object, p: Problem, inputs: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """A caller-provided output tensor: (B, Hq, Lq, Dv), q's dtype and device, not sharing
    memory with ``inputs`` (q, k, v). Traced calls (fake tensors have no memory) skip the
    memory check; the eager call of the same code makes it."""
    out = _tensor(out, "out")
    if tuple(out.shape) != (p.B, p.HQ, p.Lq, p.DV):
        raise ValueError(f"out must have shape (B, Hq, Lq, Dv) = {(p.B, p.HQ, p.Lq, p.DV)}, got {tuple(out.shape)}")
    if out.dtype != p.dtype or out.device != p.device:
        raise TypeError(f"out must be {p.dtype} on {p.device}, got {out.dtype} on {out.device}")
    if not in_graph(out, *inputs) and out.data_ptr() in {t.data_ptr() for t in inputs}:  # it would overwrite rows still to be read
        raise ValueError("out must not share memory with q, k or v (it is written while they are read)")
    check_slice_offsets(out, "out")
    return out


def check_call_options(return_lse: object, config: object, deterministic: object, algorithm: str, variant: str,
                       config_type: type) -> bool:
    """The options every softmax/sigmoid call takes; returns ``deterministic`` resolved (None:
    ``torch.are_deterministic_algorithms_enabled()``)."""
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {return_lse!r}")
    if return_lse and algorithm != "online_softmax":
        raise ValueError(f"return_lse: variant '{variant}' uses {algorithm} normalization, which has no log-sum-exp")
    if config is not None and not isinstance(config, config_type):
        raise TypeError(f"config must be an attngen {config_type.__name__}, got {type(config).__name__}")
    if deterministic is None:
        return torch.are_deterministic_algorithms_enabled()
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool or None, got {deterministic!r}")
    return deterministic
