"""``NeighborhoodAttention1D/2D/3D``: NATTEN's modules (constructor and (B, *spatial, C) layout)
on attngen's neighborhood kernels."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..compiler import compile as compile_variant
from ..ir.nodes import Neighborhood, Variant
from . import checks


def per_axis(owner: str, name: str, value: object, rank: int) -> tuple:
    """One value per axis: a scalar repeated ``rank`` times, or a tuple/list of exactly ``rank``."""
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(f"{owner}: {name} needs {rank} values (one per axis) or one for all, "
                             f"got {tuple(value)!r}")
        return tuple(value)
    return (value,) * rank


class NeighborhoodAttention(nn.Module):
    """Multi-head neighborhood attention over a ``rank``-D token grid (NATTEN's semantics).

    ``x`` (B, *spatial, dim) -> (B, *spatial, dim). A ``qkv`` ``nn.Linear`` makes q, k and v,
    which reach the kernel as views; ``proj`` maps the heads back to ``dim``. The grid is
    the input's spatial shape, read at every call (any size with ``kernel_size * dilation``
    <= its length on each axis).

    Args (NATTEN's): dim (channels; divisible by num_heads), num_heads, kernel_size,
    dilation, stride, is_causal (each one value for every axis or a tuple with one per axis;
    SEMANTICS.md defines the window), qkv_bias, qk_scale (default head_dim ** -0.5),
    proj_drop (dropout after the output projection).

    The variant is the one ``ag.na1d/2d/3d`` compile for the same geometry, compiled once
    here. ``forward`` does no Python work that depends on tensor values.
    """

    rank: int = 0  # set by the 1-D/2-D/3-D subclasses

    def __init__(self, dim: int, num_heads: int, kernel_size: int | tuple[int, ...], dilation: int | tuple[int, ...] = 1,
                 stride: int | tuple[int, ...] = 1, is_causal: bool | tuple[bool, ...] = False, qkv_bias: bool = True,
                 qk_scale: float | None = None, proj_drop: float = 0.0) -> None:
        super().__init__()
        owner = type(self).__name__
        if self.rank not in (1, 2, 3):
            raise TypeError(f"{owner}: use NeighborhoodAttention1D, 2D or 3D")
        self.head_dim = checks.head_dim(owner, dim, num_heads)
        self.dim, self.num_heads = dim, num_heads
        geometry = {name: per_axis(owner, name, value, self.rank) for name, value in
                    (("kernel_size", kernel_size), ("dilation", dilation), ("stride", stride), ("is_causal", is_causal))}
        try:
            mask = Neighborhood(**geometry)
        except (TypeError, ValueError) as err:  # the node's message names the argument
            raise type(err)(f"{owner}: {err}") from None
        self.kernel_size, self.dilation = mask.kernel_size, mask.dilation
        self.stride, self.is_causal = mask.stride, mask.is_causal
        self.scale = checks.qk_scale(owner, qk_scale, self.head_dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(checks.dropout_rate(owner, proj_drop))
        self.variant = Variant(mask=mask, name=f"na{self.rank}d")  # the same kernel as ag.na{rank}d
        self.kernel = compile_variant(self.variant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = ", ".join("XYZ"[: self.rank])
        checks.token_input(type(self).__name__, x, f"(B, {axes}, dim)", self.rank + 2, self.dim)
        B, *spatial, C = x.shape
        L, H, hd = math.prod(spatial), self.num_heads, self.head_dim
        # (B, *spatial, 3 * dim) -> three (B, H, L, hd) views; tokens row-major over the grid
        q, k, v = self.qkv(x).view(B, L, 3, H, hd).transpose(1, 3).unbind(2)
        out = self.attend(q, k, v, tuple(spatial))
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, *spatial, C)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               spatial_shape: tuple[int, ...]) -> torch.Tensor:
        """The attention core on (B, H, L, hd) views, tokens row-major over ``spatial_shape``.

        A subclass may replace it to run the same module on another kernel (the training
        example's FlexAttention run does)."""
        return self.kernel(q, k, v, scale=self.scale, spatial_shape=spatial_shape)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"kernel_size={self.kernel_size}, dilation={self.dilation}, stride={self.stride}, "
                f"is_causal={self.is_causal}, scale={self.scale}")


class NeighborhoodAttention1D(NeighborhoodAttention):
    """1-D neighborhood attention, ``x`` (B, L, dim); see ``NeighborhoodAttention``."""

    rank = 1


class NeighborhoodAttention2D(NeighborhoodAttention):
    """2-D neighborhood attention, ``x`` (B, X, Y, dim); see ``NeighborhoodAttention``."""

    rank = 2


class NeighborhoodAttention3D(NeighborhoodAttention):
    """3-D neighborhood attention, ``x`` (B, X, Y, Z, dim); see ``NeighborhoodAttention``."""

    rank = 3
