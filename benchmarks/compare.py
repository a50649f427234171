"""The whole comparison in one command: attngen against FlexAttention, SDPA flash, SDPA cuDNN
(and fla for linear attention), family by family, forward and forward+backward, on one GPU.

    PYTHONPATH=. python benchmarks/compare.py --out DIR                        # everything
    PYTHONPATH=. python benchmarks/compare.py --out DIR --families dense,causal --modes fwd
    PYTHONPATH=. python benchmarks/compare.py --merge DIR1 DIR2 --out DIR      # one report from split runs
    PYTHONPATH=. python benchmarks/compare.py --headline DIR/compare.json      # README.md's headline table
    PYTHONPATH=. python benchmarks/compare.py --smoke                          # tiny sizes, any machine

Families (benchmarks/compare_cases.py; bf16, D=128 unless noted): dense and causal (B=2 H=16
L=8192 D=128; B=4 H=16 L=4096 D=64), causal sliding window 1024, causal packed documents
(4 x 2048), score_mods (ALiBi with runtime slopes, tanh soft-capping at 30; causal),
neighborhood 1-D/2-D/3-D (NATTEN semantics, B=1), sigmoid (dense and causal; no peer computes
it, so attngen's and Flex's softmax are the reference points) and linear (`lightning`, B=8
H=32, L=2048/4096/16384, against fla's chunk_simple_gla and causal softmax SDPA).

For every case and mode, in one process on the same inputs: each backend is built and called
once (compilation; reported as the first-call time), its output (and dq, dk, dv) checked
against a float64 reference and attngen against every peer computing the same function
(a miss is shouted and makes the exit status 1; the run goes on), then timed with
triton.testing.do_bench (median). A backend that cannot run shows as n/a (reason); one that
cannot express the case as "-".

Writes DIR/compare.md (header with date, GPU and versions, one table per family),
DIR/compare.json (every number), DIR/compare.png (all families) and DIR/plots.tar.gz with
plots/<family>.png (also written loose unless DIR is $OUT: the device tool returns at most 8
files). DIR defaults to $OUT, else benchmarks/results/compare/ (--smoke: a temporary folder).
Results are rewritten after every case, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import torch

import attngen as ag  # first: without a GPU it selects the Triton interpreter before triton is imported

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as common  # noqa: E402 - benchmarks/ is a folder of scripts
import bench_forward as bf  # noqa: E402
import compare_cases as cc  # noqa: E402
import compare_report as cr  # noqa: E402
from device_timing import first_call, time_ms  # noqa: E402
from report import Measurement, relative_l2, short_reason, tflops  # noqa: E402
from result_files import default_out, git_commit, write_atomic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
START = time.monotonic()


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for compare.md/.json/.png and plots (default: $OUT, else "
                        "benchmarks/results/compare/)")
    p.add_argument("--families", default=None,
                   help="comma-separated families to run (default: all): " + ", ".join(cr.FAMILIES))
    p.add_argument("--cases", default=None,
                   help="comma-separated case keys to run, within --families (default: all; --list shows them)")
    p.add_argument("--modes", default="fwd,fwdbwd",
                   help="comma-separated modes: fwd (forward under no_grad), fwdbwd (forward + out.backward(dout)); "
                        "default both")
    p.add_argument("--smoke", action="store_true",
                   help="tiny stand-ins of every case on whatever device is present; on a CPU: Triton interpreter, "
                        "float32, attngen and the reference checks only, wall times of one call (not performance)")
    p.add_argument("--warmup", type=float, default=25.0, help="do_bench warm-up in ms (default 25)")
    p.add_argument("--rep", type=float, default=100.0, help="do_bench repetition time in ms (default 100)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the random inputs (each case adds its own)")
    p.add_argument("--plot-files", choices=("auto", "both", "tar"), default="auto",
                   help="plots/<family>.png loose and in plots.tar.gz (both), or only the tarball (tar); auto: tar "
                        "when --out is $OUT (the device tool returns at most 8 files), else both. compare.png is "
                        "always written")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="DIR",
                   help="merge the compare.json of these folders (or JSON files; a later run's row replaces an "
                        "earlier one of the same case and mode) into one report under --out; runs nothing")
    p.add_argument("--headline", type=Path, default=None, metavar="JSON",
                   help="rewrite README.md's block between <!-- headline:start --> and <!-- headline:end --> "
                        "with the headline table of this compare.json; runs nothing")
    p.add_argument("--readme", type=Path, default=REPO / "README.md", help="README for --headline (default: the "
                                                                             "repository's README.md)")
    p.add_argument("--list", action="store_true", help="print the selected cases and exit")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = default_out("compare", args.smoke)
    args.modes = split_choices(p, "--modes", args.modes, cr.MODES)
    args.families = split_choices(p, "--families", args.families, tuple(cr.FAMILIES))
    return args


def split_choices(p: argparse.ArgumentParser, flag: str, text: str | None, known: Sequence[str]) -> list[str]:
    if not text:
        return list(known)
    picked = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in picked if x not in known]
    if unknown:
        p.error(f"{flag}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return [x for x in known if x in picked]


def select_cases(args: argparse.Namespace) -> list[cc.Case]:
    cases = [c for c in cc.all_cases(args.smoke) if c.family in args.families]
    if args.cases:
        keys = [k.strip() for k in args.cases.split(",") if k.strip()]
        unknown = [k for k in keys if k not in {c.key for c in cases}]
        if unknown:
            raise SystemExit(f"--cases: unknown {', '.join(unknown)}; known in the selected families: "
                             + ", ".join(c.key for c in cases))
        cases = [c for c in cases if c.key in keys]
    return cases


# --------------------------------------------------------------------------- environment, output


def log(msg: str) -> None:
    print(f"[{time.monotonic() - START:7.1f} s] {msg}", flush=True)


def environment(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {**common.run_environment(device, dtype, git_commit()), "fla": None, "smoke": args.smoke,
            "warmup_ms": args.warmup, "rep_ms": args.rep, "seed": args.seed, "families": args.families,
            "modes": args.modes}


def fla_version() -> str | None:
    """fla's version when a linear case imported it."""
    mod = sys.modules.get("fla")
    return getattr(mod, "__version__", "unknown") if mod is not None else None


