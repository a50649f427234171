"""Serving benchmark, decode part: attngen's split-KV decoding (contiguous and paged caches)
against FlexAttention's compiled decoding and SDPA, with achieved bandwidth next to the
machine's measured copy bandwidth.

    PYTHONPATH=. python benchmarks/bench_serving.py [--out DIR] [--quick] [--sweep]
    PYTHONPATH=. python benchmarks/bench_serving.py --smoke      # CPU, Triton interpreter, tiny sizes

Cases and backends: benchmarks/serving_decode.py (Hq=32, Hkv=8, D=128, Lq=1, bf16, B = 1/8/64,
Lkv = 4K/32K/128K; --quick: B = 1/64, Lkv = 4K/32K). Times are medians of
triton.testing.do_bench; bandwidth counts the K and V bytes one step reads; the copy
bandwidth is a torch copy_ of a 2 GiB tensor, bytes read plus written over its median time.
--sweep also times attngen over a grid of DecodeConfigs (tiles, warps, stages, splits) for
each case, within --sweep-budget seconds per case. Writes DIR/decode.md and DIR/decode.json
(DIR: --out, else $OUT, else benchmarks/results/serving/; --smoke: a temporary folder). A
relative error over 2e-2 is shouted in a !!! banner and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_decode as sd  # noqa: E402 - benchmarks/ is a folder of scripts
from bench_common import device_and_dtype, run_environment  # noqa: E402
from result_files import default_out, git_commit, write_atomic  # noqa: E402

COPY_BYTES = 2 << 30


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else "
                   "benchmarks/results/serving/)")
    p.add_argument("--quick", action="store_true", help="B = 1/64, Lkv = 4K/32K only")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any machine (checks the script only)")
    p.add_argument("--batches", default=None, help="comma-separated B (default 1,8,64)")
    p.add_argument("--lengths", default=None, help="comma-separated Lkv (default 4096,32768,131072)")
    p.add_argument("--no-peers", action="store_true", help="attngen only")
    p.add_argument("--sweep", action="store_true", help="also time attngen over a grid of DecodeConfigs")
    p.add_argument("--sweep-budget", type=float, default=30.0, help="seconds of sweep per case, shared by the "
                   "contiguous layout and each page size (default 30)")
    p.add_argument("--warmup", type=float, default=25.0, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=float, default=100.0, help="do_bench repetitions, ms")
    return p.parse_args(argv)


def make_timer(args: argparse.Namespace, device: torch.device):
    if device.type != "cuda":
        def wall_ms(fn) -> float:  # the interpreter: one call's wall time, no performance figure
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return wall_ms
    import triton

    return lambda fn: float(triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median"))


def copy_bandwidth(device: torch.device, timer, n: int) -> float:
    """GB/s of a copy of ``n`` bytes on the device: bytes read plus bytes written over the time."""
    src = torch.ones(n // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * n / (ms * 1e-3) / 1e9


def summary_rows(result: sd.CaseResult) -> dict:
    by = {m.backend: m for m in result.rows}
    sdpa = [by[b].ms for b in sd.SDPA_BACKENDS if b in by and by[b].ms is not None]
    ours = by.get("attngen")
    ms = ours.ms if ours else None
    return {
        "flex_over_attngen": None if ms is None or by.get("flex") is None or by["flex"].ms is None
        else by["flex"].ms / ms,
        "best_sdpa_over_attngen": None if ms is None or not sdpa else min(sdpa) / ms,
        **{f"paged{p}_over_contiguous": None if ms is None or by.get(f"attngen paged{p}") is None
           or by[f"attngen paged{p}"].ms is None else by[f"attngen paged{p}"].ms / ms for p in sd.PAGE_SIZES},
    }


def markdown(env: dict, copy_gbps: float, copy_bytes: int, results: list[sd.CaseResult], elem: int) -> str:
    lines = [
        "# attngen serving benchmark: decoding",
        "",
        f"- date (UTC): {env['date_utc']}; GPU: {env['device']}",
        f"- torch {env['torch']}, Triton {env['triton']}, attngen {env['attngen']} (commit {env['commit']}), "
        f"CUDA {env['cuda']}",
        f"- {env['dtype']}, Hq={results[0].case.Hq if results else '?'}, Hkv={results[0].case.Hkv if results else '?'}, "
        f"D={results[0].case.D if results else '?'}, Lq=1, every sequence full; median of triton.testing.do_bench",
        f"- measured copy bandwidth: {copy_gbps:.0f} GB/s (torch copy_ of {copy_bytes / 2**30:g} GiB, bytes read + "
        "written / time); GB/s below = K and V bytes / time",
        "- attngen config: mM nN wW sS xX = block_m, block_n, num_warps, num_stages, num_splits",
        f"- err: relative L2 error of sequence 0 against float32 attention (must be < {sd.MAX_REL_ERR:g})",
        "",
        "| case | attngen us | % of copy | Flex / attngen | best SDPA / attngen | paged16 / contiguous | "
        "paged64 / contiguous |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.case.label} | skipped: {r.skipped} | | | | | |")
            continue
        ours = next((m for m in r.rows if m.backend == "attngen"), None)
        s = summary_rows(r)
        pct = "-" if ours is None or ours.ms is None else f"{100 * ours.gbps(r.case, elem) / copy_gbps:.0f}%"
        us = "-" if ours is None or ours.ms is None else f"{ours.ms * 1e3:.1f}"
        cells = [f"x{s['flex_over_attngen']:.2f}" if s["flex_over_attngen"] else "-",
                 f"x{s['best_sdpa_over_attngen']:.2f}" if s["best_sdpa_over_attngen"] else "-",
                 *(f"{s[f'paged{p}_over_contiguous']:.2f}" if s[f"paged{p}_over_contiguous"] else "-"
                   for p in sd.PAGE_SIZES)]
        lines.append(f"| {r.case.label} | {us} | {pct} | " + " | ".join(cells) + " |")
    lines += ["", "Every backend (time, bandwidth, share of the copy bandwidth, error):", "",
              "| case | backend | us | GB/s | % of copy | err | config / error |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for m in r.rows + r.sweep:
            name = m.backend + (" (sweep)" if m in r.sweep else "")
            if m.ms is None:
                lines.append(f"| {r.case.label} | {name} | n/a | | | | {m.error} |")
                continue
            gbps = m.gbps(r.case, elem)
            flag = "" if m.rel_err is not None and m.rel_err < sd.MAX_REL_ERR else " **WRONG**"
            lines.append(f"| {r.case.label} | {name} | {m.ms * 1e3:.1f} | {gbps:.0f} | {100 * gbps / copy_gbps:.0f}% | "
                         f"{m.rel_err:.1e}{flag} | {m.config or ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    found = device_and_dtype("bench_serving.py", args.smoke)
    if found is None:
        return 2
    device, dtype = found
    out = args.out or default_out("serving", smoke=args.smoke)
    out.mkdir(parents=True, exist_ok=True)
    timer = make_timer(args, device)
    env = run_environment(device, dtype, git_commit())
    copy_bytes = (1 << 20) if args.smoke else COPY_BYTES
    copy_gbps = copy_bandwidth(device, timer, copy_bytes)
    ints = lambda text: tuple(int(x) for x in text.split(",")) if text else None  # noqa: E731
    results = []
    for case in sd.cases(args.quick, args.smoke, ints(args.batches), ints(args.lengths)):
        start = time.perf_counter()
        result = sd.run_case(case, device, dtype, timer, peers=not (args.no_peers or args.smoke),
                             sweep_budget_s=args.sweep_budget if args.sweep else 0.0)
        results.append(result)
        print(f"{case.label}: {time.perf_counter() - start:.1f} s", flush=True)
    elem = torch.finfo(dtype).bits // 8
    text = markdown(env, copy_gbps, copy_bytes, results, elem)
    data = {"environment": env, "copy_gbps": copy_gbps, "copy_bytes": copy_bytes,
            "cases": [{"B": r.case.B, "Lkv": r.case.L, "Hq": r.case.Hq, "Hkv": r.case.Hkv, "D": r.case.D,
                       "skipped": r.skipped, **summary_rows(r),
                       "rows": [{"backend": m.backend, "ms": m.ms, "gbps": m.gbps(r.case, elem), "rel_err": m.rel_err,
                                 "config": m.config, "error": m.error} for m in r.rows],
                       "sweep": [{"config": m.config, "ms": m.ms, "gbps": m.gbps(r.case, elem), "rel_err": m.rel_err,
                                  "error": m.error} for m in r.sweep]} for r in results]}
    write_atomic(out / "decode.md", text)
    write_atomic(out / "decode.json", json.dumps(data, indent=1) + "\n")
    print(text)
    print(f"wrote {out / 'decode.md'} and {out / 'decode.json'}")
    wrong = [(r.case.label, m.backend) for r in results for m in r.rows + r.sweep
             if m.rel_err is not None and not m.rel_err < sd.MAX_REL_ERR and m.backend.startswith("attngen")]
    if wrong:
        print(f"!!! attngen results over the {sd.MAX_REL_ERR:g} error bound: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
