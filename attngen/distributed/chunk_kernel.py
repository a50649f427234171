"""The compiled offset variant (positions.py) and its calls on one chunk pair.

``OffsetKernel`` is a ``CompiledAttention`` of the rewritten variant. Its kernels are the
ordinary ones (tile lists, since the mask now reads ``cp_positions``); what it adds is where
their tile plans come from:

- masks that are exactly a band of global positions: the closed-form plan of the pair
  (chunk_plan.py), built on the host once per geometry and tile size, no classifier and no
  device read;
- other masks (documents, opaque mask_mods, neighborhoods): the compiler's own run-time
  classification (runtime/tiles.py), which evaluates the rewritten mask and skips every tile
  it empties.

Each pair's offsets live in one small int32 tensor per (geometry, device), made once and
reused, so repeated calls (layers, steps, the backward) find their plans by that tensor.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from ..ir.kernel import TILES
from ..ir.nodes import Variant
from ..runtime.attention import CompiledAttention
from ..runtime.config import KernelConfig
from ..runtime.validate import Problem
from .chunk_plan import PairBand, PairGeometry, pair_plan
from .positions import KV_DOCUMENT_IDS, POSITIONS, OffsetVariant

_CAPACITY = 1024  # geometries per kernel: a rank of an 8-way ring meets at most 4 * 8 * 8 pairs


class OffsetKernel(CompiledAttention):
    """A compiled offset variant (see the module's docstring) of the variant ``original``.
    ``user_names``: the tensors a call passes besides the offsets and the keys' document ids,
    in the kernel's order."""

    def __init__(self, base: CompiledAttention, rewrite: OffsetVariant, original: Variant) -> None:
        super().__init__(base.variant, base.ir, base.path, base.key, base.from_cache)
        self.rewrite = rewrite
        self.original = original
        self.user_names = tuple(n for n in self._names if n not in (POSITIONS, KV_DOCUMENT_IDS))
        self.reads_kv_documents = KV_DOCUMENT_IDS in self._names
        self._closed_form = self.ir.strategy == TILES and rewrite.exact
        self._offsets: OrderedDict[tuple, tuple[torch.Tensor, PairGeometry]] = OrderedDict()
        self._by_tensor: dict[int, PairGeometry] = {}
        self._plans: OrderedDict[tuple, object] = OrderedDict()
        self._pairs: dict[PairGeometry, PairBand] = {}

    def __repr__(self) -> str:
        band = self.rewrite.band.text() if self.rewrite.band is not None else "none"
        return f"OffsetKernel({self.ir.name!r}, band={band}, exact={self.rewrite.exact})"

    def pair(self, geometry: PairGeometry) -> PairBand:
        """The pair's band in local coordinates (``empty`` / ``full`` decide launches);
        memoized: every ring step asks it of every pair, and the bounds go through sympy."""
        found = self._pairs.get(geometry)
        if found is None:
            if len(self._pairs) >= _CAPACITY:
                self._pairs.clear()
            found = self._pairs[geometry] = PairBand.of(self.rewrite.band, geometry)
        return found

    def offsets(self, geometry: PairGeometry, device: torch.device) -> torch.Tensor:
        """The pair's ``cp_positions`` tensor (made once per geometry and device)."""
        key = (geometry, device)
        hit = self._offsets.get(key)
        if hit is not None:
            self._offsets.move_to_end(key)
            return hit[0]
        tensor = torch.tensor(geometry.positions(), dtype=torch.int32, device=device)
        self._offsets[key] = (tensor, geometry)
        self._by_tensor[id(tensor)] = geometry
        while len(self._offsets) > _CAPACITY:
            old, _ = self._offsets.popitem(last=False)[1]
            self._by_tensor.pop(id(old), None)
        return tensor

    def tile_lists(self, p: Problem, bound: dict[str, torch.Tensor], config: KernelConfig, axes=None,
                   cache: bool = True):
        if not self._closed_form or POSITIONS not in bound:
            return super().tile_lists(p, bound, config, axes, cache)
        geometry = self._by_tensor[id(bound[POSITIONS])]
        if not cache:  # a compiled graph's call: its memory is not held between replays
            return pair_plan(self.pair(geometry), config.block_m, config.block_n, p.device)
        key = (geometry, config.block_m, config.block_n, p.device)
        plan = self._plans.get(key)
        if plan is None:
            plan = pair_plan(self.pair(geometry), config.block_m, config.block_n, p.device)
            self._plans[key] = plan
            while len(self._plans) > _CAPACITY:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def bind_pair(self, user: dict[str, torch.Tensor], geometry: PairGeometry, device: torch.device,
                  kv_document_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every tensor the kernels read for this pair, by name."""
        bound = dict(user)
        if POSITIONS in self._names:
            bound[POSITIONS] = self.offsets(geometry, device)
        if self.reads_kv_documents:
            bound[KV_DOCUMENT_IDS] = kv_document_ids
        return bound


__all__ = ["OffsetKernel"]
