"""The device a record belongs to: a normalized GPU name and the limits the pruner needs.

Names: ``torch.cuda.get_device_name`` lower-cased, "nvidia" dropped, runs of other
characters turned into "-" ("NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3"). User records are
kept per full name (an H100 PCIe and an H100 SXM differ in clocks and bandwidth); shipped
defaults per family, the first token holding a digit ("h100"). CPU tensors run under the
Triton interpreter, whose "device" is named ``interpreter``.

Limits (used to prune candidates before anything is compiled):
- shared memory per block: ``torch.cuda.get_device_properties(d).shared_memory_per_block_optin``
  when torch exposes it, else the table below (CUDA C Programming Guide, "Compute
  Capabilities" table: 227 KiB opt-in on sm90, 163 KiB on sm80, 99 KiB on sm86/sm89).
  On the H100 this is 232448 bytes: the "Hard limit" in Triton's OutOfResources messages.
- registers: 255 per thread on every NVIDIA GPU since Kepler (same table).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

INTERPRETER = "interpreter"

# shared memory per block with opt-in, bytes, by family (see the module docstring)
SMEM_BY_FAMILY = {"h100": 232448, "h200": 232448, "h800": 232448, "gh200": 232448,
                  "a100": 166912, "a800": 166912, "a10": 101376, "a40": 101376, "l4": 101376,
                  "l40": 101376, "l40s": 101376, "4090": 101376, "3090": 101376}
SMEM_DEFAULT = 101376  # unknown GPUs: the smallest limit of the table, so pruning stays safe
MAX_REGS_PER_THREAD = 255

_names: dict[tuple[str, int | None], str] = {}


def normalize_gpu_name(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3" (file-name safe, stable across drivers)."""
    text = re.sub(r"\bnvidia\b", " ", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def gpu_family(normalized: str) -> str:
    """The family a shipped defaults file is named by: "h100-80gb-hbm3" -> "h100"."""
    return next((t for t in normalized.split("-") if any(c.isdigit() for c in t)), normalized)


def device_name(device: torch.device) -> str:
    """Normalized name of ``device``'s GPU, or ``interpreter`` for CPU tensors (memoized:
    the call path asks once per problem class)."""
    if device.type != "cuda":
        return INTERPRETER
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (device.type, index)
    name = _names.get(key)
    if name is None:
        name = _names[key] = normalize_gpu_name(torch.cuda.get_device_name(index))
    return name


@dataclass(frozen=True)
class DeviceLimits:
    """What a kernel launch may use on one device."""

    name: str
    smem_bytes: int
    regs_per_thread: int = MAX_REGS_PER_THREAD


def device_limits(device: torch.device, name: str | None = None) -> DeviceLimits:
    """Limits of ``device`` (``name`` overrides the detected one, for tests and the interpreter)."""
    name = name or device_name(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        smem = getattr(props, "shared_memory_per_block_optin", 0)
        if smem:
            return DeviceLimits(name, int(smem))
    return DeviceLimits(name, SMEM_BY_FAMILY.get(gpu_family(name), SMEM_DEFAULT))
