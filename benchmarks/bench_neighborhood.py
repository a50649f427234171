"""Neighborhood-attention benchmark: attngen against FlexAttention, and against dense attention.

Run from the repository root on a CUDA machine (an H100 is the reference):

    PYTHONPATH=. python benchmarks/bench_neighborhood.py --out DIR [--cases a,b] [--sweep]
    PYTHONPATH=. python benchmarks/bench_neighborhood.py --smoke     # tiny shapes, any device

Cases (bf16 forward, NATTEN semantics, shared/SEMANTICS.md; B=1, H=16, D=128):

    na2d_31    2-D 128x128, kernel 31x31                 (PEERS.md: Flex 1.95 ms)
    na2d_63    2-D 128x128, kernel 63x63                 (PEERS.md: Flex 3.91 ms)
    na3d       3-D 16x32x32, kernel 7x15x15              (PEERS.md: Flex 2.67 ms)
    na1d       1-D 32768, kernel 2047 (odd, as NATTEN's are; PEERS.md's window 2048: Flex 1.51 ms)
    blocked2d  2-D 128x128, kernel = stride = 16x16       perfectly block sparse (density 1/64)
    gna2d      2-D 128x128, kernel 32x32, stride 16x16     perfectly block sparse (density 1/16)
    blocked3d  3-D 16x32x32, kernel = stride = 8x16x16    perfectly block sparse (density 1/8)

For every case, in one process and on the same random inputs (B, H, L, D):

1. attngen (``ag.compile(variant)(q, k, v, spatial_shape=...)``), attngen through
   ``ag.na1d/2d/3d`` on NATTEN's layout (B, *spatial, H, D), and ``torch.compile(flex_attention)``
   with a BlockMask from ``create_block_mask`` over the same mask, written as a mask_mod over
   flattened indices with SEMANTICS.md's per-axis rule in torch ops (checked here against
   ``attngen.reference``'s mask on sampled rows);
2. correctness: attngen against Flex's output (relative L2 < 2e-2) and every backend against
   a float64 oracle on 256 sampled query rows (first, last and random ones); a miss is shouted
   and makes the exit status 1;
3. the dense kernels on the same shape and inputs, timed once per shape: attngen's own dense
   kernel, SDPA flash and SDPA cuDNN (``torch.nn.attention.sdpa_kernel``);
4. time (ms, median of ``triton.testing.do_bench``), TFLOP/s on attended entries
   (4*B*H*attended*D), attngen's throughput over Flex's, its speedup over dense SDPA (limit
   1/density), and the speed-of-light line SOL = attngen dense time x density. The target for
   the perfectly block-sparse cases is attngen <= 1.15 x SOL.

``--sweep`` times attngen under KernelConfigs (block_m, block_n in {64, 128}, num_warps 4/8,
num_stages 2/3) for each case, checked on the sampled rows, within ``--sweep-budget`` seconds.
``--smoke`` runs tiny stand-ins of the same cases on whatever device is present: on the CPU
through the Triton interpreter, attngen and the reference only (float32, no Flex, no SDPA),
so that the script's logic can be checked anywhere.

Results go to DIR/neighborhood.md, DIR/neighborhood.json and DIR/neighborhood.png (a bar chart
of TFLOP/s, when matplotlib imports). DIR defaults to $OUT, else benchmarks/results/neighborhood/
(a --smoke run: a temporary folder).
The main markdown table is printed last.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import attngen as ag  # noqa: F401 - first: without a GPU it selects the Triton interpreter before triton is imported
import bench_common as common
import bench_forward as bf
from neighborhood_cases import CASES, SAMPLED_ROWS, select_cases
from neighborhood_peers import self_check_masks
from neighborhood_report import dense_table, markdown_header, markdown_table, plot, write_results
from neighborhood_timing import DenseResult, NAResult, guarded_bench_case, guarded_sweep_case
from report import SweepResult, sweep_markdown
from result_files import default_out, git_commit

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: $OUT, else benchmarks/results/neighborhood/)")
    p.add_argument("--cases", default=None,
                   help="comma-separated subset of: " + ", ".join(c.key for c in CASES) + " (default: all)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny stand-ins of the cases on whatever device is present (CPU: interpreter, attngen only)")
    p.add_argument("--sweep", action="store_true", help="also time attngen under a grid of KernelConfigs")
    p.add_argument("--sweep-only", action="store_true", help="run the sweep without the main comparison")
    p.add_argument("--warmup", type=float, default=25.0, help="do_bench warm-up, ms (default 25)")
    p.add_argument("--rep", type=float, default=100.0, help="do_bench repetition time, ms (default 100)")
    p.add_argument("--sweep-warmup", type=float, default=10.0, help="sweep do_bench warm-up, ms (default 10)")
    p.add_argument("--sweep-rep", type=float, default=40.0, help="sweep do_bench repetition time, ms (default 40)")
    p.add_argument("--sweep-budget", type=float, default=240.0,
                   help="seconds the whole sweep may take; configs beyond it are skipped (default 240)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the random inputs")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = default_out("neighborhood", args.smoke)
    args.sweep = args.sweep or args.sweep_only
    return args


def collect_environment(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {**common.run_environment(device, dtype, git_commit()), "smoke": args.smoke,
            "warmup_ms": args.warmup, "rep_ms": args.rep, "sweep_warmup_ms": args.sweep_warmup,
            "sweep_rep_ms": args.sweep_rep, "seed": args.seed, "sampled_rows": SAMPLED_ROWS}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    picked = common.device_and_dtype("bench_neighborhood.py", args.smoke)
    if picked is None:
        return 2
    device, dtype = picked
    cases = select_cases(args.cases, args.smoke)
    env = collect_environment(args, device, dtype)
    bf.log(f"{env['device']} | torch {env['torch']} | Triton {env['triton']} | attngen {env['attngen']} | "
           f"{env['dtype']} | out: {args.out}")
    problems = self_check_masks()
    for p in problems:
        bf.shout(f"Flex mask_mod self-check: {p}")
    results: list[NAResult] = []
    dense: dict[tuple, DenseResult] = {}
    sweeps: list[SweepResult] = []
    heuristics: dict[str, dict[str, int] | None] = {}
    with torch.no_grad():
        if not args.sweep_only:
            for i, case in enumerate(cases):
                bf.log(f"[{i + 1}/{len(cases)}] {case.key}: {case.name}, density {case.density:.4f}")
                r = guarded_bench_case(case, args.seed + i, device, dtype, args, dense)
                results.append(r)
                heuristics[case.key] = r.attngen_config
                write_results(args.out, env, results, dense, sweeps)
        if args.sweep:
            deadline = time.monotonic() + args.sweep_budget
            for i, case in enumerate(cases):
                bf.log(f"[sweep {i + 1}/{len(cases)}] {case.key}: {case.name}")
                share = (deadline - time.monotonic()) / (len(cases) - i)  # an equal share of what is left
                sweeps.append(guarded_sweep_case(case, args.seed + i, device, dtype, args, time.monotonic() + share,
                                                 heuristics.get(case.key)))
                write_results(args.out, env, results, dense, sweeps)
    if results:
        env["plot"] = plot(args.out, results, dense, f"{env['device']}, {env['dtype']} forward, NATTEN semantics")
        bf.log(f"plot: {env['plot']}")
    md_path, json_path = write_results(args.out, env, results, dense, sweeps)
    bf.log(f"wrote {md_path} and {json_path}\n")
    for s in sweeps:
        bf.log(sweep_markdown(s, top=5, show_failed=False) + "\n")
    bad = [r.case.key for r in results if not r.attngen_ok] + [f"mask self-check ({p})" for p in problems]
    bad += [r.case.key + " (Flex mask)" for r in results if r.mask_check]
    if bad:
        bf.shout("attngen failed or was wrong on: " + ", ".join(bad))
    if results:
        bf.log(markdown_header(env) + "\n\n" + markdown_table(results, dense, judge=bool(env.get("cuda")))
               + "\n\n" + dense_table(dense))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
