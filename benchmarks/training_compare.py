"""Do two training runs agree within bf16 noise? The rule, the Markdown report and the plot
of bench_training.py.

The rule. Two runs that differ only in rounding (attngen's kernels and the peer's sum in
different orders, use exp2 instead of exp, tile differently) drift apart as training
amplifies each difference; how far is a property of the model, data, precision and step
count, not of either kernel. So the noise is measured, not assumed: the reference peer is
trained again from its initial weights multiplied by (1 + u), u uniform in +-2^-8 (the size
of one bf16 rounding), same data, same compiled graph. With loss curves smoothed by a
trailing mean over ``window`` steps (the batch-to-batch spread of the synthetic data is the
same in every run, but the smoothing keeps single-step spikes from deciding):

    gap(a, b)  = max over steps t >= window - 1 of |smooth(a)_t - smooth(b)_t| / smooth(b)_t
    noise      = max over the perturbed runs p of gap(p, reference)
    tolerance  = max(NOISE_FACTOR * noise, BF16_FLOOR)

and a backend agrees when gap(backend, reference) <= tolerance. NOISE_FACTOR = 2: the noise
is estimated from one or two samples of a random drift, and a second independent source of
rounding differences (the other backend) drifts by about as much again. BF16_FLOOR = 2^-7,
one bf16 ulp of the loss: below it, two curves are the same number in bf16.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

NOISE_FACTOR = 2.0
BF16_FLOOR = 2.0 ** -7
PERTURBATION = 2.0 ** -8
PERTURBED_SUFFIX = "+perturbed"


def smoothing_window(steps: int) -> int:
    return max(2, min(20, steps // 10))


def smooth(losses: Sequence[float], window: int) -> list[float]:
    """Trailing mean over ``window`` steps (shorter at the start)."""
    out, total = [], 0.0
    for i, x in enumerate(losses):
        total += x
        if i >= window:
            total -= losses[i - window]
        out.append(total / min(i + 1, window))
    return out


def gap(a: Sequence[float], b: Sequence[float], window: int) -> float:
    """The largest relative distance between the smoothed curves (b is the reference)."""
    sa, sb = smooth(a, window), smooth(b, window)
    n = min(len(sa), len(sb))
    if n < window:
        raise ValueError(f"curves of {n} steps are shorter than the smoothing window ({window})")
    return max(abs(x - y) / abs(y) for x, y in zip(sa[window - 1:n], sb[window - 1:n]))


def compare(runs: dict[str, dict], reference: str) -> dict[str, Any]:
    """The verdict for one model: each backend's gap to ``reference``, the measured noise,
    the tolerance, and the step times (median ms; ratio to Flex's where Flex ran)."""
    ok = {name: r for name, r in runs.items() if "losses" in r}
    result: dict[str, Any] = {"reference": reference}
    if reference not in ok:
        result["error"] = f"the reference backend {reference!r} did not finish"
        return result
    ref = ok[reference]["losses"]
    window = smoothing_window(len(ref))
    perturbed = [n for n in ok if n.startswith(reference + PERTURBED_SUFFIX)]
    noise = max((gap(ok[n]["losses"], ref, window) for n in perturbed), default=None)
    tolerance = BF16_FLOOR if noise is None else max(NOISE_FACTOR * noise, BF16_FLOOR)
    backends = [n for n in ok if n != reference and n not in perturbed]
    gaps = {n: gap(ok[n]["losses"], ref, window) for n in backends}
    timed = [n for n in ok if PERTURBED_SUFFIX not in n]
    steps = {n: step_ms(ok[n]) for n in timed}
    flex_ms = steps.get("flex")
    result.update(window=window, noise=noise, tolerance=tolerance, gaps=gaps,
                  agree={n: g <= tolerance for n, g in gaps.items()},
                  median_step_ms={n: ok[n]["median_step_ms"] for n in timed},
                  step_ms=steps,
                  step_time_vs_flex={n: (steps[n] / flex_ms if flex_ms and steps[n] else None) for n in timed},
                  final_loss={n: smooth(ok[n]["losses"], window)[-1] for n in ok})
    if noise is None:
        result["note"] = "no perturbed reference run: the tolerance is the bf16 floor alone"
    return result


def step_ms(run: dict[str, Any]) -> float | None:
    """A backend's step time: the median of its interleaved timing rounds (``round_step_ms``,
    one median per round; bench_training.py times every backend in each round, so clock drift
    hits all of them alike) where it has them, else the median of its training run's steps."""
    rounds = run.get("round_step_ms")
    return statistics.median(rounds) if rounds else run.get("median_step_ms")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def model_markdown(name: str, model: dict[str, Any]) -> list[str]:
    c = model.get("comparison", {})
    lines = [f"## {name}", "", model.get("description", ""), ""]
    if "error" in c:
        lines += [f"**No verdict**: {c['error']}.", ""]
    ref = c.get("reference", "?")
    lines += [f"| backend | step (ms) | x Flex step time | median step in its run (ms) | first step incl. compile "
              f"(s) | final loss (smoothed) | max gap to {ref} | within tolerance |", "|---|---|---|---|---|---|---|---|"]
    for backend, run in model.get("runs", {}).items():
        if "error" in run:
            lines.append(f"| {backend} | failed: {run['error']} | | | | | | |")
            continue
        gap_value = c.get("gaps", {}).get(backend)
        agree = c.get("agree", {}).get(backend)
        steps = "" if PERTURBED_SUFFIX in backend else _fmt(step_ms(run), ".2f")
        lines.append(
            f"| {backend} | {steps} | {_fmt(c.get('step_time_vs_flex', {}).get(backend), '.3f')} | "
            f"{_fmt(run.get('median_step_ms'), '.2f')} | {run['first_step_s']:.1f} | "
            f"{_fmt(c.get('final_loss', {}).get(backend), '.4f')} | {_fmt(gap_value, '.2%')} | "
            f"{'-' if agree is None else ('yes' if agree else '**NO**')} |")
    rounds = {b: r["round_step_ms"] for b, r in model.get("runs", {}).items() if r.get("round_step_ms")}
    if rounds:
        per_round = "; ".join(f"{b} {', '.join(f'{x:.2f}' for x in ms)}" for b, ms in rounds.items())
        lines += ["", f"Step (ms): the median of {len(next(iter(rounds.values())))} interleaved timing rounds after "
                      f"training (every backend once per round, {model.get('timing_steps', '?')} steps each), per "
                      f"round: {per_round}."]
    if "tolerance" in c:
        noise = "-" if c["noise"] is None else f"{c['noise']:.2%}"
        lines += ["", f"Noise (gap of the perturbed {ref} run): {noise}; tolerance max({NOISE_FACTOR:g} x noise, "
                      f"2^-7) = {c['tolerance']:.2%}; smoothing window {c['window']} steps."
                  + (f" {c['note']}." if c.get("note") else "")]
    return lines + [""]


def overhead_markdown(overhead: dict[str, Any]) -> list[str]:
    lines = ["## Host overhead of one attngen call", ""]
    if "error" in overhead:
        return lines + [f"Not measured: {overhead['error']}", ""]
    rows = [("bare Triton launch (the generated module's launch_forward)", "bare_launch_us", None),
            ("the same through attngen's launch cache", "cached_launch_us", None),
            ("eager attngen call", "eager_call_us", None),
            ("compiled graph: one Inductor Triton kernel", "graph_triton_us", None)]
    for launch in ("op", "inductor"):  # ATTNGEN_GRAPH_LAUNCH
        rows += [(f"compiled graph ({launch}): one attngen call", "graph_attngen_us", launch),
                 (f"compiled graph ({launch}): 8 chained attngen calls", "graph_attngen_x8_us", launch),
                 (f"compiled graph ({launch}): one more attngen call ((x8 - x1) / 7)", "graph_marginal_call_us",
                  launch)]
    lines += ["| what | host time per call (us) |", "|---|---|"]
    lines += [f"| {label} | {_fmt((overhead.get(launch) or {}).get(key) if launch else overhead.get(key), '.1f')} |"
              for label, key, launch in rows]
    lines += ["", overhead.get("summary", ""), ""]
    return lines


def markdown(results: dict[str, Any]) -> str:
    env, settings = results.get("environment", {}), results.get("settings", {})
    lines = ["# Training runs: attngen against SDPA / FlexAttention", "",
             f"- date (UTC): {env.get('date_utc', '?')}; GPU: {env.get('device', '?')}",
             f"- torch {env.get('torch', '?')}, Triton {env.get('triton', '?')}, CUDA {env.get('cuda', '?')}, "
             f"attngen {env.get('attngen', '?')} at {env.get('commit', '?')}",
             f"- {settings.get('precision', '?')}; torch.compile={settings.get('compile', '?')}; "
             f"seed {settings.get('seed', '?')}; every backend of a model starts from the same weights and sees the "
             "same batches",
             f"- step time: median over the steps after the first {settings.get('timing_warmup', '?')} following the "
             "compile step (CUDA events, no host sync in the loop)",
             "- agreement: see benchmarks/training_compare.py (relative gap of trailing-mean loss curves, against "
             "the gap a run of the reference peer from perturbed weights shows)",
             f"- command: `{settings.get('command', '?')}`", ""]
    for name, model in results.get("models", {}).items():
        lines += model_markdown(name, model)
    if "host_overhead" in results:
        lines += overhead_markdown(results["host_overhead"])
    return "\n".join(lines).rstrip() + "\n"


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Loss curves (smoothed, raw faint) and median step times per model; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = [(n, m) for n, m in results.get("models", {}).items() if m.get("runs")]
    if not models:
        return None
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.8 * len(models)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]})
    for row, (name, model) in enumerate(models):
        curves, times = axes[row]
        window = model.get("comparison", {}).get("window", 1)
        finished = {b: r for b, r in model["runs"].items() if "losses" in r}
        for backend, run in finished.items():
            dashed = PERTURBED_SUFFIX in backend
            line, = curves.plot(smooth(run["losses"], window), label=backend, linestyle="--" if dashed else "-")
            if not dashed:
                curves.plot(run["losses"], color=line.get_color(), alpha=0.2, linewidth=0.8)
        curves.set(title=f"{name}: training loss (trailing mean over {window} steps)", xlabel="step", ylabel="loss")
        curves.legend()
        timed = [(b, step_ms(r)) for b, r in finished.items() if PERTURBED_SUFFIX not in b and step_ms(r)]
        bars = times.bar([b for b, _ in timed], [ms for _, ms in timed])
        times.bar_label(bars, fmt="%.2f")
        times.set(title=f"{name}: median step time", ylabel="ms")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
