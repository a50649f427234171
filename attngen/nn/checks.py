"""Argument checks shared by the attngen.nn modules: each error names the module, the
argument and what was expected, before anything is built (constructor) or computed (forward)."""
from __future__ import annotations

import torch


def positive_int(owner: str, name: str, value: object) -> int:
    """``value`` as an int >= 1, or TypeError / ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    return value


def head_dim(owner: str, dim: object, num_heads: object) -> int:
    """The per-head width ``dim // num_heads``; ``dim`` must split evenly over the heads."""
    dim, num_heads = positive_int(owner, "dim", dim), positive_int(owner, "num_heads", num_heads)
    if dim % num_heads:
        raise ValueError(f"{owner}: dim ({dim}) must be divisible by num_heads ({num_heads})")
    return dim // num_heads


def qk_scale(owner: str, value: object, head_width: int) -> float:
    """The score scale: ``value`` when given, else 1/sqrt(head_dim) (the usual default)."""
    if value is None:
        return head_width ** -0.5
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: qk_scale must be a number or None, got {value!r}")
    return float(value)


def dropout_rate(owner: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: proj_drop must be a probability in [0, 1), got {value!r}")
    return float(value)


def token_input(owner: str, x: object, layout: str, rank: int, dim: int) -> None:
    """``x`` must be a ``rank``-D tensor whose last axis is ``dim`` wide (the layout is named
    in the message). Shapes are static under torch.compile, so this costs no guard on data."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: x must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{owner}: x must be {rank}-D {layout}, got shape {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise ValueError(f"{owner}: x's last axis must be dim={dim} wide {layout}, got shape {tuple(x.shape)}")
