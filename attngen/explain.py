"""``attngen explain``: how sparse a variant is at a shape, and what that allows.

The mask is evaluated element-wise with the reference semantics (one query tile at a time,
never the whole L x L matrix at once) and summarized per (query tile, KV tile): empty,
full or partial. From that: the density (attended / all entries), the fraction of entries
inside visited tiles that are masked out, and two bounds on the speed-up over dense
attention: 1/density (every attended entry costs the same, nothing else does) and the
tile-level one (visited tiles / all tiles) for the chosen tile sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .ir.expr import B, H, KV_IDX, LKV, LQ, Q_IDX
from .ir.nodes import Variant
from .reference import mask_matrix
from .testing import synthesize_tensors


@dataclass(frozen=True)
class TileReport:
    Lq: int
    Lkv: int
    block_m: int
    block_n: int
    attended: int
    total: int
    full_tiles: int
    partial_tiles: int
    all_tiles: int
    visited_entries_masked: int

    @property
    def density(self) -> float:
        return self.attended / self.total

    @property
    def speed_of_light(self) -> float:
        return self.total / self.attended if self.attended else float("inf")

    @property
    def tile_bound(self) -> float:
        visited = self.full_tiles + self.partial_tiles
        return self.all_tiles / visited if visited else float("inf")

    @property
    def masked_fraction(self) -> float:
        visited = (self.full_tiles + self.partial_tiles) * self.block_m * self.block_n
        return self.visited_entries_masked / visited if visited else 0.0

    def lines(self) -> list[str]:
        return [
            f"shape            Lq={self.Lq} Lkv={self.Lkv}, tiles {self.block_m}x{self.block_n}",
            f"density          {self.density:.4f} ({self.attended} of {self.total} entries attended)",
            f"tiles visited    {self.full_tiles + self.partial_tiles} of {self.all_tiles} "
            f"({self.full_tiles} full, {self.partial_tiles} partial)",
            f"masked in visited tiles  {self.masked_fraction:.3f}",
            f"bound over dense {self.speed_of_light:.2f}x speed of light (1/density), "
            f"{self.tile_bound:.2f}x with these tiles",
        ]


def explain(variant: Variant, Lq: int, Lkv: int | None = None, block_m: int = 128, block_n: int = 128,
            batch: int = 1, heads: int = 1, seed: int = 0) -> TileReport:
    """Tile statistics of ``variant``'s mask at this shape (runtime tensors are synthesized)."""
    Lkv = Lq if Lkv is None else Lkv
    for name, val in (("Lq", Lq), ("Lkv", Lkv), ("block_m", block_m), ("block_n", block_n)):
        if not isinstance(val, int) or val <= 0:
            raise ValueError(f"explain: {name} must be a positive int, got {val!r}")
    g = torch.Generator().manual_seed(seed)
    tensors = synthesize_tensors(variant, batch, heads, Lq, Lkv, "cpu", g)
    num_n = -(-Lkv // block_n)
    pad_n = num_n * block_n - Lkv
    attended = full = partial = masked = 0
    for m0 in range(0, Lq, block_m):
        rows = min(block_m, Lq - m0)
        env = {B: torch.arange(batch).view(-1, 1, 1, 1), H: torch.arange(heads).view(1, -1, 1, 1),
               Q_IDX: torch.arange(m0, m0 + rows).view(1, 1, -1, 1), KV_IDX: torch.arange(Lkv).view(1, 1, 1, -1),
               LQ: Lq, LKV: Lkv}
        keep = torch.as_tensor(mask_matrix(variant.mask, env, tensors)).expand(batch, heads, rows, Lkv)
        attended += int(keep.sum())
        keep = torch.nn.functional.pad(keep, (0, pad_n)).view(batch, heads, rows, num_n, block_n)
        per_tile = keep.sum(dim=(2, 4))  # (batch, heads, num_n)
        is_full = per_tile == rows * block_n
        is_partial = (per_tile > 0) & ~is_full
        full += int(is_full.sum())
        partial += int(is_partial.sum())
        masked += int((is_partial * (block_m * block_n - per_tile)).sum())
    num_m = -(-Lq // block_m)
    return TileReport(Lq, Lkv, block_m, block_n, attended, batch * heads * Lq * Lkv, full, partial,
                      batch * heads * num_m * num_n, masked)
