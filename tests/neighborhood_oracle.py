"""Brute-force neighborhood mask: SEMANTICS.md's per-axis rule, written out literally.

Independent of attngen (no import from it): plain Python integers, one loop over every
(query, key) pair, indices unravelled row-major (last axis fastest). For one axis of
length L, kernel k, dilation d, stride s and query coordinate x (SEMANTICS.md):

    g   = x mod d ;  x' = x div d ;  L_g = ceil((L - g) / d)      (dilation group)
    non-causal: leader = min(floor(x'/s)*s + floor(s/2), L_g - 1)
                start  = clamp(leader - floor(k/2), 0, L_g - k) ;  keys x'' in [start, start + k)
    causal:     leader = min(floor(x'/s)*s + s - 1, L_g - 1)
                start  = max(leader - k + 1, 0) ;               keys x'' in [start, x']
    key coordinate y = x'' * d + g

A query attends key j when the rule holds on every axis.
"""
from __future__ import annotations

import functools
import math

import torch


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def axis_keys(L: int, k: int, d: int, s: int, causal: bool, x: int) -> tuple[int, ...]:
    """The key coordinates query coordinate ``x`` attends on one axis (sorted)."""
    assert 0 <= x < L and 1 <= s <= k and k * d <= L, (L, k, d, s, x)
    g = x % d
    xg = x // d
    Lg = _ceil_div(L - g, d)
    if causal:
        leader = min((xg // s) * s + s - 1, Lg - 1)
        start = max(leader - k + 1, 0)
        group_keys = range(start, xg + 1)
    else:
        leader = min((xg // s) * s + s // 2, Lg - 1)
        start = min(max(leader - k // 2, 0), Lg - k)
        group_keys = range(start, start + k)
    return tuple(xpp * d + g for xpp in group_keys)


def axis_attends(L: int, k: int, d: int, s: int, causal: bool, x: int, y: int) -> bool:
    return y in axis_keys(L, k, d, s, causal, x)


def unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major coordinates of a flat index (last axis fastest)."""
    coords = []
    for size in reversed(shape):
        coords.append(index % size)
        index //= size
    return tuple(reversed(coords))


def _per_axis(value, rank: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank


def geometry(shape, kernel_size, dilation=1, stride=1, is_causal=False) -> tuple[tuple, ...]:
    """Per-axis (L, k, d, s, causal) tuples."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    rank = len(shape)
    fields = [_per_axis(f, rank) for f in (kernel_size, dilation, stride, is_causal)]
    assert all(len(f) == rank for f in fields), (shape, fields)
    return tuple((L, *vals) for L, *vals in zip(shape, *fields))


@functools.lru_cache(maxsize=512)
def _mask(geom: tuple[tuple, ...]) -> torch.Tensor:
    shape = tuple(a[0] for a in geom)
    n = math.prod(shape)
    coords = [unravel(i, shape) for i in range(n)]
    rows = []
    for i in range(n):
        xs = coords[i]
        row = []
        for j in range(n):
            ys = coords[j]
            row.append(all(axis_attends(L, k, d, s, c, x, y) for (L, k, d, s, c), x, y in zip(geom, xs, ys)))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool).view(n, n)


def mask(shape, kernel_size, dilation=1, stride=1, is_causal=False) -> torch.Tensor:
    """(L, L) bool: M[i, j] true when query i attends key j on the grid ``shape``."""
    return _mask(geometry(shape, kernel_size, dilation, stride, is_causal)).clone()


def mask_of(na, shape) -> torch.Tensor:
    """The same for an object with NATTEN-style fields (e.g. an ``ag.neighborhood``)."""
    return mask(shape, na.kernel_size, na.dilation, na.stride, na.is_causal)


__all__ = ["axis_attends", "axis_keys", "geometry", "mask", "mask_of", "unravel"]
