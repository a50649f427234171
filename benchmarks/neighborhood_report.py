"""The neighborhood benchmark's report: markdown tables (main, dense, tiling, sweep), JSON with
every number, and a bar chart of TFLOP/s per case and backend."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from neighborhood_cases import SAMPLED_ROWS, NACase
from neighborhood_peers import DENSE_BACKENDS, NA_BACKENDS, TITLES
from neighborhood_timing import DenseResult, NAResult, sol_ms, sol_ratio
from report import (MAX_REL_ERR, Measurement, config_label, format_err, is_correct, md_escape, ranked,
                    short_reason, sweep_markdown, throughput_ratio)
from result_files import write_atomic

SOL_TARGET = 1.15  # perfectly block-sparse cases: attngen within 15% of dense time x density


def fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else (f"{ms:.3f}" if ms < 100 else f"{ms:.0f}")


def fmt_cell(m: Measurement | None, extra: str = "") -> str:
    if m is None:
        return "-"
    if m.error is not None:
        return f"n/a ({md_escape(m.error[:70])}{'...' if len(m.error) > 70 else ''})"
    if m.ms is None:
        return "-"
    tf = f", {m.tflops:.0f} TF/s" if m.tflops is not None else ""
    return f"{fmt_ms(m.ms)} ms{tf}{extra}"


def ratio_text(x: float | None) -> str:
    return "" if x is None else f", x{x:.2f}"


def markdown_header(env: dict[str, Any]) -> str:
    return "\n".join([
        "# attngen neighborhood-attention benchmark" + (" (smoke)" if env.get("smoke") else ""),
        "",
        f"- date (UTC): {env.get('date_utc', '?')}",
        f"- device: {env.get('device', '?')}",
        f"- torch {env.get('torch', '?')}, Triton {env.get('triton', '?')}, attngen {env.get('attngen', '?')}"
        f" (commit {env.get('commit', '?')}), CUDA {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}",
        f"- {env.get('dtype', '?')}, forward, "
        + (f"median of triton.testing.do_bench(warmup={env.get('warmup_ms')} ms, rep={env.get('rep_ms')} ms)"
           if env.get("cuda") else "wall time of one call under the Triton interpreter (not a performance figure)")
        + "; peers in the same process on the same inputs",
        "- NATTEN semantics (shared/SEMANTICS.md); TFLOP/s of neighborhood kernels count attended entries only "
        "(4*B*H*D*attended); dense kernels count all L^2 entries",
        "- Flex cell: xR = attngen throughput / Flex throughput (R > 1: attngen faster); dense cells: xR = dense "
        "time / attngen time (attngen's speedup from sparsity; the limit is 1/density)",
        f"- SOL = attngen dense time on the same shape x density; perfectly block-sparse cases target attngen <= "
        f"{SOL_TARGET:.2f} x SOL",
        f"- err: attngen vs Flex's output over all rows, and vs float64 on up to {SAMPLED_ROWS} sampled query rows "
        f"(limit {MAX_REL_ERR:g} for both)",
    ])


def markdown_table(results: Sequence[NAResult], dense: dict[tuple, DenseResult], judge: bool = True) -> str:
    """The main table; ``judge``: mark the SOL target (not for interpreter wall times)."""
    rows = ["| case | density (limit 1/d) | attngen | attngen naXd layout | FlexAttention | SDPA flash (dense) "
            "| SDPA cuDNN (dense) | SOL (ms) | attngen / SOL | err vs Flex | err vs f64 rows |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, ms = r.case, r.ms("attngen")
        d = dense.get(c.dense_shape)
        m = r.measurements
        cfg = f", {config_label(r.attngen_config)}" if r.attngen_config else ""
        dense_cells = [fmt_cell(d.measurements.get(b) if d else None,
                                ratio_text(throughput_ratio(ms, d.measurements[b].ms)) if d and b in d.measurements
                                else "")
                       for b in ("sdpa_flash", "sdpa_cudnn")]
        ratio = sol_ratio(r, d)
        verdict = ""
        if ratio is not None and c.block_sparse and judge:
            verdict = " (target met)" if ratio <= SOL_TARGET else f" **(target {SOL_TARGET:.2f} missed)**"
        flex_err = "-" if r.err_vs_flex is None else (f"{r.err_vs_flex:.1e}"
                                                       + ("" if is_correct(r.err_vs_flex) else " **WRONG**"))
        rows.append(" | ".join([
            f"| {c.key}: {c.name}", f"{c.density:.4f} ({1 / c.density:.1f}x)",
            fmt_cell(m.get("attngen"), cfg), fmt_cell(m.get("attngen_natten")),
            fmt_cell(m.get("flex"), ratio_text(throughput_ratio(ms, r.ms("flex")))), *dense_cells,
            fmt_ms(sol_ms(r, d)), ("-" if ratio is None else f"{ratio:.2f}") + verdict,
            flex_err, format_err(m.get("attngen")) + " |"]))
    return "\n".join(rows)


def dense_table(dense: dict[tuple, DenseResult]) -> str:
    rows = ["| shape | " + " | ".join(TITLES[b] for b in DENSE_BACKENDS) + " | attngen dense err |",
            "|---|" + "---|" * (len(DENSE_BACKENDS) + 1)]
    for d in dense.values():
        rows.append(f"| {d.name} | " + " | ".join(fmt_cell(d.measurements.get(b)) for b in DENSE_BACKENDS)
                    + f" | {format_err(d.measurements.get('attngen_dense'))} |")
    return "\n".join(rows)


def plan_table(results: Sequence[NAResult]) -> str:
    rows = ["| case | launch config | query box | KV box | KV tiles visited (per b, h) | full | mask-free "
            "| tile density | peer errors vs f64 rows |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r.plan or {"error": "attngen did not run"}
        peers = ", ".join(f"{b} {format_err(r.measurements.get(b))}" for b in ("attngen_natten", "flex")
                          if b in r.measurements and r.measurements[b].rel_err is not None) or "-"
        if "error" in p:
            rows.append(f"| {r.case.key} | {config_label(r.attngen_config)} | n/a ({md_escape(p.get('error', '-'))}) "
                        f"| | | | | | {peers} |")
            continue
        rows.append(f"| {r.case.key} | {config_label(r.attngen_config)} | {'x'.join(map(str, p['q_box']))} | "
                    f"{'x'.join(map(str, p['kv_box']))} | {p['visited_tiles']} | {p['full_tiles']} | "
                    f"{'yes' if not p['has_partial'] else 'no'} | {p['tile_density']:.4f} | {peers} |")
    return "\n".join(rows)


def full_markdown(env, results, dense, sweeps) -> str:
    parts = [markdown_header(env)]
    if results:
        parts += ["", markdown_table(results, dense, judge=bool(env.get("cuda"))), "",
                  "## Dense kernels on the same shapes", "", dense_table(dense), "",
                  "## attngen's tiling (attngen.runtime.neighborhood.plan at the launched tiles)", "",
                  "mask-free: no KV tile needs mask code (perfectly block sparse); tile density: visited entries / "
                  "L^2, the density the kernel pays for", "", plan_table(results)]
    if sweeps:
        parts += ["", "## attngen KernelConfig sweep",
                  f"(do_bench warmup={env.get('sweep_warmup_ms')} ms, rep={env.get('sweep_rep_ms')} ms; errors "
                  f"vs float64 on the sampled rows)"]
        parts += [x for s in sweeps for x in ("", sweep_markdown(s))]
    if env.get("plot"):
        parts += ["", f"Plot: {env['plot']}"]
    return "\n".join(parts) + "\n"


def to_json(env, results, dense, sweeps) -> dict[str, Any]:
    def case_dict(c: NACase) -> dict[str, Any]:
        return {**asdict(c), "name": c.name, "L": c.L, "attended": c.attended, "density": c.density,
                "flops": c.flops, "dense_flops": c.dense_flops}

    cases = []
    for r in results:
        d = dense.get(r.case.dense_shape)
        ms = r.ms("attngen")
        cases.append({
            "case": case_dict(r.case), "attngen_ok": r.attngen_ok, "err_vs_flex": r.err_vs_flex,
            "mask_check": r.mask_check or "ok", "attngen_config": r.attngen_config, "plan": r.plan,
            "measurements": {b: asdict(m) for b, m in r.measurements.items()},
            "sol_ms": sol_ms(r, d), "sol_ms_cudnn": sol_ms(r, d, "sdpa_cudnn"), "attngen_over_sol": sol_ratio(r, d),
            "sol_target_met": ((sol_ratio(r, d) <= SOL_TARGET)
                               if r.case.block_sparse and sol_ratio(r, d) and env.get("cuda") else None),
            "throughput_ratio_attngen_over": {
                "flex": throughput_ratio(ms, r.ms("flex")),
                **{b: throughput_ratio(ms, d.measurements[b].ms if d and b in d.measurements else None)
                   for b in DENSE_BACKENDS}},
        })
    return {
        "environment": env, "max_rel_err": MAX_REL_ERR, "sol_target": SOL_TARGET, "cases": cases,
        "dense": [{"shape": list(d.shape), "name": d.name, "flops": d.flops,
                   "measurements": {b: asdict(m) for b, m in d.measurements.items()}} for d in dense.values()],
        "sweep": [{**asdict(s), "case": case_dict(s.case), "ranked": [p.config for p in ranked(s.points)]}
                  for s in sweeps],
    }


def write_results(out_dir: Path, env, results, dense, sweeps) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "neighborhood.md", out_dir / "neighborhood.json"
    write_atomic(md, full_markdown(env, results, dense, sweeps))
    write_atomic(js, json.dumps(to_json(env, results, dense, sweeps), indent=2, allow_nan=True) + "\n")
    return md, js


def plot(out_dir: Path, results: Sequence[NAResult], dense: dict[tuple, DenseResult], title: str) -> str:
    """A bar chart of TFLOP/s per case and backend; returns the file name or why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"no plot (matplotlib does not import: {short_reason(exc)})"
    series = [(b, False) for b in NA_BACKENDS] + [(b, True) for b in DENSE_BACKENDS]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(results)), 4.8))
    for n, (backend, is_dense) in enumerate(series):
        vals = []
        for r in results:
            src = dense.get(r.case.dense_shape) if is_dense else r
            m = src.measurements.get(backend) if src is not None else None
            vals.append(m.tflops if m is not None and m.error is None and m.tflops is not None else 0.0)
        xs = [i + (n - (len(series) - 1) / 2) * width for i in range(len(results))]
        label = TITLES[backend] + (" (dense, its own FLOPs)" if is_dense else "")
        if backend == "attngen_dense":
            label += " = SOL"  # dense time x density on the attended FLOPs is the dense kernel's TFLOP/s
        ax.bar(xs, vals, width, label=label, hatch="//" if is_dense else None)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([f"{r.case.key}\nd={r.case.density:.3f}" for r in results], fontsize=8)
    ax.set_ylabel("TFLOP/s (neighborhood: attended entries)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / "neighborhood.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name
