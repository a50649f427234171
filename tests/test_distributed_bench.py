"""benchmarks/bench_context_parallel.py: its report logic, and a smoke run launched the way
the GPU runs are (torchrun), here on 2 CPU processes with gloo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import context_parallel_report as report  # noqa: E402


def _record(part, backend, world, fwdbwd_tflops, case="c", rel_err=None, for_world=None):
    return {"part": part, "case": case, "world": world, "backend": backend, "error": None, "flops": 1.0,
            "fwd_ms": 1.0, "fwdbwd_ms": 1.0, "rel_err": rel_err or {},
            "tflops_per_gpu": {"fwd": fwdbwd_tflops, "fwdbwd": fwdbwd_tflops},
            "extra": {} if for_world is None else {"for_world": for_world}}


def test_efficiency_and_targets_use_the_baseline_at_one_over_w():
    records = [_record("causal", "one GPU attngen, L/W", 1, 400.0, for_world=8),
               _record("causal", "one GPU SDPA, L/W", 1, 500.0, for_world=8),
               _record("causal", "attngen ring", 8, 360.0),
               _record("causal", "torch CP SDPA (alltoall)", 8, 400.0),
               _record("na", "one GPU attngen, grid/W", 1, 300.0, for_world=4),
               _record("na", "attngen halo", 4, 240.0)]
    assert report.efficiency(records[2], records, True) == pytest.approx(0.9)
    assert report.efficiency(records[3], records, True) == pytest.approx(0.8)  # against SDPA's own baseline
    lines = "\n".join(report.targets(records))
    assert "attngen ring, c, 8 GPUs: fwd+bwd efficiency 90% against the 85% target: yes" in lines
    assert "attngen halo, c, 4 GPUs: fwd+bwd efficiency 80% against the 90% target: **NO**" in lines


def test_wrong_results_are_named():
    records = [_record("causal", "attngen ring", 2, 1.0, rel_err={"out": 1e-3, "dk": 0.5}),
               _record("causal", "attngen ulysses", 2, 1.0, rel_err={"out": float("nan")})]
    bad = report.wrong(records)
    assert len(bad) == 2 and "dk relative error 0.5" in bad[0] and "nan" in bad[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the smoke run is the CPU path")
def test_smoke_run_under_torchrun(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "benchmarks" / "bench_context_parallel.py"), "--smoke", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads((tmp_path / "context_parallel.json").read_text())
    backends = {(r["part"], r["backend"]) for r in data["records"]}
    assert {("causal", "attngen ring"), ("causal", "attngen allgather"), ("causal", "attngen ulysses"),
            ("na", "attngen halo"), ("na", "attngen ulysses")} <= backends
    checked = [r for r in data["records"] if r["rel_err"]]
    assert checked and all(max(r["rel_err"].values()) < 1e-4 for r in checked)
    assert data["config"]["nccl_nvls"] == "0" and data["env"]["commit"]
    assert "**smoke run**" in (tmp_path / "context_parallel.md").read_text()
