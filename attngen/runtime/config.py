"""Launch configurations (tile sizes, warps, pipeline stages) chosen by heuristic.

Measured choices for the H100 live here until the autotuner owns them. Under the Triton
interpreter the tiles are as large as the problem allows, since each program costs a
fixed Python overhead there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            val = getattr(self, name)
            if val < 16 or val & (val - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= 16, got {val}")


def choose_config(device: torch.device, dtype: torch.dtype, d: int, dv: int, lq: int, lkv: int) -> KernelConfig:
    """A good-enough configuration for this problem (no timing runs)."""
    if device.type != "cuda":
        bm = min(64, max(16, triton.next_power_of_2(lq)))
        bn = min(64, max(16, triton.next_power_of_2(lkv)))
        return KernelConfig(bm, bn, 4, 1)
    major, _ = torch.cuda.get_device_capability(device)
    dmax = max(d, dv)
    if dtype == torch.float32:
        return KernelConfig(64, 32 if dmax > 128 else 64, 4, 2)
    if dmax > 128:
        return KernelConfig(64, 64, 4, 2)
    if major >= 9:
        if dmax <= 64:
            return KernelConfig(128, 128, 8, 3)
        return KernelConfig(128, 128, 8, 3)
    return KernelConfig(128, 64, 4, 2)
