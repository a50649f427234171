"""Running the neighborhood cases: build and first-call every backend, check it against the
float64 oracle (and attngen against Flex), time it, and the KernelConfig sweep. Results are
``NAResult`` per case and ``DenseResult`` per shape, with the speed-of-light line (attngen's
dense time on the same shape x density).
"""
from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

import attngen as ag  # first: without a GPU it selects the Triton interpreter before triton is imported
import bench_forward as bf
from device_timing import first_call, on_cuda, time_ms
from neighborhood_cases import NACase, make_inputs, oracle_rows, sample_rows
from neighborhood_peers import BUILDERS, CPU_BACKENDS, DENSE_BACKENDS, NA_BACKENDS, Fn, check_mask_mod
from report import (MAX_REL_ERR, Measurement, SweepPoint, SweepResult, config_label, is_correct, relative_l2,
                    short_reason, tflops)

Tensor = torch.Tensor

SWEEP_BLOCK = (64, 128)

SWEEP_WARPS = (4, 8)

SWEEP_STAGES = (2, 3)


@dataclass
class DenseResult:
    shape: tuple[int, int, int, int]  # B, H, L, D
    flops: float
    measurements: dict[str, Measurement] = field(default_factory=dict)

    @property
    def name(self) -> str:
        B, H, L, D = self.shape
        return f"dense B={B} H={H} L={L} D={D}"


@dataclass
class NAResult:
    case: NACase
    measurements: dict[str, Measurement] = field(default_factory=dict)
    err_vs_flex: float | None = None  # attngen against Flex's output
    attngen_config: dict[str, int] | None = None
    plan: dict[str, Any] | None = None  # attngen.runtime.neighborhood.plan at the launched tiles
    mask_check: str | None = None  # None: the Flex mask_mod matched the reference mask

    def ms(self, backend: str) -> float | None:
        m = self.measurements.get(backend)
        return m.ms if m is not None and m.error is None else None

    @property
    def attngen_ok(self) -> bool:
        m = self.measurements.get("attngen")
        if m is None or m.error is not None or not is_correct(m.rel_err):
            return False
        flex = self.measurements.get("flex")
        if flex is not None and flex.error is None:  # Flex ran: attngen must agree with it
            return is_correct(self.err_vs_flex)
        return True


def sol_ms(r: NAResult, dense: DenseResult | None, backend: str = "attngen_dense") -> float | None:
    """Speed of light: the dense kernel's time on the same shape times the mask's density."""
    m = dense.measurements.get(backend) if dense is not None else None
    return m.ms * r.case.density if m is not None and m.ms is not None and m.error is None else None


def sol_ratio(r: NAResult, dense: DenseResult | None) -> float | None:
    sol, ms = sol_ms(r, dense), r.ms("attngen")
    return ms / sol if sol and ms else None


def launched_config(fn: Fn) -> dict[str, int] | None:
    cfg = getattr(getattr(fn, "compiled", None), "last_config", None)
    return asdict(cfg) if cfg is not None else None


def plan_info(case: NACase, config: dict[str, int] | None) -> dict[str, Any]:
    """How attngen's planner tiles this case at the launched block_m/block_n (for the report)."""
    if not config:
        return {"error": "no launch config recorded"}
    try:
        from attngen.runtime.neighborhood import plan, resolve_axes

        p = plan(resolve_axes(case.mask, case.spatial, case.L), config["block_m"], config["block_n"])
        counts = p.counts()
        return {"q_box": list(p.q_box), "kv_box": list(p.kv_box), "has_partial": p.has_partial, **counts,
                "tile_density": counts["visited_entries"] / (case.L * case.L)}
    except Exception as exc:  # the planner's API is young: the report must not die of it
        return {"error": short_reason(exc)}


def prepare(name: str, case: NACase, inputs, scale: float, device: torch.device) -> tuple[Fn | None, Tensor | None,
                                                                                          Measurement]:
    m = Measurement(name)
    start = time.perf_counter()
    try:
        fn = BUILDERS[name](case, *inputs, scale)
        out = first_call(fn, device)
    except Exception as exc:
        m.error = short_reason(exc)
        return None, None, m
    m.setup_s = time.perf_counter() - start
    return fn, out, m


