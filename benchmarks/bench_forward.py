"""Forward-attention benchmark: attngen against FlexAttention and PyTorch SDPA (flash, cuDNN).

Run from the repository root on a CUDA machine (an H100 is the reference):

    PYTHONPATH=. python benchmarks/bench_forward.py --out DIR [--sweep]

For every case (dense and causal; B=2 H=16 L=8192 D=128 and B=4 H=16 L=4096 D=64; bf16)
the script, in one process and on the same random inputs:

1. computes a float32 reference with SDPA on upcast inputs and checks every backend's
   output against it by relative L2 error (attngen must stay under 2e-2; a miss is
   flagged loudly and makes the exit status 1);
2. times attngen, ``torch.compile(flex_attention)``, SDPA flash and SDPA cuDNN with
   ``triton.testing.do_bench`` (median), compilation and warm-up excluded;
3. reports ms, TFLOP/s (attended score entries only: causal counts L*(L+1)/2 per head)
   and attngen's throughput over each peer's (>1 means attngen is faster).

``--sweep`` then times attngen under every KernelConfig of a small grid (checked for
correctness too), within a time budget, to inform the launch heuristics.

Results go to DIR/forward.md and DIR/forward.json (DIR defaults to $OUT, else
benchmarks/results/forward/); the main markdown table is printed last. A backend that fails is
recorded as "n/a (reason)" and the run goes on.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
import triton
import triton.testing

import attngen as ag

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import environment, sdpa_fn  # noqa: E402
from report import (  # benchmarks/ is a folder of scripts: report.py sits beside this one
    BACKENDS, CASES, MAX_REL_ERR, BackendError, Case, CaseResult, Fn, Inputs, Measurement, SweepPoint, SweepResult,
    Tensor, attention_flops, config_label, full_markdown, is_correct, markdown_header, markdown_table, min_bytes,
    relative_l2, short_reason, sweep_configs, sweep_markdown, tflops, to_json, write_results,
)
from result_files import default_out, git_commit  # noqa: E402

# --------------------------------------------------------------------------- arguments, environment


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else benchmarks/results/forward/)")
    p.add_argument("--sweep", action="store_true", help="also time attngen under a grid of KernelConfigs")
    p.add_argument("--warmup", type=float, default=25.0, help="do_bench warm-up, ms (default 25)")
    p.add_argument("--rep", type=float, default=100.0, help="do_bench repetition time, ms (default 100)")
    p.add_argument("--sweep-warmup", type=float, default=10.0, help="sweep do_bench warm-up, ms (default 10)")
    p.add_argument("--sweep-rep", type=float, default=50.0, help="sweep do_bench repetition time, ms (default 50)")
    p.add_argument("--sweep-budget", type=float, default=400.0,
                   help="seconds the whole sweep may take; configs beyond it are skipped (default 400)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the random inputs")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = default_out("forward")
    return args


def collect_environment(args: argparse.Namespace) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "gpu": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "sm_count": props.multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "attngen": ag.__version__,
        "commit": git_commit(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "warmup_ms": args.warmup,
        "rep_ms": args.rep,
        "sweep_warmup_ms": args.sweep_warmup,
        "sweep_rep_ms": args.sweep_rep,
        "seed": args.seed,
    }


def log(msg: str) -> None:
    print(msg, flush=True)


def shout(msg: str) -> None:
    """A problem that must not scroll past unnoticed: a banner on stdout."""
    banner = "!" * 78
    print(f"{banner}\n!!! {msg}\n{banner}", flush=True)


# --------------------------------------------------------------------------- GPU work


def make_inputs(case: Case, seed: int) -> Inputs:
    """Random (never zero) bf16 q, k, v of shape (B, H, L, D) on the GPU."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (case.B, case.H, case.L, case.D)
    return tuple(torch.randn(shape, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))


