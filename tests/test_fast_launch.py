"""runtime/fast_launch.py: eager CUDA launches that skip Triton's per-call binding.

CPU: tests/fast_launch_check.py launches generated kernels (forward, backward, decoding)
through Triton and through the fast path, compiled for sm90 with a recorder in place of the
C launcher, and compares what reaches it: the same compiled kernel, grid, stream, hooks and
arguments, also for new tensors, another length and a misaligned address (another
specialization, as Triton picks). GPU: every kernel test runs through the fast path, which
eager CUDA calls take by default.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attngen.runtime.fast_launch import fast, launch_wrap


@pytest.fixture(scope="module")
def checks() -> dict[str, bool]:
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("fast_launch_check.py"))],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", [
    "forward: one launch, the same as Triton's",
    "new tensors reuse the entry",
    "misaligned q: its own kernel, as Triton picks",
    "another length: its own entry, the same as Triton's",
    "backward: three launches, the same as Triton's",
    "decode: one launch, the same as Triton's",
    "linear forward: one launch, the same as Triton's",
    "linear step: one launch, the same as Triton's",
])
def test_fast_path_launches_what_triton_launches(checks, check):
    assert checks[check]


def test_which_calls_take_it(monkeypatch):
    from attngen.runtime import fast_launch

    monkeypatch.delenv("ATTNGEN_FAST_LAUNCH", raising=False)
    monkeypatch.setattr(fast_launch, "interpreter_active", lambda: False)
    assert launch_wrap(torch.device("cuda", 0)) is fast
    assert launch_wrap(torch.device("cpu")) is None
    monkeypatch.setenv("ATTNGEN_FAST_LAUNCH", "0")
    assert launch_wrap(torch.device("cuda", 0)) is None
    monkeypatch.delenv("ATTNGEN_FAST_LAUNCH")
    monkeypatch.setattr(fast_launch, "interpreter_active", lambda: True)
    assert launch_wrap(torch.device("cuda", 0)) is None  # the interpreter launches as Triton does
