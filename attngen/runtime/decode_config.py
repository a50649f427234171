"""Launch configurations of the decoding kernels, and the split count (flash-decoding).

A decoding program owns BLOCK_M rows (the query heads of one GQA group times the new tokens)
of one sequence and one run of KV tiles. With few sequences and heads there are too few
programs to keep the GPU's memory system busy, so the KV range is split across programs
and the partial results merged afterwards. The split count comes from the shapes and the
GPU's SM count only, never from the data (sequence lengths live on the device), so a
decode step makes no host read and can be captured in a CUDA graph.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton

MAX_SPLITS = 64  # the merge holds all of a row's partials (MAX_SPLITS x Dv fp32) in registers
# Decoding programs resident per SM: at D=128 in bf16 a program holds two 64-key K and V
# tiles in flight, 70 KB of shared memory (Triton 3.6's sm90 compile of the kernel), so three
# fit in the H100's 228 KB.
PROGRAMS_PER_SM = 3
# Under the Triton interpreter each program costs Python time: a small pretend GPU still
# splits (so the CPU tests exercise the merge) without multiplying the work.
INTERPRETER_SLOTS = 4


@dataclass(frozen=True)
class DecodeConfig:
    """Tiles, warps, stages and split count of the decoding kernel.

    ``block_m``: rows per program (query heads of a GQA group x new tokens, token-major),
    a power of two >= 16 (tl.dot's minimum). ``block_n``: keys per tile. ``num_splits``:
    programs sharing one row tile's keys (1..64)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    num_splits: int

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 16 or val & (val - 1):
                raise ValueError(f"DecodeConfig.{name} must be a power of two >= 16, got {val!r}")
        if self.num_warps not in (1, 2, 4, 8, 16) or not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"DecodeConfig: num_warps must be a power of two <= 16 and num_stages >= 1, got "
                             f"{self.num_warps!r} and {self.num_stages!r}")
        check_num_splits(self.num_splits)


def check_num_splits(num_splits: object) -> int:
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be an int in [1, {MAX_SPLITS}], got {num_splits!r}")
    return num_splits


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def program_slots(device: torch.device) -> int:
    """How many decoding programs the device runs at once."""
    if device.type != "cuda":
        return INTERPRETER_SLOTS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return PROGRAMS_PER_SM * _sm_count(index)


def choose_num_splits(programs: int, tiles: int, slots: int) -> int:
    """How many ways to split each program's KV tiles, FlashAttention-2's heuristic
    (flash_api.cpp ``num_splits_heuristic``) with ``slots`` programs in flight: none when
    the programs already fill 80% of the slots; else, among the split counts that change
    the tiles per split, the smallest whose last wave is at least 85% as full as the best's."""
    if programs >= 0.8 * slots or tiles <= 1:
        return 1
    most = min(MAX_SPLITS, slots, tiles)

    def wave_efficiency(splits: int) -> float:
        waves = programs * splits / slots
        return waves / math.ceil(waves)

    candidates = [s for s in range(1, most + 1)
                  if s == 1 or -(-tiles // s) != -(-tiles // (s - 1))]  # each changes the tiles per split
    best = max(wave_efficiency(s) for s in candidates)
    return next(s for s in candidates if wave_efficiency(s) >= 0.85 * best)


def choose_decode_config(device: torch.device, dtype: torch.dtype, d: int, dv: int, rows: int,
                         sequence_heads: int, capacity: int, paged: bool, num_splits: int | None = None
                         ) -> DecodeConfig:
    """A configuration for ``rows`` rows per (sequence, KV head) (GQA group x new tokens),
    ``sequence_heads`` (sequence, KV head) pairs and caches of ``capacity`` positions, paged
    or not; ``num_splits`` None chooses the split count.

    GPU choices: 64-key tiles (32 above D=128 or in fp32, whose tiles are twice the bytes), 4
    warps: a decoding tile is 16-64 rows, so the dot products are small and the kernel waits
    on memory. Stages: 3 keep two K/V tiles in flight (cp.async double buffering). A paged
    cache's K/V addresses come from a block-table load in the same iteration, and Triton's
    pipeliner (3.6 and 3.9, sm90) gives that index load stages of its own: at 3 or 4 stages
    the K/V tiles get one buffer (38 KB of shared memory), at 5 two (70 KB), as contiguous
    at 3 (benchmarks/experiments/decode_pipeline_stages.py)."""
    block_m = min(64, max(16, triton.next_power_of_2(rows)))
    if device.type != "cuda":
        block_n = min(64, max(16, triton.next_power_of_2(capacity)))
        warps, stages = 4, 1
    else:
        wide = max(d, dv) > 128 or dtype == torch.float32
        block_n = 32 if wide else 64
        warps, stages = 4, 5 if paged else 3
    programs = sequence_heads * triton.cdiv(rows, block_m)
    if num_splits is None:
        num_splits = choose_num_splits(programs, triton.cdiv(capacity, block_n), program_slots(device))
    return DecodeConfig(block_m, block_n, warps, stages, num_splits)