def prepare_backends(names: Sequence[str], case: NACase, inputs, scale: float, device: torch.device,
                     measurements: dict[str, Measurement]) -> tuple[dict[str, Fn], dict[str, Tensor]]:
    """Build and first-call each backend (CPU smoke runs skip the GPU-only ones); failures
    are recorded in ``measurements``. Returns the runnable ones and their outputs."""
    fns: dict[str, Fn] = {}
    outs: dict[str, Tensor] = {}
    for name in names:
        if not on_cuda(device) and name not in CPU_BACKENDS:
            measurements[name] = Measurement(name, error="smoke on CPU: not run")
            continue
        fn, out, m = prepare(name, case, inputs, scale, device)
        measurements[name] = m
        if fn is None:
            bf.log(f"  {name:<15} n/a ({m.error})")
            continue
        fns[name], outs[name] = fn, out
    return fns, outs


def time_backends(fns: dict[str, Fn], measurements: dict[str, Measurement], flops: float,
                  device: torch.device, args: argparse.Namespace) -> None:
    for name, fn in fns.items():
        m = measurements[name]
        try:
            m.ms = time_ms(fn, device, args.warmup, args.rep)
            m.tflops = tflops(flops, m.ms)
            bf.log(f"  {name:<15} {m.ms:9.3f} ms  {m.tflops:7.1f} TFLOP/s")
        except Exception as exc:
            m.error = "timing: " + short_reason(exc)
            bf.log(f"  {name:<15} n/a ({m.error})")


def bench_dense(case: NACase, inputs, scale: float, device: torch.device, args: argparse.Namespace) -> DenseResult:
    """attngen dense, SDPA flash and SDPA cuDNN on the case's shape and inputs; attngen dense is
    checked against SDPA flash's output (else cuDNN's) on the GPU, float64 SDPA on the CPU."""
    result = DenseResult(case.dense_shape, case.dense_flops)
    bf.log(f"  -- dense on the same shape ({result.name})")
    fns, outs = prepare_backends(DENSE_BACKENDS, case, inputs, scale, device, result.measurements)
    ref_name = next((b for b in ("sdpa_flash", "sdpa_cudnn") if b in outs), None)
    ref = outs.get(ref_name) if ref_name else None
    if ref is None and not on_cuda(device):
        q, k, v = inputs
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)
    for name, out in outs.items():
        if ref is not None and name != ref_name:
            result.measurements[name].rel_err = relative_l2(out, ref)
    a = result.measurements["attngen_dense"]
    if a.error is None and a.rel_err is not None and not is_correct(a.rel_err):
        bf.shout(f"attngen dense is WRONG on {result.name}: rel L2 err {a.rel_err:.3e}")
    del outs
    time_backends(fns, result.measurements, result.flops, device, args)
    return result


def bench_case(case: NACase, seed: int, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
               dense_cache: dict[tuple, DenseResult]) -> NAResult:
    result = NAResult(case)
    inputs = make_inputs(case, seed, device, dtype)
    scale = case.D ** -0.5
    rows = sample_rows(case.L, seed, device)
    result.mask_check = check_mask_mod(case, rows)
    if result.mask_check:
        bf.shout(f"{case.key}: {result.mask_check} (Flex would compute another mask)")
    ref = oracle_rows(case, *inputs, scale, rows)
    fns, outs = prepare_backends(NA_BACKENDS, case, inputs, scale, device, result.measurements)
    for name, fn in fns.items():
        m, out = result.measurements[name], outs[name]
        m.rel_err = relative_l2(out[:, :, rows], ref)
        extra = f", block mask {fn.block_mask_s:.2f} s" if hasattr(fn, "block_mask_s") else ""
        bf.log(f"  {name:<15} ready in {m.setup_s:.1f} s{extra}, rel L2 err vs float64 on {len(rows)} rows "
               f"{m.rel_err:.2e}")
        if name == "attngen":
            result.attngen_config = launched_config(fn)
            result.plan = plan_info(case, result.attngen_config)
    if "attngen" in outs and "flex" in outs:
        result.err_vs_flex = relative_l2(outs["attngen"], outs["flex"])
        bf.log(f"  attngen vs Flex: rel L2 err {result.err_vs_flex:.2e}")
    a = result.measurements["attngen"]
    if a.error is not None:
        bf.shout(f"attngen FAILED on {case.name}: {a.error}")
    elif not result.attngen_ok:
        vs_flex = "n/a" if result.err_vs_flex is None else f"{result.err_vs_flex:.3e}"
        bf.shout(f"attngen is WRONG on {case.name}: rel L2 err {a.rel_err:.3e} vs float64 rows, {vs_flex} vs Flex "
                 f"(limit {MAX_REL_ERR:g})")
    del outs
    time_backends(fns, result.measurements, case.flops, device, args)
    if case.dense_shape not in dense_cache:
        dense_cache[case.dense_shape] = bench_dense(case, inputs, scale, device, args)
    del fns, inputs, ref
    if on_cuda(device):
        torch.cuda.empty_cache()
    return result