def reference_output(case: Case, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """SDPA in float32 on upcast inputs (memory-efficient kernel, else math); no L x L matrix
    is materialized by the former, and both are far more precise than any bf16 backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=case.causal, scale=scale)


def attngen_builder(case: Case) -> ag.CompiledAttention:
    variant = ag.Variant(mask=ag.causal()) if case.causal else ag.Variant()
    return ag.compile(variant)


def heuristic_config(case: Case) -> dict[str, int]:
    """The config attngen's heuristic picks for this case."""
    cfg = attngen_builder(case).config_for(torch.device("cuda"), torch.bfloat16, case.D, case.D, case.L, case.L)
    return asdict(cfg)


def launched_config(fn: Fn) -> dict[str, int] | None:
    """The config attngen actually launched in ``fn``'s latest call (the runtime steps down
    from the heuristic's pick when it does not fit the GPU)."""
    cfg = fn.compiled.last_config
    return asdict(cfg) if cfg is not None else None


def build_attngen(case: Case, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Fn:
    attn = attngen_builder(case)

    def fn() -> Tensor:
        return attn(q, k, v, scale=scale)

    fn.compiled = attn  # lets launched_config find the config in use
    return fn


def build_flex(case: Case, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Fn:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def causal_mask_mod(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    block_mask = (create_block_mask(causal_mask_mod, B=None, H=None, Q_LEN=case.L, KV_LEN=case.L, device="cuda")
                  if case.causal else None)
    flex = torch.compile(flex_attention, dynamic=False)  # one compiled object per case
    return lambda: flex(q, k, v, block_mask=block_mask, scale=scale)


def build_sdpa(backend_name: str) -> Callable[..., Fn]:
    def build(case: Case, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Fn:
        return sdpa_fn(backend_name, q, k, v, causal=case.causal, scale=scale)

    return build


BUILDERS: dict[str, Callable[..., Fn]] = {
    "attngen": build_attngen,
    "flex": build_flex,
    "sdpa_flash": build_sdpa("sdpa_flash"),
    "sdpa_cudnn": build_sdpa("sdpa_cudnn"),
}


def poisoned_attngen_outputs():
    """Have attngen fill its outputs with NaN before launch, so unwritten elements show."""
    return environment("ATTNGEN_POISON_OUTPUTS", "1")


def first_call(fn: Fn) -> Tensor:
    """Run once (this compiles) and wait; a failing SDPA backend's warnings (which say why
    it refused) join the error, and on success they are shown as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with poisoned_attngen_outputs():
                out = fn()
            torch.cuda.synchronize()
        except Exception as exc:
            notes = "; ".join(str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip())
            raise BackendError(short_reason(exc) + (f" [{notes}]" if notes else "")) from exc
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def time_ms(fn: Fn, warmup: float, rep: float) -> float:
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def prepare_backend(name: str, case: Case, inputs: Inputs, scale: float, ref: Tensor) -> tuple[Fn | None, Measurement]:
    """Build the backend, call it once (compilation) and check its output against ``ref``."""
    m = Measurement(name)
    start = time.perf_counter()
    try:
        fn = BUILDERS[name](case, *inputs, scale)
        out = first_call(fn)
    except Exception as exc:
        m.error = short_reason(exc)
        return None, m
    m.setup_s = time.perf_counter() - start
    m.rel_err = relative_l2(out, ref)
    return fn, m


def bench_case(case: Case, seed: int, args: argparse.Namespace) -> CaseResult:
    """Check and time every backend on one case's inputs."""
    result = CaseResult(case, attention_flops(case), min_bytes(case), attngen_config=heuristic_config(case))
    inputs = make_inputs(case, seed)
    scale = case.D ** -0.5
    ref = reference_output(case, *inputs, scale)
    fns: dict[str, Fn] = {}
    for name in BACKENDS:
        fn, m = prepare_backend(name, case, inputs, scale, ref)
        result.measurements[name] = m
        if fn is None:
            log(f"  {name:<10} n/a ({m.error})")
            continue
        fns[name] = fn
        log(f"  {name:<10} ready in {m.setup_s:.1f} s, rel L2 err {m.rel_err:.2e}")
        if name == "attngen":
            result.attngen_config = launched_config(fn) or result.attngen_config
    attngen = result.measurements["attngen"]
    if attngen.error is not None:
        shout(f"attngen FAILED on {case.name}: {attngen.error}")
    elif not is_correct(attngen.rel_err):
        shout(f"attngen is WRONG on {case.name}: rel L2 err {attngen.rel_err:.3e} (limit {MAX_REL_ERR:g})")
    for name, fn in fns.items():
        m = result.measurements[name]
        try:
            m.ms = time_ms(fn, args.warmup, args.rep)
            m.tflops = tflops(result.flops, m.ms)
            log(f"  {name:<10} {m.ms:8.3f} ms  {m.tflops:6.1f} TFLOP/s")
        except Exception as exc:
            m.error = "timing: " + short_reason(exc)
            log(f"  {name:<10} n/a ({m.error})")
    del fns, ref, inputs
    torch.cuda.empty_cache()
    return result


def sweep_case(case: Case, seed: int, args: argparse.Namespace, deadline: float) -> SweepResult:
    """Time attngen under every sweep config that compiles, launches and is correct, until ``deadline``."""
    sweep = SweepResult(case, heuristic_config(case))
    inputs = make_inputs(case, seed)
    scale = case.D ** -0.5
    ref = reference_output(case, *inputs, scale)
    attn = attngen_builder(case)
    flops = attention_flops(case)
    configs = sweep_configs(sweep.heuristic)
    for i, cfg in enumerate(configs):
        if time.monotonic() > deadline:
            sweep.skipped = len(configs) - i
            log(f"  sweep budget spent: {sweep.skipped} configs skipped")
            break
        point = SweepPoint(asdict(cfg))
        sweep.points.append(point)
        fn: Fn = lambda cfg=cfg, inputs=inputs: attn(*inputs, scale=scale, config=cfg)  # noqa: E731
        start = time.perf_counter()
        try:
            point.rel_err = relative_l2(first_call(fn), ref)
            if is_correct(point.rel_err):
                point.ms = time_ms(fn, args.sweep_warmup, args.sweep_rep)
                point.tflops = tflops(flops, point.ms)
            else:
                point.error = f"wrong: rel L2 err {point.rel_err:.2e}"
        except Exception as exc:
            point.error = short_reason(exc)
        took = time.perf_counter() - start
        what = point.error if point.error else f"{point.ms:.3f} ms {point.tflops:6.1f} TFLOP/s err {point.rel_err:.1e}"
        log(f"  [{i + 1:2d}/{len(configs)}] {config_label(point.config):<18} {what}  ({took:.1f} s)")
        if point.error and not cuda_alive():
            shout(f"CUDA context broken after config {config_label(point.config)}; sweep stopped")
            break
    del inputs, ref
    torch.cuda.empty_cache()
    return sweep


def guarded_bench_case(case: Case, seed: int, args: argparse.Namespace) -> CaseResult:
    """``bench_case``, with a failure outside any one backend (inputs, reference) recorded."""
    try:
        return bench_case(case, seed, args)
    except Exception as exc:
        shout(f"case {case.name} failed: {short_reason(exc)}")
        result = CaseResult(case, attention_flops(case), min_bytes(case), attngen_config=heuristic_config(case))
        result.measurements = {b: Measurement(b, error="case setup: " + short_reason(exc)) for b in BACKENDS}
        return result


def guarded_sweep_case(case: Case, seed: int, args: argparse.Namespace, deadline: float) -> SweepResult:
    """``sweep_case``, with a failure outside any one config recorded instead of raised."""
    try:
        return sweep_case(case, seed, args, deadline)
    except Exception as exc:
        shout(f"sweep of {case.name} aborted: {short_reason(exc)}")
        return SweepResult(case, heuristic_config(case), error=short_reason(exc))


def cuda_alive() -> bool:
    try:
        torch.cuda.synchronize()
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_forward.py needs a CUDA GPU", file=sys.stderr)
        return 2
    env = collect_environment(args)
    log(f"{env['gpu']} | torch {env['torch']} | Triton {env['triton']} | attngen {env['attngen']} | "
        f"CUDA {env['cuda']} | out: {args.out}")
    results: list[CaseResult] = []
    sweeps: list[SweepResult] = []
    with torch.no_grad():
        for i, case in enumerate(CASES):
            log(f"[{i + 1}/{len(CASES)}] {case.name}")
            results.append(guarded_bench_case(case, args.seed + i, args))
        write_results(args.out, full_markdown(env, results, sweeps), to_json(env, results, sweeps))
        if args.sweep:
            deadline = time.monotonic() + args.sweep_budget
            for i, case in enumerate(CASES):
                log(f"[sweep {i + 1}/{len(CASES)}] {case.name}")
                # each case gets an equal share of what is left of the budget
                share = (deadline - time.monotonic()) / (len(CASES) - i)
                sweeps.append(guarded_sweep_case(case, args.seed + i, args, time.monotonic() + share))
                write_results(args.out, full_markdown(env, results, sweeps), to_json(env, results, sweeps))
    md_path, json_path = write_results(args.out, full_markdown(env, results, sweeps), to_json(env, results, sweeps))
    log(f"wrote {md_path} and {json_path}\n")
    for s in sweeps:
        log(sweep_markdown(s, top=5, show_failed=False) + "\n")
    bad = [r.case.name for r in results if not r.attngen_ok]
    if bad:
        shout("attngen failed or was wrong on: " + ", ".join(bad))
    log(markdown_header(env) + "\n\n" + markdown_table(results))  # last, so the output's tail holds it
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
