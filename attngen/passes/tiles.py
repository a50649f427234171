"""Pass: decide how each query tile finds its KV tiles (the mask classification).

- no mask: ``dense``. Every KV tile is visited; only a ragged last tile needs mask code.
- a single Band: ``band``. The kernel computes, per query tile and in closed form, the
  range of KV tiles any row attends and the sub-range every row attends fully; full tiles
  run without mask code, the band's edge tiles with it. Nothing is precomputed.
- anything else (documents, opaque mask_mods, unions, complements): ``tiles``. A small
  generated kernel classifies every (query tile, KV tile) pair as empty, full or partial at
  run time and writes compact per-query-tile index lists; the attention kernel walks the
  lists. The lists depend on (b, h) only where the predicate does, and are cached per shape
  and per runtime-tensor identity and version.
- a neighborhood under ``|`` or ``~``: ``tiles``, with the neighborhood as one element-wise
  test (``InNeighborhood``) in the classifier's and the kernel's predicate.
- a neighborhood, alone or under ``&``: ``neighborhood``. Query and KV tiles are boxes of
  the grid; the kernel derives each query box's KV boxes per axis in closed form from the
  geometry and the call's spatial shape (runtime/neighborhood.py), interior boxes run
  without mask code, and the other ``&`` operands become the element-wise ``tile_pred``
  applied to every visited tile.
"""
from __future__ import annotations

import sympy

from ..ir.expr import KV_IDX, Q_IDX, B, H, InNeighborhood, tensor_read
from ..ir.kernel import BAND, DENSE, NEIGHBORHOOD, TILES, Band, KernelIR
from ..ir.nodes import AndMask, Document, Mask, MaskMod, Neighborhood, NotMask, OrMask
from .errors import UnsupportedVariant
from .pipeline import compiler_pass


def mask_predicate(mask: Mask) -> sympy.Basic:
    """The element-wise predicate of a mask tree (true = attend)."""
    if isinstance(mask, Band):
        return mask.predicate()
    if isinstance(mask, Document):
        return sympy.Eq(tensor_read("document_ids", (B, Q_IDX)), tensor_read("document_ids", (B, KV_IDX)))
    if isinstance(mask, MaskMod):
        return mask.pred
    if isinstance(mask, Neighborhood):
        return InNeighborhood(Q_IDX, KV_IDX)
    if isinstance(mask, AndMask):
        return sympy.And(mask_predicate(mask.a), mask_predicate(mask.b))
    if isinstance(mask, OrMask):
        return sympy.Or(mask_predicate(mask.a), mask_predicate(mask.b))
    if isinstance(mask, NotMask):
        return sympy.Not(mask_predicate(mask.a))
    raise TypeError(f"mask node {type(mask).__name__} has no element-wise predicate")


def conjuncts(mask: Mask) -> list[Mask]:
    """The operands of a chain of ``&`` (the mask itself when it is no ``&``)."""
    if isinstance(mask, AndMask):
        return conjuncts(mask.a) + conjuncts(mask.b)
    return [mask]


def split_neighborhood(mask: Mask) -> tuple[Neighborhood, Mask | None, bool] | None:
    """``(neighborhood, rest, boxes)``: ``boxes`` when the mask is one neighborhood ``&``
    other masks (box tiling, ``rest`` the other operands), else the neighborhood appears
    under ``|`` or ``~`` and is tested element-wise (``rest`` is the whole mask)."""
    found = {leaf for leaf in mask.leaves() if isinstance(leaf, Neighborhood)}
    if not found:
        return None
    if len(found) > 1:
        raise UnsupportedVariant(
            "plan_mask_tiles: a variant may use one neighborhood geometry; this mask combines "
            f"{len(found)} different ones")
    na = found.pop()
    parts = conjuncts(mask)
    if na not in parts or any(na in p.leaves() for p in parts if p != na):
        return na, mask, False
    rest = [p for p in parts if p != na]
    out = rest[0] if rest else None
    for p in rest[1:]:
        out = AndMask(out, p)
    return na, out, True


@compiler_pass(requires=("geometry",), provides=("tile_plan",))
def plan_mask_tiles(ir: KernelIR) -> KernelIR:
    """Choose dense / closed-form band ranges / run-time tile lists / neighborhood boxes."""
    mask = ir.mask
    split = split_neighborhood(mask) if mask is not None else None
    if split is not None:
        na, rest, boxes = split
        pred = mask_predicate(rest) if rest is not None else None
        if boxes:
            return ir.replace(strategy=NEIGHBORHOOD, neighborhood=na, mask=rest,
                              tile_pred=None if pred == sympy.true else pred)
        # under '|' or '~' the neighborhood is one element-wise test among others: the
        # run-time classifier finds the tiles (on the flattened sequence)
        return ir.replace(strategy=TILES, neighborhood=na, tile_pred=pred,
                          tile_depends=tuple(n for n, s in (("b", B), ("h", H)) if pred.has(s)))
    if mask is None or (isinstance(mask, Band) and mask.lo is None and mask.hi is None):
        return ir.replace(strategy=DENSE, mask=None)
    if isinstance(mask, Band):
        return ir.replace(strategy=BAND, band=mask, tile_pred=mask.predicate())
    pred = mask_predicate(mask)
    if pred == sympy.true:
        return ir.replace(strategy=DENSE, mask=None)
    depends = tuple(n for n, s in (("b", B), ("h", H)) if pred.has(s))
    return ir.replace(strategy=TILES, tile_pred=pred, tile_depends=depends)
