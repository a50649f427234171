"""The search space of one problem, pruned before anything is compiled or timed.

The grid is the forward kernel's: block_m, block_n in 16..128 (powers of two), num_warps 4
or 8, num_stages 1-4; for neighborhood variants each (block_m, block_n) pair also gets the
planner's best query/KV boxes (``runtime/neighborhood.py`` ``plan``, ranked by its cost:
entries visited, partial tiles weighted by their mask code). Kernels with the two-halves
forward (dense and band masks, neighborhoods without other masks) also get block_m 128 and
256 as two interleaved halves (``KernelConfig.halves``; boxes from the planner at launch),
whose estimates are those of the whole tile. Dense and band kernels on sm90 and later also
get every 8-warp candidate with its full-tile loop warp-specialized
(``KernelConfig.warp_specialize``: Triton 3.6's automatic producer/consumer split; its
pass fails on 4 warps). Triton 3.6 offers two more Hopper options, tensor-descriptor (TMA)
loads and persistent programs; neither beat the pointer loads and one program per tile on the H100
(benchmarks/NOTES.md: TMA loads under Forward and Backward, persistent block-sparse
programs under Neighborhoods), so the generated kernels do not have them. Where the Gluon forward can run (dense and band
masks, softmax, an sm90 GPU: ``SpaceShape.gluon``), its configs join the grid: 128-row
tiles over two consumer warpgroups, 64- or 128-key tiles, a K/V ring of 2 or 3 slots, the
warpgroups free or taking turns (``KernelConfig(dialect="gluon", pingpong=...)``).

Pruning rules (each one names why in ``Pruned.reason``):

- shared memory: Triton's software pipeline keeps ``num_stages`` copies of the K and V
  tiles plus one Q tile in shared memory:
  ``stages * BLOCK_N * (BLOCK_D + BLOCK_DV) * bytes + BLOCK_M * BLOCK_D * bytes``
  (head dims padded to powers of two, as the kernel pads them). This reproduces Triton's
  own numbers on the H100 exactly (benchmarks/results/forward/forward.md: 128x128x4
  stages, D=128 bf16 -> 294912 bytes; 64x128x4 -> 278528). A score that reads a tensor per
  (query, key) pair stages that BLOCK_M x BLOCK_N gather too, ``(stages - 1) * BM * BN * 4``
  more (fitted to the relative-bias launch of benchmarks/NOTES.md: 245760 bytes at
  128x128, 3 stages, D=64). Over the device's limit -> pruned.
- registers: the fp32 accumulator (BLOCK_M x BLOCK_DV) and the fp32 score tile (BLOCK_M x
  BLOCK_N) are spread over ``num_warps * 32`` threads and must fit 255 registers/thread
  with a margin (REG_MARGIN) for Q fragments, pointers and the softmax statistics;
  beyond it Triton spills (NOTES.md: 4 warps on 128x128 tiles at D=128 were the worst
  config, 256 registers by this count).
- Gluon configs: shared memory is the Q tile, ``stages`` K and V slots and no padding
  (``128 * D + stages * BLOCK_N * (D + Dv)`` elements); registers per consumer thread are
  the accumulator, two score tiles (the next one's product runs during this one's softmax)
  and P, over 128 threads: ``(64 * Dv + 2 * 64 * BLOCK_N) / 128 + 64 * BLOCK_N / 256``,
  against the 240 the consumer warpgroups are given.
- problem size: a tile more than the next power of two above Lq (block_m) or Lkv (block_n)
  only computes padding; for neighborhoods, a box wider than an axis likewise.

The heuristic's config is always kept (and timed first): it is the correctness baseline.
The rest are timed largest tiles first (block_m * block_n; the grid's order within a size):
the fastest configs measured on the H100 are the largest that fit, so a time budget that
stops the tuner early has timed the likeliest winners rather than the 16x16 tiles.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
import triton

from ..runtime.config import KernelConfig
from ..runtime.neighborhood import Axis, _boxes, _cost
from .device import DeviceLimits

BLOCKS = (16, 32, 64, 128)
HALVES_BLOCK_M = (128, 256)  # two halves of 64 or 128 rows: the wgmma's natural heights
WARPS = (4, 8)
STAGES = (1, 2, 3, 4)
REG_MARGIN = 0.8  # share of the 255 registers the two fp32 tiles may take
BOXES_PER_BLOCK = 2  # neighborhood: the best box pairs kept per (block_m, block_n)
GLUON_BLOCK_N = (64, 128)
GLUON_STAGES = (2, 3)
GLUON_CONSUMER_REGS = 240  # what templates/attention_fwd_gluon.py.j2 gives each consumer warpgroup


@dataclass(frozen=True)
class Pruned:
    config: KernelConfig
    reason: str


@dataclass(frozen=True)
class SpaceShape:
    """What the estimates need to know about the problem."""

    lq: int
    lkv: int
    d: int
    dv: int
    dtype: torch.dtype
    tile_reads: bool = False
    axes: tuple[Axis, ...] | None = None  # neighborhood variants
    halves: bool = False  # the kernel has the two-halves forward
    warp_specialize: bool = False  # the kernel's full-tile loop can be warp-specialized, on this GPU
    gluon: bool = False  # the variant has the Gluon forward and this GPU runs it (runtime/gluon.py)


def _pad(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def smem_bytes(c: KernelConfig, s: SpaceShape) -> int:
    """Shared memory the forward kernel needs at ``c`` (module docstring)."""
    size = torch.tensor([], dtype=s.dtype).element_size()
    if c.dialect == "gluon":
        return (c.block_m * s.d + c.num_stages * c.block_n * (s.d + s.dv)) * size
    bd, bdv = _pad(s.d), _pad(s.dv)
    total = c.num_stages * c.block_n * (bd + bdv) * size + c.block_m * bd * size
    if s.tile_reads:
        total += (c.num_stages - 1) * c.block_m * c.block_n * 4
    return total


def regs_per_thread(c: KernelConfig, s: SpaceShape) -> float:
    """fp32 accumulator + score tile registers per thread (module docstring)."""
    if c.dialect == "gluon":  # per consumer warpgroup: 64 rows over 128 threads
        return (64 * s.dv + 2 * 64 * c.block_n) / 128 + 64 * c.block_n / 256
    return (c.block_m * _pad(s.dv) + c.block_m * c.block_n) / (c.num_warps * 32)


def prune_reason(c: KernelConfig, s: SpaceShape, limits: DeviceLimits) -> str | None:
    """Why ``c`` cannot win (or run) on this problem and device; None when it stays."""
    smem = smem_bytes(c, s)
    if smem > limits.smem_bytes:
        return f"shared memory {smem} > {limits.smem_bytes} bytes"
    regs = regs_per_thread(c, s)
    if c.dialect == "gluon":
        if regs > GLUON_CONSUMER_REGS:
            return f"registers {regs:.0f}/thread > the {GLUON_CONSUMER_REGS} a consumer warpgroup has"
    elif regs > REG_MARGIN * limits.regs_per_thread:
        return f"registers {regs:.0f}/thread > {REG_MARGIN:.0%} of {limits.regs_per_thread}"
    if s.axes is None:
        if c.block_m > _pad(s.lq):
            return f"block_m {c.block_m} > Lq {s.lq}"
        if c.block_n > _pad(s.lkv):
            return f"block_n {c.block_n} > Lkv {s.lkv}"
    return None


def _box_fits(box: tuple[int, int, int], axes: tuple[Axis, ...]) -> bool:
    return all(b <= triton.next_power_of_2(a.size) for b, a in zip(box, axes))


def neighborhood_boxes(axes: tuple[Axis, ...], block_m: int, block_n: int,
                       keep: int = BOXES_PER_BLOCK) -> list[tuple[tuple, tuple]]:
    """The ``keep`` cheapest (q_box, kv_box) pairs by the planner's cost; boxes wider than an
    axis are skipped (they only add padding). Empty when no box fits the grid."""
    qs = [b for b in _boxes(block_m) if _box_fits(b, axes)]
    kvs = [b for b in _boxes(block_n) if _box_fits(b, axes)]
    ranked = sorted(itertools.product(qs, kvs), key=lambda qk: (_cost(axes, *qk), qk))
    return ranked[:keep]


def grid(s: SpaceShape, blocks=BLOCKS, warps=WARPS, stages=STAGES) -> list[KernelConfig]:
    """Every candidate before pruning (neighborhood variants: with explicit boxes)."""
    out = []
    for bm, bn in itertools.product(blocks, blocks):
        boxes = neighborhood_boxes(s.axes, bm, bn) if s.axes is not None else [(None, None)]
        for (qb, kb), w, st in itertools.product(boxes, warps, stages):
            out.append(KernelConfig(bm, bn, w, st, qb, kb))
    if s.halves:
        for bm, bn, w, st in itertools.product(HALVES_BLOCK_M, blocks, warps, stages):
            out.append(KernelConfig(bm, bn, w, st, halves=True))
    if s.warp_specialize:  # each 8-warp candidate followed by its twin, so a time budget cuts both alike
        out = [w for c in out for w in ((c, replace(c, warp_specialize=True)) if c.num_warps == 8 else (c,))]
    if s.gluon:
        out += [KernelConfig(128, bn, 4, st, dialect="gluon", pingpong=pp)
                for bn, st, pp in itertools.product(GLUON_BLOCK_N, GLUON_STAGES, (False, True))]
    return out


def search_space(s: SpaceShape, limits: DeviceLimits, heuristic: KernelConfig | None = None,
                 blocks=BLOCKS, warps=WARPS, stages=STAGES) -> tuple[list[KernelConfig], list[Pruned]]:
    """(candidates to time, heuristic first; pruned configs with their reasons)."""
    kept: list[KernelConfig] = [heuristic] if heuristic is not None else []
    pruned: list[Pruned] = []
    for c in grid(s, blocks, warps, stages):
        if c in kept:
            continue
        reason = prune_reason(c, s, limits)
        if reason is None:
            kept.append(c)
        else:
            pruned.append(Pruned(c, reason))
    first = 1 if heuristic is not None else 0
    kept[first:] = sorted(kept[first:], key=lambda c: -c.block_m * c.block_n)  # stable: grid order within a size
    return kept, pruned
