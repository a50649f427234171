"""Time the pruned search space of one problem and keep the winner as a record.

Each candidate is first checked against the heuristic config's output (relative L2 error),
then timed with ``triton.testing.do_bench`` (median). Candidates that fail to compile, run
out of resources or compute something else are recorded with the reason and skipped.
Under the Triton interpreter (``attngen tune --interpret``) warps and stages mean nothing
and do_bench needs CUDA events, so the space is tiles only and a wall-clock median is used:
that mode exists to test the machinery, not to pick configs.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from ..ir.kernel import NEIGHBORHOOD
from ..runtime.config import KernelConfig
from ..runtime.gluon import gluon_possible, shape_reason
from ..runtime.neighborhood import plan as plan_neighborhood
from ..runtime.validate import Problem, resolve_spatial
from ..testing import synthesize_tensors
from . import device as _device
from . import records
from .progress import progress_bar
from .select import spatial_of
from .space import Pruned, SpaceShape, search_space

Timer = Callable[[Callable[[], object]], float]


@dataclass(frozen=True)
class TuneShape:
    """The problem a record is tuned at (the record serves its whole shape bucket)."""

    lq: int
    lkv: int
    d: int = 128
    dv: int | None = None
    batch: int = 1
    heads: int = 16
    dtype: torch.dtype = torch.bfloat16
    spatial: tuple[int, ...] | None = None


@dataclass
class Trial:
    config: KernelConfig
    status: str              # "ok", "wrong", "failed", "skipped"
    ms: float | None = None
    err: float | None = None
    detail: str = ""


@dataclass
class TuneResult:
    gpu: str
    bucket: str
    heuristic: KernelConfig
    trials: list[Trial]
    pruned: list[Pruned]
    winner: KernelConfig | None
    record_path: Path | None = None
    timer_calls: list[KernelConfig] = field(default_factory=list)

    @property
    def heuristic_ms(self) -> float | None:
        return next((t.ms for t in self.trials if t.config == self.heuristic and t.ms is not None), None)

    @property
    def best_ms(self) -> float | None:
        return min((t.ms for t in self.trials if t.ms is not None), default=None)


def do_bench_median(fn: Callable[[], object]) -> float:
    """GPU timing: Triton's do_bench, median of its repetitions (ms)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def wall_clock_median(fn: Callable[[], object], runs: int = 3) -> float:
    """Interpreter timing (no CUDA events): median wall-clock ms of a few runs."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def tolerance(dtype: torch.dtype) -> float:
    # two configs differ only in summation order: well inside the dtype's rounding
    return 5e-3 if dtype == torch.float32 else 2e-2


def _failure(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:160]


def tune(attn, shape: TuneShape, device: torch.device | str = "cuda", *, budget_s: float = 300.0,
         timer: Timer | None = None, progress: bool = True, write: bool = True, gpu: str | None = None,
         blocks=None, warps=None, stages=None) -> TuneResult:
    """Tune ``attn`` (a CompiledAttention) at ``shape`` on ``device`` and (``write``) save
    the winner as a user record. ``gpu`` overrides the detected GPU name (records and
    limits); ``blocks``/``warps``/``stages`` narrow the grid (the interpreter uses that)."""
    device = torch.device(device)
    dv = shape.dv or shape.d
    gpu = gpu or _device.device_name(device)
    if timer is None:
        timer = do_bench_median if device.type == "cuda" else wall_clock_median
    g = torch.Generator().manual_seed(0)
    q = torch.randn(shape.batch, shape.heads, shape.lq, shape.d, generator=g).to(device, shape.dtype)
    k = torch.randn(shape.batch, shape.heads, shape.lkv, shape.d, generator=g).to(device, shape.dtype)
    v = torch.randn(shape.batch, shape.heads, shape.lkv, dv, generator=g).to(device, shape.dtype)
    runtime = {p.name for p in attn.variant.tensors() if p.source == "runtime"}
    tensors = {n: t for n, t in synthesize_tensors(attn.variant, shape.batch, shape.heads, shape.lq, shape.lkv,
                                                   device, g).items() if n in runtime}
    kwargs = dict(tensors)
    if shape.spatial is not None:
        kwargs["spatial_shape"] = tuple(shape.spatial)
    p = Problem(shape.batch, shape.heads, shape.heads, shape.lq, shape.lkv, shape.d, dv, shape.dtype, device)
    axes = resolve_spatial(attn.variant.mask, shape.spatial, p)[0] if attn.ir.strategy == NEIGHBORHOOD else None
    out = torch.empty(shape.batch, shape.heads, shape.lq, dv, dtype=shape.dtype, device=device)

    def run(config: KernelConfig) -> torch.Tensor:
        with torch.no_grad():
            return attn(q, k, v, config=config, out=out, **kwargs)

    # The baseline: the heuristic's config (stepped down if it does not fit, as calls do).
    heuristic = attn.heuristic_config(p, axes)
    if axes is not None and heuristic.q_box is None:  # name its boxes so the grid can match it
        pl = plan_neighborhood(axes, heuristic.block_m, heuristic.block_n)
        heuristic = replace(heuristic, q_box=pl.q_box, kv_box=pl.kv_box)
    while True:
        try:
            ref = run(heuristic).clone()
            break
        except Exception as exc:  # OutOfResources and friends: the runtime's step-down
            smaller = heuristic.smaller()
            if smaller is None:
                raise RuntimeError(f"the heuristic config does not run here: {_failure(exc)}") from exc
            heuristic = smaller

    limits = _device.device_limits(device, gpu)
    # warp specialization needs Hopper's asynchronous copies and barriers (sm90+)
    warp_specialize = attn._has_warp_specialize and device.type == "cuda" \
        and torch.cuda.get_device_capability(device)[0] >= 9
    # the Gluon forward: its plans, an sm90 GPU, and a dtype and head dims TMA and wgmma take
    gluon = gluon_possible(attn.ir, device) and shape_reason(shape.dtype, shape.d, dv) is None
    space = SpaceShape(shape.lq, shape.lkv, shape.d, dv, shape.dtype, attn._tile_reads, axes, attn._has_halves,
                       warp_specialize, gluon)
    grid_args = {k: v for k, v in (("blocks", blocks), ("warps", warps), ("stages", stages)) if v is not None}
    candidates, pruned = search_space(space, limits, heuristic, **grid_args)

    result = TuneResult(gpu, records.shape_bucket(shape.lq, shape.lkv, shape.d, dv, spatial_of(axes)),
                        heuristic, [], pruned, None)
    start = time.monotonic()
    best: Trial | None = None
    with progress_bar(len(candidates), enabled=progress) as bar:
        for i, config in enumerate(candidates):
            if time.monotonic() - start > budget_s:
                result.trials += [Trial(c, "skipped", detail="time budget") for c in candidates[i:]]
                break
            trial = Trial(config, "ok")
            try:
                err = trial.err = rel_err(run(config), ref)
                if not err <= tolerance(shape.dtype):
                    trial.status, trial.detail = "wrong", f"relative error {err:.2e} vs the heuristic's output"
                else:
                    result.timer_calls.append(config)
                    trial.ms = timer(lambda: run(config))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # OutOfResources, CompilationError, ...: record and go on
                trial.status, trial.detail = "failed", _failure(exc)
            result.trials.append(trial)
            if trial.ms is not None and (best is None or trial.ms < best.ms):
                best = trial
            bar.advance(f"{config_label(config)}", None if best is None else f"{best.ms:.3f} ms {config_label(best.config)}")
    result.winner = best.config if best is not None else None
    if write and best is not None:
        result.record_path = records.save_record(
            gpu, attn.key, shape.dtype, result.bucket, best.config, ms=best.ms, heuristic=records.config_to_dict(heuristic),
            heuristic_ms=result.heuristic_ms, timed=len(result.timer_calls), pruned=len(pruned),
            shape={"batch": shape.batch, "heads": shape.heads, "lq": shape.lq, "lkv": shape.lkv, "d": shape.d,
                   "dv": dv, "spatial": list(shape.spatial) if shape.spatial else None})
        attn._fitted.clear()  # this object's memoized choices predate the record
    return result


def config_label(c: KernelConfig) -> str:
    text = f"m{c.block_m} n{c.block_n} w{c.num_warps} s{c.num_stages}"
    if c.q_box is not None:
        text += f" q{'x'.join(map(str, c.q_box))} kv{'x'.join(map(str, c.kv_box))}"
    if c.halves:
        text += " halves"
    if c.warp_specialize:
        text += " ws"
    return text


def table(result: TuneResult) -> str:
    """The timed configs, fastest first, then failures (the CLI prints this)."""
    h_ms = result.heuristic_ms
    ok = sorted((t for t in result.trials if t.ms is not None), key=lambda t: t.ms)
    lines = [f"{'rank':>4}  {'config':<34} {'ms':>9} {'vs heuristic':>12}  err"]
    for r, t in enumerate(ok, 1):
        mark = " (heuristic)" if t.config == result.heuristic else ""
        speed = f"x{h_ms / t.ms:.2f}" if h_ms else "-"
        lines.append(f"{r:>4}  {config_label(t.config) + mark:<34} {t.ms:>9.4f} {speed:>12}  {t.err:.1e}")
    for t in result.trials:
        if t.ms is None:
            lines.append(f"{'-':>4}  {config_label(t.config):<34} {t.status}: {t.detail}")
    return "\n".join(lines)
