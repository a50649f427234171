"""benchmarks/training_compare.py: the loss-curve agreement rule and the report built on it
(no training here: synthetic curves)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import training_compare as tc  # noqa: E402


def curve(steps: int = 100, scale: float = 1.0, wiggle: float = 0.0) -> list[float]:
    """A decaying loss with a deterministic batch-to-batch pattern (the same in every run)."""
    return [scale * (2.0 + 3.0 * math.exp(-t / 30)) + 0.05 * math.sin(t) + wiggle * math.sin(7 * t)
            for t in range(steps)]


def run(losses: list[float], ms: float = 10.0) -> dict:
    return {"losses": losses, "median_step_ms": ms, "first_step_s": 20.0}


def test_smooth_and_gap():
    assert tc.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert tc.gap(curve(), curve(), 10) == 0.0
    assert tc.gap(curve(scale=1.01), curve(), 10) == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match="shorter than the smoothing window"):
        tc.gap([1.0, 2.0], [1.0, 2.0], 5)


def test_agreement_is_judged_against_the_measured_noise():
    runs = {"attngen": run(curve(scale=1.015), 8.0), "sdpa": run(curve(), 9.0),
            "sdpa+perturbed1": run(curve(scale=1.01)), "flex": run(curve(scale=1.03), 10.0)}
    verdict = tc.compare(runs, "sdpa")
    assert verdict["noise"] == pytest.approx(0.01, rel=0.05)
    assert verdict["tolerance"] == pytest.approx(0.02, rel=0.05)  # 2 x noise, above the 2^-7 floor
    assert verdict["agree"] == {"attngen": True, "flex": False}
    assert verdict["step_time_vs_flex"]["attngen"] == pytest.approx(0.8)
    assert "sdpa+perturbed1" not in verdict["gaps"]


def test_floor_when_runs_are_identical_and_no_verdict_without_reference():
    runs = {"attngen": run(curve(scale=1.005)), "flex": run(curve()), "flex+perturbed1": run(curve())}
    verdict = tc.compare(runs, "flex")
    assert verdict["tolerance"] == tc.BF16_FLOOR and verdict["agree"] == {"attngen": True}
    assert "error" in tc.compare({"attngen": run(curve()), "flex": {"error": "boom"}}, "flex")


def test_markdown_and_plot(tmp_path):
    runs = {"attngen": run(curve(), 8.0), "flex": run(curve(), 10.0), "flex+perturbed1": run(curve(scale=1.001)),
            "sdpa": {"error": "RuntimeError: no kernel"}}
    results = {"environment": {"date_utc": "2026-01-01", "device": "NVIDIA H100", "commit": "abc"},
               "settings": {"precision": "bf16 autocast", "compile": True},
               "models": {"nat": {"description": "tiny NAT", "runs": runs, "comparison": tc.compare(runs, "flex")}},
               "host_overhead": {"bare_launch_us": 12.0, "graph_triton_us": 25.0,
                                 "op": {"graph_attngen_us": 30.0}, "inductor": {"graph_attngen_us": 27.5},
                                 "summary": "attngen costs 5.0 us more"}}
    text = tc.markdown(results)
    assert "| attngen | 8.00 | 0.800 | 8.00 |" in text and "| yes |" in text
    assert "| sdpa | failed: RuntimeError: no kernel" in text
    assert "NVIDIA H100" in text and "abc" in text and "attngen costs 5.0 us more" in text
    assert "| compiled graph (op): one attngen call | 30.0 |" in text
    assert "| compiled graph (inductor): one attngen call | 27.5 |" in text
    pytest.importorskip("matplotlib")
    path = tc.plot(results, tmp_path / "training.png")
    assert path is not None and path.stat().st_size > 10_000


def test_interleaved_rounds_set_the_step_time():
    """Where the timing rounds ran, their median is the step time the ratio to Flex uses."""
    runs = {"attngen": {**run(curve(), 12.0), "round_step_ms": [9.0, 8.0, 11.0]},
            "flex": {**run(curve(), 9.0), "round_step_ms": [10.0, 10.5, 9.5, 10.0]},
            "flex+perturbed1": run(curve(scale=1.001))}
    assert tc.step_ms(runs["attngen"]) == 9.0 and tc.step_ms(runs["flex"]) == 10.0
    verdict = tc.compare(runs, "flex")
    assert verdict["step_ms"] == {"attngen": 9.0, "flex": 10.0}
    assert verdict["step_time_vs_flex"]["attngen"] == pytest.approx(0.9)
    text = tc.markdown({"models": {"lm": {"description": "tiny", "runs": runs, "comparison": verdict,
                                          "timing_steps": 20}}})
    assert "| attngen | 9.00 | 0.900 | 12.00 |" in text
    assert "median of 3 interleaved timing rounds" in text and "attngen 9.00, 8.00, 11.00" in text