def loose_plots(args: argparse.Namespace) -> bool:
    if args.plot_files != "auto":
        return args.plot_files == "both"
    out_env = os.environ.get("OUT")
    return not (out_env and Path(out_env).resolve() == args.out.resolve())


def write_outputs(out: Path, env: dict[str, Any], rows: Sequence[cr.Row], parts: Sequence[dict[str, Any]] = (),
                  plot_note: str | None = None) -> str:
    """compare.md and compare.json, each replaced atomically; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = cr.markdown(env, rows, parts, plot_note)
    write_atomic(out / "compare.md", text)
    write_atomic(out / "compare.json", json.dumps(cr.to_json(env, rows, parts), indent=2, allow_nan=True) + "\n")
    return text


def finish(args: argparse.Namespace, env: dict[str, Any], rows: Sequence[cr.Row],
           parts: Sequence[dict[str, Any]] = ()) -> int:
    """Plots, final files, the report on stdout (headline last, for the output's tail); 1 on failures."""
    note = cr.write_plots(args.out, env, rows, loose_plots(args))
    text = write_outputs(args.out, env, rows, parts, note)
    print("\n" + text, flush=True)
    print("## Headline\n\n" + cr.headline_table(rows) + "\n", flush=True)
    log(f"wrote {args.out / 'compare.md'}, compare.json; plots: {note}")
    failures = [f for r in rows for f in r.failures()]
    if failures:
        bf.shout(f"{len(failures)} failure(s): " + "; ".join(failures))
    return 1 if failures else 0


# --------------------------------------------------------------------------- one backend, one case


def first_result(fn: cc.Fn, inp: cc.Inputs, mode: str, device: torch.device):
    """The first call (which compiles), outputs poisoned first: (out, None) forward, (out, (dq, dk, dv))
    forward+backward."""
    if mode == "fwd":
        with torch.no_grad():
            return first_call(fn, device), None

    def step() -> torch.Tensor:
        inp.zero_grad()
        out = fn()
        out.backward(inp.dout)
        return out

    out = first_call(step, device)
    return out.detach(), inp.grads()


def timed_step(fn: cc.Fn, inp: cc.Inputs, mode: str) -> cc.Fn:
    return fn if mode == "fwd" else (lambda: fn().backward(inp.dout))


def time_backend(fn: cc.Fn, inp: cc.Inputs, mode: str, device: torch.device, args: argparse.Namespace) -> float:
    with torch.set_grad_enabled(mode == "fwdbwd"):
        return time_ms(timed_step(fn, inp, mode), device, args.warmup, args.rep)


def reference_checks(backend: str, result, ref: cc.Reference) -> list[cr.Check]:
    out, grads = result
    checks = [cr.Check(backend, "reference", "out", relative_l2(ref.pick(out), ref.out), ref.detail)]
    if grads is not None and ref.grads is not None:
        checks += [cr.Check(backend, "reference", name, relative_l2(cc.first_slice(g), r), ref.grad_detail)
                   for name, g, r in zip(("dq", "dk", "dv"), grads, ref.grads)]
    return checks


def cross_checks(peer: str, theirs, mine) -> list[cr.Check]:
    """attngen's result (``mine``) against a peer's computing the same function, on the whole tensors."""
    pairs = [("out", mine[0], theirs[0])]
    if mine[1] is not None and theirs[1] is not None:
        pairs += list(zip(("dq", "dk", "dv"), mine[1], theirs[1]))
    return [cr.Check(cr.ATTNGEN, peer, what, relative_l2(a, b), "whole tensors") for what, a, b in pairs]


def describe(checks: Sequence[cr.Check]) -> str:
    """'vs reference (float64, b=0 h=0): out 1.2e-03, dq ...; attngen vs flex: out ...' for the log."""
    groups: dict[str, list[str]] = {}
    for c in checks:
        who = f"vs {c.against} ({c.detail})" if c.against == "reference" else f"{c.backend} vs {c.against}"
        groups.setdefault(who, []).append(f"{c.what} " + ("n/a" if c.err is None else f"{c.err:.1e}"))
    return "; ".join(f"{who}: {', '.join(errs)}" for who, errs in groups.items())


class References:
    """float64 references per variant, computed once per case and mode when first needed."""

    def __init__(self, case: cc.Case, inp: cc.Inputs, mode: str, seed: int) -> None:
        self.case, self.inp, self.mode, self.seed = case, inp, mode, seed
        self.done: dict[ag.Variant, cc.Reference | Exception] = {}

    def get(self, variant: ag.Variant, backend: str) -> cc.Reference:
        if variant not in self.done:
            start = time.perf_counter()
            try:
                self.done[variant] = cc.reference(self.case, variant, self.inp, self.mode, self.seed)
                log(f"    float64 reference (for {backend}) in {time.perf_counter() - start:.1f} s")
            except Exception as exc:  # e.g. out of memory: recorded as a failed check
                self.done[variant] = exc
                free_memory()
        got = self.done[variant]
        if isinstance(got, Exception):
            raise RuntimeError("reference failed: " + short_reason(got))
        return got


def run_backend(backend: str, case: cc.Case, inp: cc.Inputs, row: cr.Row, refs: References,
                kept: dict[str, Any], device: torch.device, args: argparse.Namespace) -> None:
    """Build, first-call, check and time one backend; everything lands in ``row``."""
    tag = f"{case.key} {cr.MODE_TITLES[row.mode]} {backend}"
    m = row.measurements[backend] = Measurement(backend)
    if not cc.runs_on(backend, device):
        m.error = "smoke on CPU: not run"
        return
    start = time.perf_counter()
    try:
        fn = cc.build(backend, case, inp)
        result = first_result(fn, inp, row.mode, device)
    except Exception as exc:
        m.error = short_reason(exc)
        log(f"  {tag}: n/a ({m.error})")
        free_memory()
        return
    m.setup_s = time.perf_counter() - start
    try:
        checks = reference_checks(backend, result, refs.get(case.variant_of(backend), backend))
    except RuntimeError as exc:
        checks = [cr.Check(backend, "reference", "out", None, str(exc))]
    m.rel_err = max((c.err for c in checks if c.err is not None), default=None)
    if backend == cr.ATTNGEN:
        kept[backend] = result
    elif case.same_function(backend) and cr.ATTNGEN in kept:
        checks += cross_checks(backend, result, kept[cr.ATTNGEN])
    row.checks += checks
    log(f"  {tag}: first call {m.setup_s:.1f} s; {describe(checks)}")
    for c in checks:
        if not c.ok:
            bf.shout(f"{tag}: {c.what} vs {c.against} err {c.err} ({c.detail}) over {cr.MAX_REL_ERR:g}")
    del result
    try:
        m.ms = time_backend(fn, inp, row.mode, device, args)
        m.tflops = tflops(row.flops, m.ms)
        log(f"  {tag}: {m.ms:9.3f} ms {m.tflops:7.1f} TFLOP/s")
    except Exception as exc:
        m.error = "timing: " + short_reason(exc)
        log(f"  {tag}: n/a ({m.error})")
        free_memory()


def case_seed(case: cc.Case, base: int) -> int:
    """Stable per case, whatever subset of families a run selects."""
    return base + zlib.crc32(case.key.encode()) % 100_000


def run_case(case: cc.Case, device: torch.device, dtype: torch.dtype, args: argparse.Namespace) -> list[cr.Row]:
    seed = case_seed(case, args.seed)
    inp = cc.make_inputs(case, device, dtype, seed)
    rows = []
    for mode in args.modes:
        row = cr.Row(case.family, case.key, case.title, mode, case.flops(mode), case.main, list(case.backends))
        refs, kept = References(case, inp, mode, seed), {}
        for backend in case.backends:
            run_backend(backend, case, inp, row, refs, kept, device, args)
        row.notes += gradient_notes(case, row)
        rows.append(row)
        del refs, kept
        free_memory()
    return rows


def gradient_notes(case: cc.Case, row: cr.Row) -> list[str]:
    """Say where attngen's gradients were checked against less than the float64 reference."""
    if row.mode != "fwdbwd" or case.L <= cc.GRAD_REF_MAX_L:
        return []
    checked = any(c.backend == cr.ATTNGEN and c.what == "dq" for c in row.checks)
    why = f"the float64 reference would materialize {case.L}^2 entries per head"
    return [f"{case.key}: attngen's gradients checked against its peers only ({why})" if checked else
            f"{case.key}: attngen's gradients NOT checked ({why}, and no peer computing the same function ran)"]


def guarded_run_case(case: cc.Case, device: torch.device, dtype: torch.dtype,
                     args: argparse.Namespace) -> list[cr.Row]:
    """``run_case``, with a failure outside any one backend (inputs, say) recorded as attngen's."""
    try:
        return run_case(case, device, dtype, args)
    except Exception as exc:
        bf.shout(f"case {case.key} failed: {short_reason(exc)}")
        free_memory()
        return [cr.Row(case.family, case.key, case.title, mode, case.flops(mode), case.main, list(case.backends),
                       {b: Measurement(b, error="case setup: " + short_reason(exc)) for b in case.backends})
                for mode in args.modes]


def free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- commands


def run(args: argparse.Namespace) -> int:
    picked = common.device_and_dtype("compare.py", args.smoke)
    if picked is None:
        return 2
    device, dtype = picked
    cases = select_cases(args)
    env = environment(args, device, dtype)
    log(f"{env['device']} | torch {env['torch']} | Triton {env['triton']} | attngen {env['attngen']} | "
        f"{env['dtype']} | {len(cases)} cases x {len(args.modes)} modes | out: {args.out}")
    rows: list[cr.Row] = []
    for i, case in enumerate(cases):
        log(f"[{i + 1}/{len(cases)}] {case.family}: {case.key} ({case.title})")
        rows += guarded_run_case(case, device, dtype, args)
        free_memory()  # the case's inputs are gone: hand their memory back before the next family
        env["fla"] = fla_version()
        write_outputs(args.out, env, rows)
    return finish(args, env, rows)


def merge_dirs(args: argparse.Namespace) -> int:
    docs = []
    for path in args.merge:
        path = path / "compare.json" if path.is_dir() else path
        docs.append(json.loads(path.read_text()))
    env, rows, parts = cr.from_json(cr.merge(docs))
    bad = cr.mismatched_parts(parts)
    if bad:
        bf.shout(f"the merged runs differ in {', '.join(bad)}: their timings do not compare")
    return finish(args, env, rows, parts)


def write_headline(args: argparse.Namespace) -> int:
    env, rows, parts = cr.from_json(json.loads(args.headline.read_text()))
    try:
        source = args.headline.resolve().relative_to(REPO).as_posix()
    except ValueError:
        source = str(args.headline)
    block = cr.headline_block(env, rows, source, runs=len(parts))
    args.readme.write_text(cr.replace_between_markers(args.readme.read_text(), block))
    print(block)
    print(f"\nrewrote the headline block of {args.readme}")
    return 0


def list_cases(args: argparse.Namespace) -> int:
    for c in select_cases(args):
        print(f"{c.family:<13} {c.key:<18} {c.title}{' (main)' if c.main else ''}; backends: {', '.join(c.backends)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.headline is not None:
        return write_headline(args)
    if args.merge:
        return merge_dirs(args)
    if args.list:
        return list_cases(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
