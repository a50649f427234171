"""Serving benchmark, decode part: attngen's split-KV decoding (contiguous and paged caches)
against FlexAttention's compiled decoding and SDPA, with achieved bandwidth next to the
machine's measured copy bandwidth.

    PYTHONPATH=. python benchmarks/bench_serving.py [--out DIR] [--quick] [--sweep]
    PYTHONPATH=. python benchmarks/bench_serving.py --smoke      # CPU, Triton interpreter, tiny sizes

Cases and backends: benchmarks/serving_decode.py (Hq=32, Hkv=8, D=128, Lq=1, bf16, B = 1/8/64,
Lkv = 4K/32K/128K; --quick: B = 1/64, Lkv = 4K/32K). Times are medians of
triton.testing.do_bench (the targets' measure; a call's host time shows there when it exceeds
the GPU's), and again from CUDA-graph replays (GPU time only, as a serving loop that captures
its decode step sees), both with L2 flushed before each call; bandwidth counts the K and V
bytes one step reads; the copy bandwidth is a torch copy_ of a 2 GiB tensor, bytes read plus
written over its median time.
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


def make_timers(args: argparse.Namespace, device: torch.device) -> sd.Timers:
    if device.type != "cuda":
        def wall_ms(fn) -> float:  # the interpreter: one call's wall time, no performance figure
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return sd.Timers(wall_ms)
    import triton

    def eager_ms(fn) -> float:
        return float(triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median"))

    return sd.Timers(eager_ms, graph_ms)


def graph_ms(fn, round_ms: float = 10.0, rounds: int = 5) -> float:
    """The GPU time of ``fn`` replayed in a CUDA graph, with L2 flushed before each call as
    do_bench does: graphs of (flush, fn) and of the flush alone, replayed for about
    ``round_ms`` each per round; the median over rounds of the difference per replay. A
    replay's host cost is a few microseconds, below the flush's GPU time, so the GPU never
    waits for the host."""
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (allocator, lazy inits)
        fn()
        flush.zero_()
    torch.cuda.current_stream().wait_stream(side)
    only_flush, flush_then_fn = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(only_flush):
        flush.zero_()
    with torch.cuda.graph(flush_then_fn):
        flush.zero_()
        fn()

    def per_replay(graph: torch.cuda.CUDAGraph, reps: int) -> float:
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / reps

    reps = max(3, min(100, int(round_ms / max(per_replay(flush_then_fn, 1), 1e-3))))
    diffs = sorted(per_replay(flush_then_fn, reps) - per_replay(only_flush, reps) for _ in range(rounds))
    return max(diffs[len(diffs) // 2], 0.0)


def copy_bandwidth(device: torch.device, timer, n: int) -> float:
    """GB/s of a copy of ``n`` bytes on the device: bytes read plus bytes written over the time."""
    src = torch.ones(n // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * n / (ms * 1e-3) / 1e9


def summary_rows(result: sd.CaseResult, graph: bool = False) -> dict:
    """The targets' ratios for one case (> 1: attngen faster), from do_bench or graph times."""
    def ms(backend: str) -> float | None:
        m = next((m for m in result.rows if m.backend == backend), None)
        return None if m is None else (m.graph_ms if graph else m.ms)

    ours = ms("attngen")
    sdpa = [t for t in (ms(b) for b in sd.SDPA_BACKENDS) if t is not None]
    flex = ms("flex")

    def over(peer: float | None) -> float | None:
        return None if ours is None or peer is None else peer / ours

    return {"attngen_ms": ours, "flex_over_attngen": over(flex), "best_sdpa_over_attngen": over(min(sdpa, default=None)),
            **{f"paged{p}_over_contiguous": None if ours is None or ms(f"attngen paged{p}") is None
               else ms(f"attngen paged{p}") / ours for p in sd.PAGE_SIZES}}


