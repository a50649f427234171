"""How a sequence is split over the ranks of a context-parallel group.

``SequenceLayout(length, world_size, balanced)`` cuts positions [0, length) into chunks:

- contiguous (``balanced=False``): W chunks, rank r holds chunk r;
- balanced (``balanced=True``): 2W chunks, rank r holds chunks r and 2W-1-r (the zigzag of
  Megatron-LM and ring-flash-attention). Under a causal mask, chunk c's rows see c + 1
  chunks of keys, so every rank's pair sums to the same 2W + 1 chunks of work, where a
  contiguous split would give the last rank W times the first one's.

Chunks differ by at most one position when the length does not divide (uneven splits), or
have the sizes given (``sizes``: one per chunk, in sequence order; grids split by rows).
A rank's local tensor is its chunks concatenated in that order; ``shard`` cuts it out of a
full tensor and ``unshard`` puts the ranks' pieces back in sequence order.
``layout_for(variant, ...)`` picks balanced for masks whose later rows see more keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..ir.kernel import Band
from ..ir.nodes import Variant
from .positions import offset_variant


@dataclass(frozen=True)
class Chunk:
    """Positions [start, start + length) of the global sequence."""

    start: int
    length: int

    @property
    def stop(self) -> int:
        return self.start + self.length


def split_evenly(length: int, parts: int) -> list[int]:
    """``parts`` sizes summing to ``length``, the first ``length % parts`` one larger."""
    base, extra = divmod(length, parts)
    return [base + (i < extra) for i in range(parts)]


@dataclass(frozen=True)
class SequenceLayout:
    """The split of a sequence of ``length`` positions over ``world_size`` ranks."""

    length: int
    world_size: int
    balanced: bool = False
    sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("length", "world_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SequenceLayout: {name} must be a positive int, got {value!r}")
        if not isinstance(self.balanced, bool):
            raise TypeError(f"SequenceLayout: balanced must be a bool, got {self.balanced!r}")
        pieces = 2 * self.world_size if self.balanced else self.world_size
        if self.sizes is not None:
            sizes = tuple(self.sizes)
            if (len(sizes) != pieces or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes)
                    or sum(sizes) != self.length):
                raise ValueError(f"SequenceLayout: sizes must be {pieces} positive ints summing to {self.length}, "
                                 f"got {self.sizes!r}")
            object.__setattr__(self, "sizes", sizes)
        elif self.length < pieces:
            raise ValueError(f"SequenceLayout: {self.length} positions cannot fill {pieces} chunks "
                             f"({self.world_size} ranks{', balanced' if self.balanced else ''})")

    @cached_property
    def chunks(self) -> tuple[Chunk, ...]:
        """Every chunk in sequence order."""
        sizes = self.sizes or split_evenly(self.length, 2 * self.world_size if self.balanced else self.world_size)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return tuple(Chunk(s, n) for s, n in zip(starts, sizes))

    def chunks_of(self, rank: int) -> tuple[Chunk, ...]:
        """The chunks rank ``rank`` holds, in its local order."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside a group of {self.world_size}")
        if self.balanced:
            return (self.chunks[rank], self.chunks[2 * self.world_size - 1 - rank])
        return (self.chunks[rank],)

    def local_length(self, rank: int) -> int:
        return sum(c.length for c in self.chunks_of(rank))

    @cached_property
    def max_local_length(self) -> int:
        """The longest local sequence (communication pads to it)."""
        return max(self.local_length(r) for r in range(self.world_size))

    def local_slices(self, rank: int) -> tuple[tuple[Chunk, slice], ...]:
        """(chunk, where it sits in the rank's local tensor) for each of its chunks."""
        out, at = [], 0
        for c in self.chunks_of(rank):
            out.append((c, slice(at, at + c.length)))
            at += c.length
        return tuple(out)

    def global_index(self, rank: int) -> torch.Tensor:
        """(local_length,) int64: the global position of each local position."""
        return torch.cat([torch.arange(c.start, c.stop) for c in self.chunks_of(rank)])

    def shard(self, x: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
        """Rank ``rank``'s part of the full tensor ``x`` along ``dim`` (a copy when it has two
        chunks, else a view)."""
        if x.shape[dim] != self.length:
            raise ValueError(f"shard: dimension {dim} has {x.shape[dim]} positions, the layout {self.length}")
        parts = [x.narrow(dim, c.start, c.length) for c in self.chunks_of(rank)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim)

    def unshard(self, parts: list[torch.Tensor], dim: int) -> torch.Tensor:
        """The full tensor from every rank's local part (``parts[r]`` from rank r)."""
        if len(parts) != self.world_size:
            raise ValueError(f"unshard: expected {self.world_size} parts, got {len(parts)}")
        pieces: dict[int, torch.Tensor] = {}
        for rank, part in enumerate(parts):
            if part.shape[dim] != self.local_length(rank):
                raise ValueError(f"unshard: rank {rank}'s part has {part.shape[dim]} positions along dimension "
                                 f"{dim}, the layout gives it {self.local_length(rank)}")
            for c, where in self.local_slices(rank):
                pieces[c.start] = part.narrow(dim, where.start, c.length)
        return torch.cat([pieces[s] for s in sorted(pieces)], dim)


def later_rows_see_more(band: Band | None) -> bool:
    """Whether a mask in this band is causal-like: no lower edge, an upper one (each row's
    keys end near the row, so work grows along the sequence)."""
    return band is not None and band.lo is None and band.hi is not None


def layout_for(variant: Variant, length: int, world_size: int) -> SequenceLayout:
    """The layout this variant balances best over ``world_size`` ranks: balanced for
    causal-like masks (causal, causal mask_mods and their intersections with documents or
    other masks), contiguous for the rest (windows and dense masks spread work evenly)."""
    return SequenceLayout(length, world_size, later_rows_see_more(offset_variant(variant).band))


__all__ = ["Chunk", "SequenceLayout", "layout_for", "later_rows_see_more", "split_evenly"]
