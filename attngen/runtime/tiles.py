"""Run-time tile lists for masks without closed-form geometry, and their cache.

The lists are (Bm, Hm, query tiles, KV tiles) int32 index arrays plus per-query-tile
counts, one pair for full tiles and one for partial tiles; Bm and Hm are 1 unless the
mask reads b or h. That is O(L^2 / (BLOCK_M * BLOCK_N)) memory, never O(L^2).

A classification is reused while the shape, tile sizes and every tensor it reads are the
same objects at the same version: ``tensor._version`` changes on each in-place write, so
``doc_ids.fill_(0)`` invalidates it.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import triton


@dataclass
class TileLists:
    full_count: torch.Tensor
    full_index: torch.Tensor
    partial_count: torch.Tensor
    partial_index: torch.Tensor
    axes: tuple | None = None  # the neighborhood's axes when the mask tests one element-wise
    _transposed: "TileLists | None" = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, bm: int, hm: int, num_m: int, num_n: int, device: torch.device) -> "TileLists":
        def counts():
            return torch.empty((bm, hm, num_m), dtype=torch.int32, device=device)

        def index():
            return torch.empty((bm, hm, num_m, num_n), dtype=torch.int32, device=device)

        return cls(counts(), index(), counts(), index())

    def args(self) -> tuple:
        """Pointers and strides in the order the generated kernels take them."""
        c, i = self.full_count, self.full_index
        return (self.full_count, self.full_index, self.partial_count, self.partial_index,
                c.stride(0), c.stride(1), i.stride(0), i.stride(1), i.stride(2))

    def geometry(self) -> dict[str, object]:
        """The neighborhood's grid and geometry, as the kernels' keyword arguments."""
        out: dict[str, object] = {}
        for i, a in enumerate(self.axes):
            out.update({f"S{i}": a.size, f"K{i}": a.kernel, f"DIL{i}": a.dilation, f"STR{i}": a.stride,
                        f"CAUSAL{i}": a.causal})
        return out

    def transposed(self) -> "TileLists":
        """The same classification listed per KV tile: (Bm, Hm, KV tiles, query tiles), for
        the backward's dK/dV pass. Computed once per classification, on its device."""
        if self._transposed is None:
            bm, hm, num_m, num_n = self.full_index.shape
            slots = torch.arange(num_n, device=self.full_index.device)
            kind = torch.zeros((bm, hm, num_m, num_n + 1), dtype=torch.int8, device=self.full_index.device)
            for count, index, code in ((self.partial_count, self.partial_index, 1),
                                       (self.full_count, self.full_index, 2)):
                listed = slots < count[..., None]  # entries past the count are unset memory
                kind.scatter_(3, torch.where(listed, index, num_n).long(), code)
            kind = kind[..., :num_n].transpose(2, 3)

            def lists(code):
                hit = kind == code
                # stable sort puts the listed query tiles first, in increasing order
                order = torch.sort((~hit).to(torch.int8), dim=-1, stable=True).indices
                return hit.sum(-1, dtype=torch.int32).contiguous(), order.to(torch.int32).contiguous()

            (fc, fi), (pc, pi) = lists(2), lists(1)
            self._transposed = TileLists(fc, fi, pc, pi, self.axes)
        return self._transposed

    def visited(self) -> tuple[int, int]:
        """(full tiles, partial tiles) summed over every query tile."""
        return int(self.full_count.sum()), int(self.partial_count.sum())


def _tensor_key(t: torch.Tensor) -> tuple:
    return (id(t), t._version, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


class TileCache:
    """A small LRU of tile classifications for one compiled variant."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, tuple[list, TileLists]] = OrderedDict()
        self.builds = 0

    def get(self, module, tensors: dict[str, torch.Tensor], B: int, HQ: int, Lq: int, Lkv: int, config,
            device: torch.device, axes: tuple | None = None) -> TileLists:
        depends = module.TILES_DEPEND_ON
        bm = B if "b" in depends else 1
        hm = HQ if "h" in depends else 1
        key = (device, bm, hm, Lq, Lkv, config.block_m, config.block_n, axes,
               tuple((n, _tensor_key(t)) for n, t in sorted(tensors.items())))
        hit = self._entries.get(key)
        if hit is not None and all(ref() is tensors[n] for n, ref in hit[0]):
            self._entries.move_to_end(key)
            return hit[1]
        tiles = TileLists.empty(bm, hm, triton.cdiv(Lq, config.block_m), triton.cdiv(Lkv, config.block_n), device)
        tiles.axes = axes
        module.launch_classify_tiles(tiles, tensors, Lq, Lkv, config)
        self.builds += 1
        refs = [(n, weakref.ref(t)) for n, t in sorted(tensors.items())]
        self._entries[key] = (refs, tiles)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return tiles
