"""Moving whole tensors in and out of a context-parallel layout across the group."""
from __future__ import annotations

from typing import Union

import torch
import torch.distributed as dist

from .comm import Group, all_gather_along
from .halo import GridLayout
from .layout import SequenceLayout


def _sequence(layout: Union[SequenceLayout, GridLayout]) -> SequenceLayout:
    if isinstance(layout, GridLayout):
        return layout.sequence
    if isinstance(layout, SequenceLayout):
        return layout
    raise TypeError(f"layout must be a SequenceLayout or GridLayout, got {type(layout).__name__}")


def shard(x: torch.Tensor, layout: Union[SequenceLayout, GridLayout], rank: int | None = None,
          dim: int = 2, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """This rank's (or ``rank``'s) part of the whole tensor ``x`` along ``dim`` (the sequence
    dimension: 2 for (B, H, L, D), 1 for document ids (B, L))."""
    if rank is None:
        rank = Group.of(group).rank
    return _sequence(layout).shard(x, rank, dim)


def unshard(x: torch.Tensor, layout: Union[SequenceLayout, GridLayout], dim: int = 2,
            group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The whole tensor, on every rank, from each rank's local part ``x`` (an all-gather)."""
    sequence, info = _sequence(layout), Group.of(group)
    lengths = [sequence.local_length(r) for r in range(sequence.world_size)]
    return sequence.unshard(all_gather_along(x, lengths, dim, info), dim)


__all__ = ["shard", "unshard"]
