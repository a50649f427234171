"""``attngen explain``: how sparse a variant is at a shape, and what that allows.

The mask is evaluated element-wise with the reference semantics (one query tile at a time,
never the whole L x L matrix at once) and summarized per (query tile, KV tile): empty,
full or partial. From that: the density (attended / all entries), the fraction of entries
inside visited tiles that are masked out, and two bounds on the speed-up over dense
attention: 1/density (every attended entry costs the same, nothing else does) and the
tile-level one (visited tiles / all tiles) for the chosen tile sizes.

Neighborhood masks (``explain_neighborhood``) are not evaluated element-wise: their tile
counts come from the runtime's own tile plan (attngen/runtime/neighborhood.py), which
counts per axis in closed form, so any grid size is cheap. The query and KV tiles are
boxes of the grid; the tile-level bound there is L*L / visited entries (padding included).
Masks ``&``-ed with a neighborhood are evaluated element-wise inside its windows only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ir.expr import KV_IDX, LKV, LQ, Q_IDX, B, H
from .ir.nodes import Mask, Neighborhood, Variant
from .ir.text import _mask_to_text, _unique_mask_names
from .passes import UnsupportedVariant
from .passes.tiles import conjuncts
from .passes.tiles import split_neighborhood as neighborhood_split
from .reference import SPATIAL, mask_matrix
from .runtime.neighborhood import RANK, Axis, plan, prefers_dense_tiles, resolve_axes
from .runtime.tiles import rows_in_one_run, spans_are_exact
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
    rows_as_runs: int = 0  # (batch, head, query tile) rows whose tiles are one run
    rows: int = 0
    # whether every query (key) keeps exactly one span of keys (queries): the kernels then
    # test the span's two bounds in partial tiles instead of the mask (runtime/tiles.py)
    query_spans_exact: bool = False
    key_spans_exact: bool = False

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
            f"rows as runs     {self.rows_as_runs} of {self.rows} query tiles' KV tiles form one run"
            + (" (a tile-list mask walks them as loop ranges)" if self.rows and self.rows_as_runs == self.rows
               else " (a tile-list mask walks its index lists)"),
            f"spans            queries {'exact' if self.query_spans_exact else 'not exact'}, keys "
            f"{'exact' if self.key_spans_exact else 'not exact'} (where exact, a tile-list mask's partial tiles "
            f"test each position's span [first, last] instead of the mask)",
        ]


def explain(variant: Variant, Lq: int, Lkv: int | None = None, block_m: int = 128, block_n: int = 128,
            batch: int = 1, heads: int = 1, seed: int = 0) -> TileReport:
    """Tile statistics of ``variant``'s mask at this shape (runtime tensors are synthesized)."""
    if split_neighborhood(variant.mask)[0] is not None:
        raise ValueError(f"explain: '{variant.label}' has a neighborhood mask; use "
                         f"explain_neighborhood(variant, spatial_shape)")
    Lkv = Lq if Lkv is None else Lkv
    for name, val in (("Lq", Lq), ("Lkv", Lkv), ("block_m", block_m), ("block_n", block_n)):
        if not isinstance(val, int) or val <= 0:
            raise ValueError(f"explain: {name} must be a positive int, got {val!r}")
    g = torch.Generator().manual_seed(seed)
    tensors = synthesize_tensors(variant, batch, heads, Lq, Lkv, "cpu", g)
    num_n = -(-Lkv // block_n)
    pad_n = num_n * block_n - Lkv
    attended = full = partial = masked = as_runs = 0
    query_spans_exact = True
    key_first = torch.full((batch, heads, Lkv), Lq)
    key_last = torch.full((batch, heads, Lkv), -1)
    key_count = torch.zeros((batch, heads, Lkv), dtype=torch.int64)
    for m0 in range(0, Lq, block_m):
        rows = min(block_m, Lq - m0)
        env = {B: torch.arange(batch).view(-1, 1, 1, 1), H: torch.arange(heads).view(1, -1, 1, 1),
               Q_IDX: torch.arange(m0, m0 + rows).view(1, 1, -1, 1), KV_IDX: torch.arange(Lkv).view(1, 1, 1, -1),
               LQ: Lq, LKV: Lkv}
        keep = torch.as_tensor(mask_matrix(variant.mask, env, tensors)).expand(batch, heads, rows, Lkv)
        attended += int(keep.sum())
        query_spans_exact &= bool(spans_are_exact(torch.stack(_spans(keep, Lkv), dim=-2)))
        first, last, count = _spans(keep.transpose(-1, -2), rows)
        key_first = torch.minimum(key_first, torch.where(count > 0, first + m0, Lq))
        key_last = torch.maximum(key_last, torch.where(count > 0, last + m0, -1))
        key_count += count
        keep = torch.nn.functional.pad(keep, (0, pad_n)).view(batch, heads, rows, num_n, block_n)
        per_tile = keep.sum(dim=(2, 4))  # (batch, heads, num_n)
        is_full = per_tile == rows * block_n
        is_partial = (per_tile > 0) & ~is_full
        full += int(is_full.sum())
        partial += int(is_partial.sum())
        masked += int((is_partial * (block_m * block_n - per_tile)).sum())
        kinds = is_partial.to(torch.int8) + 2 * is_full.to(torch.int8)  # (batch, heads, num_n): one row
        as_runs += int(rows_in_one_run(kinds.unsqueeze(-2)).sum())
    num_m = -(-Lq // block_m)
    return TileReport(Lq, Lkv, block_m, block_n, attended, batch * heads * Lq * Lkv, full, partial,
                      batch * heads * num_m * num_n, masked, as_runs, batch * heads * num_m,
                      query_spans_exact, bool(spans_are_exact(torch.stack((key_first, key_last, key_count), -2))))


def _spans(keep: torch.Tensor, other: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First and last kept position along the last axis, and the count ([other, -1], 0 if none)."""
    pos = torch.arange(keep.shape[-1])
    return (torch.where(keep, pos, other).amin(-1), torch.where(keep, pos, -1).amax(-1), keep.sum(-1))


# --------------------------------------------------------------------------- neighborhoods
# default tiles, as the runtime picks them on an H100 in bf16 with D=128: the dense kernel's
# 128 x 128 where the geometry prefers them (runtime/neighborhood.py), else 64 x 64; block-sparse
# geometry that stays so with 256-row query boxes takes those, as two halves of 128 rows, with
# 64-key boxes (CompiledAttention.neighborhood_class)
NA_DENSE_BLOCK, NA_BLOCK = 128, 64
NA_HALVES_BLOCKS = (256, 64)
EXACT_LIMIT = 1 << 28  # (batch x heads x L x window) pairs evaluated for the other masks of a `&`


def split_neighborhood(mask: Mask | None) -> tuple[Neighborhood | None, list[Mask]]:
    """The neighborhood that plans the tiles and the masks ``&``-ed with it, or (None, [])
    when the mask has no neighborhood; the compiler's split (passes/tiles.py). A
    neighborhood under ``|`` or ``~`` (which the compiler tests element-wise) or two of them
    is an error here."""
    try:
        split = neighborhood_split(mask) if mask is not None else None
    except UnsupportedVariant:
        split = (None, None, False)
    if split is None:
        return None, []
    na, rest, boxes = split
    if not boxes:
        raise ValueError("explain: reports a neighborhood alone or combined with other masks through `&`; "
                         "under `|` or `~` the kernel tests it element-wise on 1-D tiles, which explain does "
                         "not count yet")
    return na, conjuncts(rest) if rest is not None else []


@dataclass(frozen=True)
class NeighborhoodReport:
    """Tile statistics of a neighborhood variant at a spatial shape, per (batch, head).

    ``axes``, ``q_box`` and ``kv_box`` have three entries (lower ranks padded in front with
    size-1 axes, as in the kernel); ``spatial_shape`` is the shape as given. Counts other
    than ``attended_all`` come from the neighborhood's tile plan
    (attngen/runtime/neighborhood.py); entries are query-key pairs, padding of the boxes
    included. ``other_masks`` is the text of masks ``&``-ed with the neighborhood (None
    when there are none); ``attended_all`` is the entries the whole mask keeps, summed over
    batch x heads, or None when there are no other masks or they were not evaluated.
    """

    spatial_shape: tuple[int, ...]
    axes: tuple[Axis, ...]
    q_box: tuple[int, int, int]
    kv_box: tuple[int, int, int]
    L: int
    attended: int
    query_tiles: int
    programs: int
    visited_tiles: int
    full_tiles: int
    visited_entries: int
    other_masks: str | None = None
    attended_all: int | None = None
    batch: int = 1
    heads: int = 1
    full_boxes_first: bool = True  # the kernels' walk (NeighborhoodPlan.full_boxes_first)

    @property
    def rank(self) -> int:
        return len(self.spatial_shape)

    @property
    def block_m(self) -> int:
        return math.prod(self.q_box)

    @property
    def block_n(self) -> int:
        return math.prod(self.kv_box)

    @property
    def total(self) -> int:
        return self.L * self.L

    @property
    def partial_tiles(self) -> int:
        return self.visited_tiles - self.full_tiles

    @property
    def counted(self) -> bool:
        """Whether the density and masked fraction account for every mask."""
        return self.other_masks is None or self.attended_all is not None

    @property
    def attended_per_head(self) -> float:
        """Entries the whole mask keeps per (batch, head) (the neighborhood's own when the
        other masks were not evaluated)."""
        if self.attended_all is None:
            return float(self.attended)
        return self.attended_all / (self.batch * self.heads)

    @property
    def density(self) -> float:
        return self.attended_per_head / self.total

    @property
    def neighborhood_density(self) -> float:
        return self.attended / self.total

    @property
    def speed_of_light(self) -> float:
        """Bound over dense attention: 1/density."""
        return self.total / self.attended_per_head if self.attended_per_head else float("inf")

    @property
    def tile_bound(self) -> float:
        """Bound over dense attention with these tiles: L*L / visited entries."""
        return self.total / self.visited_entries if self.visited_entries else float("inf")

    @property
    def masked_fraction(self) -> float:
        """Fraction of the entries in visited tiles that are masked out or padding."""
        if not self.visited_entries:
            return 0.0
        return 1.0 - self.attended_per_head / self.visited_entries

    @property
    def block_sparse(self) -> bool:
        """True when every visited tile is full and no other mask runs: no mask code at all."""
        return self.partial_tiles == 0 and self.other_masks is None

    def _box(self, box: tuple[int, ...]) -> str:
        pad = len(box) - self.rank
        shown = box[pad:] if all(b == 1 for b in box[:pad]) else box
        return "x".join(map(str, shown))

    def lines(self) -> list[str]:
        shape = "x".join(map(str, self.spatial_shape))
        out = [f"spatial shape    {shape} (L = {self.L}, {self.rank}-D)"]
        for i, a in enumerate(self.axes[len(self.axes) - self.rank:]):
            out.append(f"axis {i:<11} size {a.size}, kernel {a.kernel}, dilation {a.dilation}, stride {a.stride}, "
                       f"{'causal' if a.causal else 'non-causal'}")
        out.append(f"tiles            query box {self._box(self.q_box)} (block_m {self.block_m}), "
                   f"KV box {self._box(self.kv_box)} (block_n {self.block_n})")
        attended = (f"{self.attended_all} of {self.batch * self.heads * self.total}" if self.attended_all is not None
                    else f"{self.attended} of {self.total}")
        out.append(f"density          {self.density:.4f} ({attended} entries attended)")
        empty = self.programs - self.query_tiles
        out.append(f"query tiles      {self.query_tiles}"
                   + (f" ({self.programs} programs, {empty} empty)" if empty else ""))
        out.append(f"KV tiles visited {self.visited_tiles} ({self.full_tiles} full, {self.partial_tiles} partial), "
                   f"{self.visited_tiles / self.query_tiles:.1f} per query tile" if self.query_tiles else
                   f"KV tiles visited {self.visited_tiles}")
        if not self.full_boxes_first:
            walk = "every visited KV box with the window test, in one loop (a 2-D/3-D window's walk is mostly shell)"
        elif self.partial_tiles:
            walk = "full KV boxes first, without mask code, then the shell with the window test"
        else:
            walk = "full KV boxes only, without mask code (no shell at this shape)"
        out.append("walk             " + walk)
        out.append(f"masked in visited tiles  {self.masked_fraction:.3f} "
                   f"({self.visited_entries} entries visited, padding included)")
        out.append(f"bound over dense {self.speed_of_light:.2f}x speed of light (1/density), "
                   f"{self.tile_bound:.2f}x with these tiles (L*L / visited entries)")
        if self.block_sparse:
            out.append("block sparse     yes: every visited tile is full, no mask code runs")
        elif self.other_masks is not None:
            out.append(f"block sparse     no: `{self.other_masks}` is evaluated element-wise in every visited tile")
        elif self.full_boxes_first:
            out.append(f"block sparse     no: {self.partial_tiles} partial tiles run mask code")
        else:
            out.append(f"block sparse     no: {self.partial_tiles} partial tiles; all {self.visited_tiles} visited "
                       "tiles run the window test")
        if self.other_masks is not None:
            how = ("counted exactly in density and masked fraction" if self.attended_all is not None
                   else "NOT counted: density and masked fraction are the neighborhood's alone")
            out.append(f"other masks      & {self.other_masks}: {how}; tiles are the neighborhood's plan")
        return out


def _box_arg(name: str, box: object) -> tuple[int, int, int] | None:
    if box is None:
        return None
    if isinstance(box, int) and not isinstance(box, bool):
        box = (box,)
    if (not isinstance(box, (tuple, list)) or not 1 <= len(box) <= RANK
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 and not b & (b - 1) for b in box)):
        raise ValueError(f"explain: {name} must be 1 to {RANK} powers of two (one per axis), got {box!r}")
    return (1,) * (RANK - len(box)) + tuple(box)


def _window_keys(axis: Axis) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position of ``axis``: its window's key positions (size, kernel) and which are real."""
    keys = torch.zeros(axis.size, axis.kernel, dtype=torch.long)
    valid = torch.zeros(axis.size, axis.kernel, dtype=torch.bool)
    t = torch.arange(axis.kernel)
    for x in range(axis.size):
        g, xg = x % axis.dilation, x // axis.dilation
        lo, hi = axis.window(xg, axis.group_length(g))
        keys[x] = g + axis.dilation * torch.clamp(lo + t, max=hi)
        valid[x] = lo + t <= hi
    return keys, valid


def _count_other(others: list[Mask], variant: Variant, axes: tuple[Axis, ...], spatial: tuple[int, ...],
                 batch: int, heads: int, seed: int) -> int:
    """Entries inside the neighborhood's windows that every other mask keeps, over batch x heads."""
    L = math.prod(a.size for a in axes)
    g = torch.Generator().manual_seed(seed)
    tensors = synthesize_tensors(variant, batch, heads, L, L, "cpu", g)
    tables = [_window_keys(a) for a in axes]
    K = math.prod(a.kernel for a in axes)
    sizes = [a.size for a in axes]
    chunk = max(1, (1 << 22) // K)
    total = 0
    for r0 in range(0, L, chunk):
        rows = torch.arange(r0, min(r0 + chunk, L))
        coords = [rows // (sizes[1] * sizes[2]), (rows // sizes[2]) % sizes[1], rows % sizes[2]]
        (k0, v0), (k1, v1), (k2, v2) = [(keys[c], valid[c]) for (keys, valid), c in zip(tables, coords)]
        kv = ((k0[:, :, None, None] * sizes[1] + k1[:, None, :, None]) * sizes[2] + k2[:, None, None, :])
        ok = (v0[:, :, None, None] & v1[:, None, :, None] & v2[:, None, None, :]).reshape(len(rows), K)
        env = {B: torch.arange(batch).view(-1, 1, 1, 1), H: torch.arange(heads).view(1, -1, 1, 1),
               Q_IDX: rows.view(1, 1, -1, 1), KV_IDX: kv.reshape(1, 1, len(rows), K), LQ: L, LKV: L,
               SPATIAL: spatial}
        keep = torch.as_tensor(ok)
        for m in others:
            keep = keep & torch.as_tensor(mask_matrix(m, env, tensors))
        total += int(keep.expand(batch, heads, len(rows), K).sum())
    return total


def explain_neighborhood(variant: Variant, spatial_shape: int | tuple[int, ...], block_m: int | None = None,
                         block_n: int | None = None, q_box: tuple[int, ...] | None = None,
                         kv_box: tuple[int, ...] | None = None, batch: int = 1, heads: int = 1, seed: int = 0,
                         exact_limit: int = EXACT_LIMIT) -> NeighborhoodReport:
    """Tile statistics of a neighborhood variant on ``spatial_shape``, from the same tile
    plan the runtime uses (no mask of any size is built for the neighborhood itself).

    ``block_m``/``block_n`` default to the boxes' products, else to what the runtime picks
    on an H100 in bf16 with D=128 (128 x 128 for 1-D windows, 256 x 64 for long block-sparse
    ones without a score_mod or other masks, 64 x 64 for other windows); the planner then
    picks the boxes unless
    ``q_box``/``kv_box`` (one power of two per axis) are given. Masks ``&``-ed with the
    neighborhood are evaluated element-wise inside its windows (runtime tensors
    synthesized) when batch x heads x L x window pairs <= ``exact_limit``, else left out.
    ValueError names the axis or argument that does not fit.
    """
    na, others = split_neighborhood(variant.mask)
    if na is None:
        raise ValueError(f"explain_neighborhood: '{variant.label}' has no neighborhood mask; use explain()")
    if isinstance(spatial_shape, list):
        spatial_shape = tuple(spatial_shape)
    if isinstance(spatial_shape, int) and not isinstance(spatial_shape, bool):
        spatial_shape = (spatial_shape,)
    if not isinstance(spatial_shape, tuple) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                       for s in spatial_shape):
        raise TypeError(f"explain: spatial_shape must be a tuple of 1 to 3 ints, got {spatial_shape!r}")
    qb, kb = _box_arg("q_box", q_box), _box_arg("kv_box", kv_box)
    for name, box, user in (("q_box", q_box, qb), ("kv_box", kv_box, kb)):
        if user is not None and len(box if isinstance(box, (tuple, list)) else (box,)) not in (len(spatial_shape), RANK):
            raise ValueError(f"explain: {name} {tuple(box)!r} has {len(box)} entries but spatial_shape "
                             f"{spatial_shape} has {len(spatial_shape)} axes")
    default_m = default_n = NA_BLOCK
    if block_m is None and block_n is None and qb is None and kb is None and all(s >= 1 for s in spatial_shape):
        try:
            grid = resolve_axes(na, spatial_shape, math.prod(spatial_shape))
        except ValueError:
            pass  # reported below, naming the axis
        else:
            if prefers_dense_tiles(grid, NA_DENSE_BLOCK, NA_DENSE_BLOCK):
                default_m = default_n = NA_DENSE_BLOCK
                if not others and variant.score is None and not plan(grid, *NA_HALVES_BLOCKS).has_partial:
                    default_m, default_n = NA_HALVES_BLOCKS
    block_m = block_m if block_m is not None else (math.prod(qb) if qb else default_m)
    block_n = block_n if block_n is not None else (math.prod(kb) if kb else default_n)
    for name, val in (("block_m", block_m), ("block_n", block_n), ("batch", batch), ("heads", heads)):
        if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
            raise ValueError(f"explain: {name} must be a positive int, got {val!r}")
    for name, val in (("block_m", block_m), ("block_n", block_n)):
        if val & (val - 1):
            raise ValueError(f"explain: {name} must be a power of two, got {val}")
    for name, box, block, bname in (("q_box", q_box, block_m, "block_m"), ("kv_box", kv_box, block_n, "block_n")):
        box = (box,) if isinstance(box, int) else box
        if box is not None and math.prod(box) != block:
            raise ValueError(f"explain: {name} {'x'.join(map(str, box))} has {math.prod(box)} entries, "
                             f"not {bname} = {block}")
    for axis, size in enumerate(spatial_shape):
        if size < 1:
            raise ValueError(f"explain: spatial_shape axis {axis} must be >= 1, got {size}")
    axes = resolve_axes(na, spatial_shape, math.prod(spatial_shape) if spatial_shape else 0)
    p = plan(axes, block_m, block_n, qb, kb)
    c = p.counts()
    nonempty = math.prod(sum(-(-a.group_length(g) // tm) for g in range(a.dilation))
                         for a, tm in zip(axes, p.q_box))
    attended_all = None
    if others and batch * heads * c["L"] * math.prod(a.kernel for a in axes) <= exact_limit:
        attended_all = _count_other(others, variant, axes, tuple(spatial_shape), batch, heads, seed)
    other_text = None
    if others:
        names = _unique_mask_names(variant.mask, False)
        other_text = " & ".join(_mask_to_text(m, names) for m in others)
    return NeighborhoodReport(tuple(spatial_shape), axes, p.q_box, p.kv_box, c["L"], c["attended"], nonempty,
                              c["query_tiles"], c["visited_tiles"], c["full_tiles"], c["visited_entries"],
                              other_text, attended_all, batch, heads, p.full_boxes_first)
