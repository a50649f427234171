"""Compile-time benchmark: how long a new attention variant takes to become callable.

    PYTHONPATH=. python benchmarks/bench_compile.py [--out DIR] [--variants causal,na2d] [--libraries attngen]
    PYTHONPATH=. python benchmarks/bench_compile.py --smoke        # CPU, Triton interpreter: checks the plumbing

For each variant, attngen (``ag.compile`` + the first call) and FlexAttention
(``create_block_mask`` + the first call of ``torch.compile(flex_attention)``) are measured in
two fresh Python processes that share one temporary cache folder (ATTNGEN_CACHE_DIR,
TRITON_CACHE_DIR and TORCHINDUCTOR_CACHE_DIR point into it): the first process starts with
empty caches (code generation and JIT compilation), the second loads what the first left
(the disk-cache path). Every variant and library gets a fresh folder. Targets (issue
"Autotuning ...", item 3): attngen's first call under 5 s in the first process and under
0.5 s in the second; imports and CUDA initialization are reported separately, not counted.

Results go to DIR/compile.md and DIR/compile.json (DIR: --out, else $OUT, else
benchmarks/results/compile/), rewritten after every process, so a run cut short keeps what it
measured; a worker's stderr is kept in DIR/compile_logs/. ``--worker`` is the measuring side:
it prints its timings as JSON on its last stdout line.
"""
from __future__ import annotations

# Only the standard library at module level: a worker process times its own imports.
import argparse
import datetime
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from compile_processes import PROCESSES, Record, load_earlier, measured_pairs, run_primer, run_scenario
from compile_report import full_markdown, missed_targets, progress_line, write_results
from compile_variants import FLEX_CANNOT, GPU_SIZES, LIBRARIES, SMOKE_SIZES, VARIANTS
from compile_worker import worker_main
from result_files import default_out, git_commit

def parent_main(args: argparse.Namespace) -> int:
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    libraries = ["attngen"] if args.smoke else args.libraries
    config = {"sizes": asdict(sizes), "variants": args.variants, "libraries": libraries, "smoke": args.smoke,
              "backward": not args.no_backward, "prime": args.prime, "worker_timeout_s": args.worker_timeout}
    records, earlier_env = load_earlier(args.merge, config) if args.merge else ([], {})
    env: dict[str, Any] = {**earlier_env, "commit": git_commit(),
                           "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")}
    if args.merge:
        env["merged"] = (f"{args.merge} (measured {earlier_env.get('date_utc', '?')}, "
                         f"commit {earlier_env.get('commit', '?')})")
    done = measured_pairs(records)
    # library by library, so a run cut short has every attngen number first
    plan = [(lib, v) for lib in libraries for v in args.variants if (lib, v) not in done]
    with tempfile.TemporaryDirectory(prefix="bench-compile-primer-") as primer_dir:
        seed = None
        if args.prime and plan:
            record, worker_info = run_primer(args, Path(primer_dir))
            records.append(record)
            env = {**worker_info, **env} if "error" not in worker_info else env
            print(f"[primer] {progress_line(record)}", flush=True)
            seed = Path(primer_dir) / "triton"
        for i, (library, variant) in enumerate(plan):
            if library == "flex" and variant in FLEX_CANNOT:
                records.append(Record(library, variant, "-", skipped=FLEX_CANNOT[variant]))
                print(f"[{i + 1}/{len(plan)}] {progress_line(records[-1])}", flush=True)
                continue
            for record, worker_info in run_scenario(library, variant, args, seed):
                records.append(record)
                env = {**worker_info, **env} if "error" not in worker_info else env
                print(f"[{i + 1}/{len(plan)}] {progress_line(record)}", flush=True)
                write_results(args.out, env, config, records)
    md, js = write_results(args.out, env, config, records)
    print(f"wrote {md} and {js}\n", flush=True)
    failed = [f"{r.library} {r.variant} {r.process}" for r in records if r.failed]
    if failed:
        print("!!! failed: " + ", ".join(failed), flush=True)
    missed = [] if args.smoke else missed_targets(records)
    if missed:
        print("!!! attngen first call over target: " + ", ".join(missed), flush=True)
    print(full_markdown(env, config, records), flush=True)  # last, so the output's tail holds the tables
    return 1 if any(r.failed and r.library == "attngen" and r.process in PROCESSES for r in records) else 0


def name_list(known: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown) or '(empty)'}; known: {', '.join(known)}")
        return names

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for compile.md, compile.json and compile_logs/ "
                        "(default: $OUT, else benchmarks/results/compile/; --smoke: a temporary folder)")
    p.add_argument("--variants", type=name_list(VARIANTS), default=list(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    p.add_argument("--libraries", type=name_list(LIBRARIES), default=list(LIBRARIES),
                   help="comma-separated subset of attngen,flex (default: both; --smoke runs attngen only)")
    p.add_argument("--no-backward", action="store_true", help="skip the first forward+backward (backward kernels)")
    p.add_argument("--no-prime", dest="prime", action="store_false",
                   help="do not run Triton's one-time setup in a primer process first (its cache seeds every "
                        "scenario's): each 1st process then pays it, as on a machine that never ran Triton")
    p.add_argument("--worker-timeout", type=float, default=300.0,
                   help="seconds one worker process may take before it is recorded as timed out (default 300)")
    p.add_argument("--merge", type=Path, default=None,
                   help="compile.json of an earlier run on the same problem (one cut short by a time limit, or "
                        "another --libraries): its records are kept and not measured again")
    p.add_argument("--smoke", action="store_true",
                   help="CPU check of the plumbing: Triton interpreter, float32, tiny sizes, no FlexAttention; the "
                        "numbers measure code generation and module loading only (the interpreter has no JIT)")
    p.add_argument("--worker", choices=("attngen", "flex", "primer"), help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, default=VARIANTS[0], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = default_out("compile", args.smoke)
    if args.smoke:
        args.prime = False  # the interpreter builds nothing
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return worker_main(args) if args.worker else parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