def summary_table(results: list[sd.CaseResult], copy_gbps: float, elem: int, graph: bool) -> list[str]:
    lines = ["| case | attngen us | % of copy | Flex / attngen | best SDPA / attngen | paged16 / contiguous | "
             "paged64 / contiguous |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.case.label} | skipped: {r.skipped} | | | | | |")
            continue
        s = summary_rows(r, graph)
        ours = s["attngen_ms"]
        pct = "-" if ours is None else f"{100 * r.case.kv_bytes(elem) / (ours * 1e-3) / 1e9 / copy_gbps:.0f}%"
        cells = [f"x{s[key]:.2f}" if s[key] else "-" for key in ("flex_over_attngen", "best_sdpa_over_attngen")]
        cells += [f"{s[f'paged{p}_over_contiguous']:.2f}" if s[f"paged{p}_over_contiguous"] else "-"
                  for p in sd.PAGE_SIZES]
        lines.append(f"| {r.case.label} | {'-' if ours is None else f'{ours * 1e3:.1f}'} | {pct} | "
                     + " | ".join(cells) + " |")
    return lines


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
        "Times from do_bench (the targets' measure):",
        "",
        *summary_table(results, copy_gbps, elem, graph=False),
    ]
    if any(m.graph_ms is not None for r in results for m in r.rows):
        lines += ["", "The same from CUDA-graph replays (GPU time, no host time; what a serving loop that "
                  "captures its decode step sees):", "", *summary_table(results, copy_gbps, elem, graph=True)]
    lines += ["", "Every backend (do_bench time, bandwidth and share of the copy bandwidth; the same from "
              "CUDA-graph replays; error):", "",
              "| case | backend | us | GB/s | % of copy | graph us | graph % of copy | err | config / error |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for m in r.rows + r.sweep:
            name = m.backend + (" (sweep)" if m in r.sweep else "")
            if m.ms is None:
                lines.append(f"| {r.case.label} | {name} | n/a | | | | | | {m.error} |")
                continue
            gbps = m.gbps(r.case, elem)
            graph = "-" if m.graph_ms is None else f"{m.graph_ms * 1e3:.1f}"
            graph_pct = "-" if m.graph_ms is None else f"{100 * m.gbps(r.case, elem, graph=True) / copy_gbps:.0f}%"
            flag = "" if m.rel_err is not None and m.rel_err < sd.MAX_REL_ERR else " **WRONG**"
            note = " ".join(x for x in (m.config, m.graph_error and f"(graph: {m.graph_error})") if x)
            lines.append(f"| {r.case.label} | {name} | {m.ms * 1e3:.1f} | {gbps:.0f} | {100 * gbps / copy_gbps:.0f}% | "
                         f"{graph} | {graph_pct} | {m.rel_err:.1e}{flag} | {note} |")
    return "\n".join(lines) + "\n"


def row_json(m: sd.Measurement, case: sd.DecodeCase, elem: int) -> dict:
    return {"backend": m.backend, "config": m.config, "ms": m.ms, "gbps": m.gbps(case, elem), "graph_ms": m.graph_ms,
            "graph_gbps": m.gbps(case, elem, graph=True), "rel_err": m.rel_err, "error": m.error,
            "graph_error": m.graph_error}


def main(argv=None) -> int:
    args = parse_args(argv)
    found = device_and_dtype("bench_serving.py", args.smoke)
    if found is None:
        return 2
    device, dtype = found
    out = args.out or default_out("serving", smoke=args.smoke)
    out.mkdir(parents=True, exist_ok=True)
    timers = make_timers(args, device)
    env = run_environment(device, dtype, git_commit())
    copy_bytes = (1 << 20) if args.smoke else COPY_BYTES
    copy_gbps = copy_bandwidth(device, timers.eager, copy_bytes)
    ints = lambda text: tuple(int(x) for x in text.split(",")) if text else None  # noqa: E731
    results = []
    for case in sd.cases(args.quick, args.smoke, ints(args.batches), ints(args.lengths)):
        start = time.perf_counter()
        result = sd.run_case(case, device, dtype, timers, peers=not (args.no_peers or args.smoke),
                             sweep_budget_s=args.sweep_budget if args.sweep else 0.0)
        results.append(result)
        print(f"{case.label}: {time.perf_counter() - start:.1f} s", flush=True)
    elem = torch.finfo(dtype).bits // 8
    text = markdown(env, copy_gbps, copy_bytes, results, elem)
    data = {"environment": env, "copy_gbps": copy_gbps, "copy_bytes": copy_bytes,
            "cases": [{"B": r.case.B, "Lkv": r.case.L, "Hq": r.case.Hq, "Hkv": r.case.Hkv, "D": r.case.D,
                       "skipped": r.skipped, "do_bench": summary_rows(r), "graph": summary_rows(r, graph=True),
                       "rows": [row_json(m, r.case, elem) for m in r.rows],
                       "sweep": [row_json(m, r.case, elem) for m in r.sweep]} for r in results]}
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
