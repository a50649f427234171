"""Timing and records of the context-parallel benchmark (bench_context_parallel.py).

Every rank of a group runs the same number of calls (no adaptive repetition, which would
let ranks disagree and deadlock a collective); a measurement is the slowest rank's mean over
``reps`` calls after ``warmup`` calls, with CUDA events on the GPU and the wall clock on the
CPU. Scaling efficiency follows the issue's definition: per-GPU throughput on W GPUs
(FLOPs(L) / (W * t_W)) against one GPU's on the sequence of L / W (FLOPs(L / W) / t_1).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

FWD_BWD_FLOPS = 3.5  # forward + backward FLOPs per forward FLOP (shared/PEERS.md's convention)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], Any], device: torch.device, group: dist.ProcessGroup | None, warmup: int,
             reps: int) -> float:
    """The mean milliseconds of ``fn`` over ``reps`` calls on the slowest rank of ``group``
    (None: this process alone)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if group is not None:
        dist.barrier(group)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        synchronize(device)
        ms = start.elapsed_time(end) / reps
    else:
        began = time.perf_counter()
        for _ in range(reps):
            fn()
        ms = (time.perf_counter() - began) * 1e3 / reps
    if group is not None:
        slowest = torch.tensor([ms], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
        ms = slowest.item()
    return ms


def causal_flops(B: int, H: int, L: int, D: int) -> float:
    """Forward FLOPs of causal attention, attended entries only (L(L+1)/2 per head)."""
    return 4.0 * B * H * D * L * (L + 1) / 2


@dataclass
class Record:
    """One backend at one size. ``fwd_ms`` / ``fwdbwd_ms`` None when not run; ``error`` says
    why; ``flops`` are the forward FLOPs of the whole problem (all GPUs)."""

    part: str
    case: str
    world: int
    backend: str
    flops: float
    fwd_ms: float | None = None
    fwdbwd_ms: float | None = None
    error: str | None = None
    rel_err: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def per_gpu_tflops(self, backward: bool) -> float | None:
        ms = self.fwdbwd_ms if backward else self.fwd_ms
        if ms is None or not self.flops:
            return None
        return self.flops * (FWD_BWD_FLOPS if backward else 1.0) / (self.world * ms * 1e-3) / 1e12

    def efficiency(self, baseline: "Record | None", backward: bool) -> float | None:
        """Per-GPU throughput against ``baseline`` (one GPU at L / world)."""
        mine = self.per_gpu_tflops(backward)
        theirs = baseline.per_gpu_tflops(backward) if baseline is not None else None
        return None if mine is None or not theirs else mine / theirs

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tflops_per_gpu"] = {"fwd": self.per_gpu_tflops(False), "fwdbwd": self.per_gpu_tflops(True)}
        return out


__all__ = ["FWD_BWD_FLOPS", "Record", "causal_flops", "synchronize", "timed_ms"]