def guarded_bench_case(case: NACase, seed: int, device, dtype, args, dense_cache) -> NAResult:
    try:
        return bench_case(case, seed, device, dtype, args, dense_cache)
    except Exception as exc:
        bf.shout(f"case {case.name} failed: {short_reason(exc)}")
        result = NAResult(case)
        result.measurements = {b: Measurement(b, error="case setup: " + short_reason(exc)) for b in NA_BACKENDS}
        return result


def sweep_configs(first: dict[str, int] | None) -> list[ag.KernelConfig]:
    grid = [ag.KernelConfig(bm, bn, w, s) for bm, bn, w, s in
            itertools.product(SWEEP_BLOCK, SWEEP_BLOCK, SWEEP_WARPS, SWEEP_STAGES)]
    grid.sort(key=lambda c: (-c.block_m, -c.block_n, -c.num_warps, c.num_stages))
    lead = [ag.KernelConfig(**first)] if first is not None else []  # the heuristic's pick, timed first
    return lead + [c for c in grid if c not in lead]


def sweep_case(case: NACase, seed: int, device, dtype, args, deadline: float,
               heuristic: dict[str, int] | None) -> SweepResult:
    sweep = SweepResult(case, heuristic)
    inputs = make_inputs(case, seed, device, dtype)
    scale = case.D ** -0.5
    rows = sample_rows(case.L, seed, device)
    ref = oracle_rows(case, *inputs, scale, rows)
    attn = ag.compile(case.variant)
    if heuristic is None:  # --sweep-only: one call with the heuristic tells which config it picks
        first_call(lambda: attn(*inputs, scale=scale, spatial_shape=case.spatial), device)
        heuristic = sweep.heuristic = asdict(attn.last_config) if attn.last_config is not None else None
    configs = sweep_configs(heuristic)
    for i, cfg in enumerate(configs):
        if time.monotonic() > deadline:
            sweep.skipped = len(configs) - i
            bf.log(f"  sweep budget spent: {sweep.skipped} configs skipped")
            break
        point = SweepPoint(asdict(cfg))
        sweep.points.append(point)
        fn: Fn = lambda cfg=cfg: attn(*inputs, scale=scale, spatial_shape=case.spatial, config=cfg)  # noqa: E731
        start = time.perf_counter()
        try:
            point.rel_err = relative_l2(first_call(fn, device)[:, :, rows], ref)
            if is_correct(point.rel_err):
                point.ms = time_ms(fn, device, args.sweep_warmup, args.sweep_rep)
                point.tflops = tflops(case.flops, point.ms)
            else:
                point.error = f"wrong: rel L2 err {point.rel_err:.2e}"
        except Exception as exc:
            point.error = short_reason(exc)
        took = time.perf_counter() - start
        what = point.error if point.error else f"{point.ms:.3f} ms {point.tflops:6.1f} TFLOP/s err {point.rel_err:.1e}"
        bf.log(f"  [{i + 1:2d}/{len(configs)}] {config_label(point.config):<18} {what}  ({took:.1f} s)")
        if point.error and on_cuda(device) and not bf.cuda_alive():
            bf.shout(f"CUDA context broken after config {config_label(point.config)}; sweep stopped")
            break
    return sweep


def guarded_sweep_case(case, seed, device, dtype, args, deadline, heuristic) -> SweepResult:
    try:
        return sweep_case(case, seed, device, dtype, args, deadline, heuristic)
    except Exception as exc:
        bf.shout(f"sweep of {case.name} aborted: {short_reason(exc)}")
        return SweepResult(case, heuristic, error=short_reason(exc))
