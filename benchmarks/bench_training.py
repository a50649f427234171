"""Training runs that match: the two example models (examples/train_lm.py, train_nat.py)
trained under torch.compile with attngen and with the SDPA / FlexAttention equivalents, same
seed, weights and batches; loss curves compared within bf16 noise (training_compare.py says
how), median step times, host overhead of one attngen call in a compiled graph.

    python benchmarks/bench_training.py            # H100: ~4 minutes, compile included
    python benchmarks/bench_training.py --quick    # tiny models, 30 eager steps: a smoke run
    python benchmarks/bench_training.py --device cpu   # the same pipeline on the CPU (tiny, eager, fp32)

Precision: bf16 autocast with float32 weights and AdamW state, the usual mixed-precision
recipe. Both backends then get bf16 q, k, v from the same autocast projections and keep the
optimizer's arithmetic in float32, so the kernels are the only difference between runs (bf16
weights would add the optimizer's rounding of each update to the noise).

Writes into --out (default: $OUT on the device machine, else benchmarks/results/training/;
--quick and CPU runs a temporary folder), after every run, so a failure keeps what finished: training.json (every loss and step time, the verdicts), training.md
(the table: date, GPU, versions, commit) and training.png (loss curves and step times).
A backend that fails is recorded with its error and the others go on.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import torch  # noqa: E402

import train_lm  # noqa: E402  (examples/: imports attngen before Triton)
import train_nat  # noqa: E402
from bench_common import graph_launch, run_environment  # noqa: E402
from report import short_reason  # noqa: E402
from result_files import default_out, git_commit, write_atomic  # noqa: E402
from training_compare import PERTURBATION, PERTURBED_SUFFIX, compare, markdown, plot  # noqa: E402
from training_loop import TIMING_WARMUP, Trainer, cpu_state, perturbed  # noqa: E402

# model name -> (example module, backends, the peer whose perturbed runs measure the noise)
MODELS = {
    "lm": (train_lm, ("attngen", "sdpa", "flex"), "sdpa"),
    "nat": (train_nat, ("attngen", "flex"), "flex"),
}
QUICK_STEPS = 30
# attngen's runs, one per way its calls reach the GPU in a compiled graph (--graph-launch):
# the opaque custom op, or kernels that Inductor launches (attngen/runtime/graph_launch.py)
ATTNGEN_LABELS = {"op": "attngen", "inductor": "attngen+inductor"}


def backend_and_launch(label: str) -> tuple[str, str]:
    """("attngen", "inductor") for "attngen+inductor"; a peer's label names its backend."""
    for launch, name in ATTNGEN_LABELS.items():
        if label == name:
            return "attngen", launch
    return label, "op"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: $OUT, else benchmarks/results/training/; --quick and CPU "
                             "runs: a temporary folder)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help=f"tiny models, {QUICK_STEPS} steps, eager unless --compile")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--lm-backends", nargs="+", choices=MODELS["lm"][1], default=None)
    parser.add_argument("--nat-backends", nargs="+", choices=MODELS["nat"][1], default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the preset's, 300)")
    parser.add_argument("--perturbed-runs", type=int, default=3,
                        help="perturbed reference runs per model, the noise the tolerance is built from (default 3: "
                             "with one, a run that happens to stay close sets a tolerance too tight for a second "
                             "peer; each costs one training run of the reference peer)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile(fullgraph=True) the models (default: on, except --quick and the CPU)")
    parser.add_argument("--host-overhead", action=argparse.BooleanOptionalAction, default=None,
                        help="measure one attngen call in a compiled graph (default: on the GPU with --compile)")
    parser.add_argument("--timing-rounds", type=int, default=None,
                        help="interleaved step-time rounds after training, every backend once a round (default 5; "
                             "--quick and CPU: 2)")
    parser.add_argument("--timing-steps", type=int, default=None,
                        help="steps a backend runs in each timing round (default 20; --quick and CPU: 3)")
    parser.add_argument("--graph-launch", nargs="+", choices=list(ATTNGEN_LABELS), default=None,
                        help="how attngen's calls reach the GPU in a compiled graph (ATTNGEN_GRAPH_LAUNCH), one "
                             "attngen run each, labelled " + " and ".join(ATTNGEN_LABELS.values()) +
                             " (default: both when compiling on the GPU, else op)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    cuda = args.device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_training: torch sees no GPU (run with --device cpu for the CPU pipeline check)")
    args.tiny = args.quick or not cuda
    args.compile = (cuda and not args.quick) if args.compile is None else args.compile
    args.amp = cuda
    args.graph_launch = args.graph_launch or (list(ATTNGEN_LABELS) if cuda and args.compile else ["op"])
    args.host_overhead = (cuda and args.compile) if args.host_overhead is None else args.host_overhead
    if args.host_overhead and not cuda:
        raise SystemExit("bench_training: --host-overhead needs the GPU")
    args.steps = args.steps or (QUICK_STEPS if args.tiny else None)
    args.timing_rounds = args.timing_rounds if args.timing_rounds is not None else (2 if args.tiny else 5)
    args.timing_steps = args.timing_steps or (3 if args.tiny else 20)
    args.out = args.out or default_out("training", smoke=args.tiny)
    return args


class Results:
    """training.json / .md / .png, rewritten whenever something finishes."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out, self.data = out, data
        out.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        write_atomic(self.out / "training.json", json.dumps(self.data, indent=1) + "\n")
        write_atomic(self.out / "training.md", markdown(self.data))
        try:
            plot(self.data, self.out / "training.png")
        except Exception as exc:  # a plotting problem must not lose the numbers
            self.data["plot_error"] = short_reason(exc)


def log_failure(out: Path, label: str, exc: BaseException) -> str:
    reason = short_reason(exc)
    with open(out / "errors.log", "a") as log:
        log.write(f"== {label}: {reason}\n{traceback.format_exc()}\n")
    print(f"  {label} FAILED: {reason} (traceback in {out / 'errors.log'})", flush=True)
    return reason


def run_model(name: str, args: argparse.Namespace, results: Results) -> None:
    module, all_backends, reference = MODELS[name]
    backends = [label for b in getattr(args, f"{name}_backends") or all_backends
                for label in ([ATTNGEN_LABELS[m] for m in args.graph_launch] if b == "attngen" else [b])]
    cfg = module.PRESETS["tiny" if args.tiny else "full"]
    steps = args.steps or cfg.steps
    entry = results.data["models"][name] = {"description": module.describe(cfg), "config": cfg.__dict__,
                                            "steps": steps, "runs": {}}
    print(f"{name}: {entry['description']}; {steps} steps x {len(backends)} backends", flush=True)
    batches = module.make_batches(cfg, steps, args.seed, args.device)
    torch.manual_seed(args.seed)
    init = cpu_state(module.make_model(backend_and_launch(backends[0])[0], cfg, args.device))
    trainers: dict[str, Trainer] = {}  # kept for the timing rounds
    for label in backends:
        torch._dynamo.reset()  # each backend compiles its own graphs
        backend, launch = backend_and_launch(label)
        plan = [(label, init)]
        if label == reference:
            plan += [(f"{label}{PERTURBED_SUFFIX}{i + 1}", perturbed(init, PERTURBATION, args.seed + 1 + i))
                     for i in range(args.perturbed_runs)]
        try:
            trainer = Trainer(module.make_model(backend, cfg, args.device), args.compile, args.amp)
            for run_label, state in plan:  # perturbed runs reuse the compiled graph: no recompilation
                with graph_launch(launch):
                    run = trainer.run(run_label, state, batches, cfg.lr, cfg.warmup)
                entry["runs"][run_label] = run.to_dict()
                print(f"  {run_label}: loss {run.losses[0]:.3f} -> {run.losses[-1]:.3f}, first step "
                      f"{run.first_step_s:.1f} s, median step {run.median_step_ms or float('nan'):.2f} ms", flush=True)
                entry["comparison"] = compare(entry["runs"], reference)
                results.save()
            trainers[label] = trainer
        except Exception as exc:  # noqa: BLE001 - recorded, and the other backends still run
            entry["runs"].setdefault(label, {"error": log_failure(args.out, f"{name}/{label}", exc)})
            entry["comparison"] = compare(entry["runs"], reference)
            results.save()
        finally:
            trainer = None
            if args.device.type == "cuda":
                torch.cuda.empty_cache()
    if args.timing_rounds and len(trainers) > 1:
        timing_rounds(entry, trainers, batches[:args.timing_steps], cfg.lr, args, results)
        entry["comparison"] = compare(entry["runs"], reference)
        results.save()


def timing_rounds(entry: dict, trainers: dict[str, Trainer], batches: list, lr: float, args: argparse.Namespace,
                  results: Results) -> None:
    """Every backend's step time in interleaved rounds (one after another in each round, the
    order rotating), after one untimed round in which a backend whose graph the next backend's
    ``torch._dynamo.reset()`` dropped compiles again. A single run per backend is not enough:
    clocks and the allocator drift, and one compiled graph timed twice in a row gave 11.9 and
    9.8 ms a step (benchmarks/NOTES.md, 2026-12-08)."""
    entry["timing_steps"] = len(batches)
    names = list(trainers)
    for name in names:  # warm-up: recompiles after the resets, fills the allocator
        with graph_launch(backend_and_launch(name)[1]):
            trainers[name].time_steps(batches[:2], lr)
    for r in range(args.timing_rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        this_round = {}
        for name in order:
            try:
                with graph_launch(backend_and_launch(name)[1]):
                    this_round[name] = trainers[name].time_steps(batches, lr)
            except Exception as exc:  # noqa: BLE001 - recorded; the other backends go on
                log_failure(args.out, f"timing round {r + 1}/{name}", exc)
                continue
            entry["runs"][name].setdefault("round_step_ms", []).append(this_round[name])
        print(f"  timing round {r + 1}: " + ", ".join(f"{n} {ms:.2f} ms" for n, ms in this_round.items()), flush=True)
    results.save()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from training_overhead import measure  # noqa: E402 - only the GPU path needs it

    precision = "bf16 autocast, float32 weights and AdamW state" if args.amp else "float32"
    settings = {"precision": precision, "compile": args.compile, "fullgraph": True, "seed": args.seed,
                "graph_launch": args.graph_launch,
                "timing_warmup": TIMING_WARMUP, "perturbation": PERTURBATION, "quick": args.quick,
                "command": "python benchmarks/bench_training.py " + shlex.join(argv if argv is not None else sys.argv[1:])}
    env = run_environment(args.device, torch.bfloat16 if args.amp else torch.float32, git_commit())
    results = Results(args.out, {"environment": env, "settings": settings, "models": {}})
    for name in args.models:
        run_model(name, args, results)
    if args.host_overhead:
        torch._dynamo.reset()
        try:
            results.data["host_overhead"] = measure(args.device)
            print(results.data["host_overhead"]["summary"], flush=True)
        except Exception as exc:  # noqa: BLE001
            results.data["host_overhead"] = {"error": log_failure(args.out, "host overhead", exc)}
        results.save()
    print(f"results: {args.out / 'training.md'}", flush=True)
    failed = [f"{m}/{b}" for m, e in results.data["models"].items() for b, r in e["runs"].items() if "error" in r]
    disagree = [f"{m}/{b}" for m, e in results.data["models"].items()
                for b, ok in e.get("comparison", {}).get("agree", {}).items() if not ok]
    for label, names in (("failed", failed), ("outside the tolerance", disagree)):
        if names:
            print(f"{label}: {', '.join(names)}", flush=True)
    return 1 if failed or disagree else 0


if __name__ == "__main__":
    sys.exit(main())
