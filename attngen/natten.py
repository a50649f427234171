"""NATTEN-style entry points: ``ag.na1d``, ``ag.na2d``, ``ag.na3d``.

They take and return NATTEN's layout (B, *spatial, H, D). The kernels work on
(B, H, L, D) with any strides, so the inputs are passed as views (no copies when the
spatial axes are contiguous with each other, as they are in NATTEN's layout) and the
output is written straight into a (B, *spatial, H, Dv) tensor.
"""
from __future__ import annotations

import functools

import torch

from .ir.nodes import Neighborhood, Variant
from .runtime.attention import CompiledAttention
from .runtime.ops import kernel_for


def _per_axis(name: str, value: object, rank: int) -> tuple:
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(f"na{rank}d: {name} needs {rank} values (one per axis), got {tuple(value)!r}")
        return tuple(value)
    return (value,) * rank


@functools.lru_cache(maxsize=64)
def _compile(kernel_size: tuple, dilation: tuple, stride: tuple, is_causal: tuple) -> CompiledAttention:
    from .compiler import compile as compile_variant

    rank = len(kernel_size)
    mask = Neighborhood(kernel_size, dilation, stride, is_causal)
    return compile_variant(Variant(mask=mask, name=f"na{rank}d"))


@torch._dynamo.assume_constant_result
def _kernel_key(kernel_size: tuple, dilation: tuple, stride: tuple, is_causal: tuple) -> str:
    """The compiled geometry's kernel key: a constant for torch.compile, which then reads
    the kernel from the ops' registry instead of tracing the compiler."""
    return _compile(kernel_size, dilation, stride, is_causal).key


def _compiled(*geometry: tuple) -> CompiledAttention:
    return kernel_for(_kernel_key(*geometry))


def _grid_view(x: torch.Tensor, name: str, rank: int) -> torch.Tensor:
    """(B, *spatial, H, D) -> (B, H, L, D), a view whenever the strides allow one."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"na{rank}d: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != rank + 3:
        raise ValueError(f"na{rank}d: {name} must be {rank + 3}-D (B, {', '.join('XYZ'[:rank])}, H, D), "
                         f"got shape {tuple(x.shape)}")
    return x.flatten(1, rank).transpose(1, 2)


def neighborhood_attention(rank: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           kernel_size: int | tuple[int, ...], stride: int | tuple[int, ...] = 1,
                           dilation: int | tuple[int, ...] = 1, is_causal: bool | tuple[bool, ...] = False,
                           scale: float | None = None) -> torch.Tensor:
    """Neighborhood attention over a rank-D grid in NATTEN's layout (B, *spatial, H, D)."""
    qg, kg, vg = _grid_view(q, "q", rank), _grid_view(k, "k", rank), _grid_view(v, "v", rank)
    spatial = tuple(q.shape[1:1 + rank])
    for name, x in (("k", k), ("v", v)):
        if tuple(x.shape[1:1 + rank]) != spatial:
            raise ValueError(f"na{rank}d: {name}'s spatial shape {tuple(x.shape[1:1 + rank])} differs from q's "
                             f"{spatial}")
    geometry = tuple(_per_axis(n, val, rank) for n, val in
                     (("kernel_size", kernel_size), ("dilation", dilation), ("stride", stride),
                      ("is_causal", is_causal)))
    attn = _compiled(*geometry)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        # autograd owns the output: return it as a (B, *spatial, H, Dv) view
        out = attn(qg, kg, vg, scale=scale, spatial_shape=spatial)
        return out.transpose(1, 2).unflatten(1, spatial)
    B, H, Dv = q.shape[0], q.shape[-2], v.shape[-1]
    out = torch.empty((B, *spatial, H, Dv), dtype=q.dtype, device=q.device)
    attn(qg, kg, vg, scale=scale, spatial_shape=spatial, out=out.flatten(1, rank).transpose(1, 2))
    return out


def na1d(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None) -> torch.Tensor:
    """1-D neighborhood attention; q, k, v (B, L, H, D) -> (B, L, H, Dv)."""
    return neighborhood_attention(1, q, k, v, kernel_size, stride, dilation, is_causal, scale)


def na2d(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None) -> torch.Tensor:
    """2-D neighborhood attention; q, k, v (B, X, Y, H, D) -> (B, X, Y, H, Dv)."""
    return neighborhood_attention(2, q, k, v, kernel_size, stride, dilation, is_causal, scale)


def na3d(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None) -> torch.Tensor:
    """3-D neighborhood attention; q, k, v (B, X, Y, Z, H, D) -> (B, X, Y, Z, H, Dv)."""
    return neighborhood_attention(3, q, k, v, kernel_size, stride, dilation, is_causal, scale)


__all__ = ["na1d", "na2d", "na3d", "neighborhood_attention"]
