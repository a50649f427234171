"""Runs context-parallel test cases in several processes on the CPU (gloo), once per module.

``run_cases(cases, world=4)`` spawns ``world`` processes (torch.multiprocessing, spawn: no
forked OpenMP pools), which join one gloo group on a free local port and make subgroups of
the first 2 and 3 ranks, so that one spawn serves world sizes 2, 3 and 4. Every process walks
the same list of cases; a case runs on the ranks of its group (the others skip it) and each
of them reports "ok" or its failure. The parent collects the reports, and a case that does
not report before the deadline (a hang: gloo's own timeout, 2 minutes, makes a rank stuck in
a collective raise) is reported as such; the children are then terminated by their ids.

A case is ``Case(name, fn, world, params)``: ``fn(rank, group, **params)`` is a function
of a module the children can import (``distributed_cases``); it raises AssertionError on a
wrong result.
"""
from __future__ import annotations

import datetime
import os
import queue
import socket
import time
import traceback
from dataclasses import dataclass, field

import torch.multiprocessing as mp


@dataclass(frozen=True)
class Case:
    name: str
    fn: object
    world: int
    params: dict = field(default_factory=dict, hash=False, compare=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cases: list[Case], results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # processes share two cores; intra-op threads would oversubscribe them
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    groups = {n: dist.new_group(list(range(n))) for n in range(2, world)}
    groups[world] = dist.group.WORLD
    try:
        for case in cases:
            if rank >= case.world:
                continue
            started = time.perf_counter()
            try:
                case.fn(rank, groups[case.world], **case.params)
                results.put((case.name, rank, "ok", time.perf_counter() - started))
            except Exception:  # reported to the parent, which fails that case
                results.put((case.name, rank, traceback.format_exc(), time.perf_counter() - started))
    finally:
        dist.destroy_process_group()


def run_cases(cases: list[Case], world: int = 4, timeout: float = 300.0) -> dict[str, dict]:
    """{case name: {"errors": [rank failures], "seconds": max over ranks}}; a case missing
    reports gets the error "no report" (a hang or a crashed process)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, cases, results), daemon=True) for r in range(world)]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for p in procs:
        p.start()
    expected = sum(c.world for c in cases)
    reports: dict[str, dict] = {c.name: {"errors": [], "seconds": 0.0, "ranks": 0} for c in cases}
    deadline = time.monotonic() + timeout
    received = 0
    while received < expected and time.monotonic() < deadline:
        try:
            name, rank, status, seconds = results.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break
            continue
        received += 1
        report = reports[name]
        report["ranks"] += 1
        report["seconds"] = max(report["seconds"], seconds)
        if status != "ok":
            report["errors"].append(f"rank {rank}:\n{status}")
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()) if received == expected else 1.0)
        if p.is_alive():
            p.terminate()
            p.join(5)
    for case in cases:
        if reports[case.name]["ranks"] < case.world and not reports[case.name]["errors"]:
            reports[case.name]["errors"].append(f"no report from {case.world - reports[case.name]['ranks']} rank(s) "
                                                "before the deadline (a hang or a crashed process)")
    return reports
