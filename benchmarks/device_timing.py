"""First calls and timings on whatever device a run has: on the GPU bench_forward's first call
(outputs poisoned, synchronized, a failing backend's warnings kept) and ``do_bench``'s median;
on the CPU (smoke runs, Triton interpreter) one call's wall time, which is no performance figure.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

import bench_forward as bf
from report import BackendError, short_reason

Fn = Callable[[], torch.Tensor]


def on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def first_call(fn: Fn, device: torch.device) -> torch.Tensor:
    """Run once (this compiles), outputs poisoned with NaN first."""
    if on_cuda(device):
        return bf.first_call(fn)
    try:
        with bf.poisoned_attngen_outputs():
            return fn()
    except Exception as exc:
        raise BackendError(short_reason(exc)) from exc


def time_ms(fn: Fn, device: torch.device, warmup: float, rep: float) -> float:
    """do_bench's median on the GPU; on the CPU (interpreter) the wall time of one call."""
    if on_cuda(device):
        return bf.time_ms(fn, warmup, rep)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3
