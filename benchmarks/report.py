"""Results of the forward benchmark: cases, FLOP counting, records, markdown and JSON.

Pure functions and data only (no GPU work), so that the report logic is testable anywhere;
bench_forward.py does the timing and calls into this module.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import attngen as ag

MAX_REL_ERR = 2e-2  # bf16 operands land between 1e-3 and 1e-2; above this is a bug
BACKENDS = ("attngen", "flex", "sdpa_flash", "sdpa_cudnn")
BACKEND_TITLES = {"attngen": "attngen", "flex": "FlexAttention", "sdpa_flash": "SDPA flash",
                  "sdpa_cudnn": "SDPA cuDNN"}
PEERS = BACKENDS[1:]
SWEEP_BLOCK_M = (64, 128)
SWEEP_BLOCK_N = (32, 64, 128)
SWEEP_WARPS = (4, 8)
SWEEP_STAGES = (2, 3, 4)
SWEEP_TOP_IN_MARKDOWN = 10
REASON_CHARS_IN_MARKDOWN = 70

Tensor = torch.Tensor
Fn = Callable[[], Tensor]
Inputs = tuple[Tensor, Tensor, Tensor]


# --------------------------------------------------------------------------- cases, FLOPs


@dataclass(frozen=True)
class Case:
    mask: str  # "dense" or "causal"
    B: int
    H: int
    L: int
    D: int

    @property
    def causal(self) -> bool:
        return self.mask == "causal"

    @property
    def name(self) -> str:
        return f"{self.mask} B={self.B} H={self.H} L={self.L} D={self.D}"


CASES = (
    Case("dense", 2, 16, 8192, 128),
    Case("causal", 2, 16, 8192, 128),
    Case("dense", 4, 16, 4096, 64),
    Case("causal", 4, 16, 4096, 64),
)


def attended_entries(case: Case) -> int:
    """Score entries each head computes: L*L dense, L*(L+1)/2 causal (diagonal included)."""
    return case.L * (case.L + 1) // 2 if case.causal else case.L * case.L


def attention_flops(case: Case) -> float:
    """Forward FLOPs: two matmuls (QK^T, PV) of 2*D FLOPs per attended entry, per head."""
    return 4.0 * case.B * case.H * case.D * attended_entries(case)


def min_bytes(case: Case, elem_bytes: int = 2) -> int:
    """Fewest bytes moved: q, k, v read once and out written once."""
    return 4 * case.B * case.H * case.L * case.D * elem_bytes


def tflops(flops: float, ms: float | None) -> float | None:
    return None if ms is None or ms <= 0 else flops / (ms * 1e-3) / 1e12


def throughput_ratio(attngen_ms: float | None, peer_ms: float | None) -> float | None:
    """attngen's throughput over the peer's (same FLOPs): > 1 means attngen is faster."""
    if attngen_ms is None or peer_ms is None or attngen_ms <= 0:
        return None
    return peer_ms / attngen_ms


def relative_l2(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN anywhere gives NaN)."""
    out64, ref64 = out.double(), ref.double()
    return (torch.linalg.vector_norm(out64 - ref64) / torch.linalg.vector_norm(ref64)).item()


def is_correct(rel_err: float | None) -> bool:
    return rel_err is not None and rel_err < MAX_REL_ERR  # False for NaN too


class BackendError(RuntimeError):
    """A backend's failure, already summarized in one line."""


def short_reason(exc: BaseException) -> str:
    """One line naming the exception: its type and the first line of its message."""
    if isinstance(exc, BackendError):
        return str(exc)
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def sweep_configs(first: dict[str, int] | None = None) -> list[ag.KernelConfig]:
    """The sweep grid, ``first`` (the heuristic's pick) leading, then larger tiles first.

    Larger tiles usually win on Hopper, so a sweep cut short by its time budget keeps them.
    """
    grid = [ag.KernelConfig(bm, bn, w, s) for bm, bn, w, s in
            itertools.product(SWEEP_BLOCK_M, SWEEP_BLOCK_N, SWEEP_WARPS, SWEEP_STAGES)]
    grid.sort(key=lambda c: (-c.block_m, -c.block_n, -c.num_warps, c.num_stages))
    lead = [c for c in grid if first is not None and asdict(c) == first]
    return lead + [c for c in grid if c not in lead]


def config_label(cfg: dict[str, int] | None) -> str:
    if not cfg:
        return "-"
    return f"m{cfg['block_m']} n{cfg['block_n']} w{cfg['num_warps']} s{cfg['num_stages']}"


# --------------------------------------------------------------------------- result records


@dataclass
class Measurement:
    backend: str
    ms: float | None = None
    tflops: float | None = None
    rel_err: float | None = None
    setup_s: float | None = None  # build + first call (compilation), not part of ms
    error: str | None = None  # set when the backend could not run: shown as "n/a (error)"


@dataclass
class CaseResult:
    case: Case
    flops: float
    bytes: int
    attngen_config: dict[str, int] | None = None  # launched (else the heuristic's pick)
    measurements: dict[str, Measurement] = field(default_factory=dict)

    @property
    def attngen_ok(self) -> bool:
        m = self.measurements.get("attngen")
        return m is not None and m.error is None and is_correct(m.rel_err)


@dataclass
class SweepPoint:
    config: dict[str, int]
    ms: float | None = None
    tflops: float | None = None
    rel_err: float | None = None
    error: str | None = None


@dataclass
class SweepResult:
    case: Case
    heuristic: dict[str, int] | None
    points: list[SweepPoint] = field(default_factory=list)
    skipped: int = 0  # configs left out when the time budget ran out
    error: str | None = None  # set when the case could not be swept at all


def ranked(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """Timed, correct points fastest first."""
    good = [p for p in points if p.ms is not None and is_correct(p.rel_err)]
    return sorted(good, key=lambda p: p.ms)


# --------------------------------------------------------------------------- formatting


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_cell(m: Measurement | None, attngen_ms: float | None, is_peer: bool) -> str:
    if m is None:
        return "-"
    if m.error is not None:
        reason = m.error if len(m.error) <= REASON_CHARS_IN_MARKDOWN else m.error[:REASON_CHARS_IN_MARKDOWN] + "..."
        return f"n/a ({md_escape(reason)})"
    if m.ms is None or m.tflops is None:
        return "-"
    cell = f"{m.ms:.3f} ms, {m.tflops:.0f} TF/s"
    if is_peer:
        ratio = throughput_ratio(attngen_ms, m.ms)
        if ratio is not None:
            cell += f", x{ratio:.2f}"
    return cell


def format_err(m: Measurement | None) -> str:
    if m is None or m.rel_err is None:
        return "-"
    flag = "" if is_correct(m.rel_err) else " **WRONG**"
    return f"{m.rel_err:.1e}{flag}"


def markdown_header(env: dict[str, Any]) -> str:
    return "\n".join([
        "# attngen forward benchmark",
        "",
        f"- date (UTC): {env.get('date_utc', '?')}",
        f"- GPU: {env.get('gpu', '?')}",
        f"- torch {env.get('torch', '?')}, Triton {env.get('triton', '?')}, attngen {env.get('attngen', '?')}"
        f" (commit {env.get('commit', '?')}), CUDA {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}",
        f"- bf16, forward, median of triton.testing.do_bench(warmup={env.get('warmup_ms', '?')} ms, "
        f"rep={env.get('rep_ms', '?')} ms); peers in the same process on the same inputs",
        "- TFLOP/s count attended entries only: 4*B*H*D*L^2 dense, 4*B*H*D*L(L+1)/2 causal",
        "- attngen config: the launch config used, mM nN wW sS = block_m, block_n, num_warps, num_stages",
        "- peer cells end with xR = attngen throughput / peer throughput (R > 1: attngen faster)",
        f"- err = relative L2 error against SDPA in float32 on upcast inputs (attngen must be < {MAX_REL_ERR:g})",
    ])


def markdown_table(results: Sequence[CaseResult]) -> str:
    titles = [BACKEND_TITLES[b] for b in BACKENDS]
    rows = ["| case | attngen err | attngen config | " + " | ".join(titles) + " |",
            "|---|---|---|" + "---|" * len(BACKENDS)]
    for r in results:
        attngen_ms = r.measurements["attngen"].ms if "attngen" in r.measurements else None
        cells = [format_cell(r.measurements.get(b), attngen_ms, b in PEERS) for b in BACKENDS]
        rows.append(f"| {r.case.name} | {format_err(r.measurements.get('attngen'))} | "
                    f"{config_label(r.attngen_config)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def sweep_markdown(sweep: SweepResult, top: int = SWEEP_TOP_IN_MARKDOWN, show_failed: bool = True) -> str:
    order = ranked(sweep.points)
    failed = [p for p in sweep.points if p.ms is None or not is_correct(p.rel_err)]
    heur = next((i for i, p in enumerate(order) if p.config == sweep.heuristic), None)
    heur_note = (f"rank {heur + 1} of {len(order)}" if heur is not None else "not among the timed configs")
    lines = [f"### sweep: {sweep.case.name}",
             "",
             f"heuristic config {config_label(sweep.heuristic)}: {heur_note}; "
             f"{len(failed)} failed or wrong, {sweep.skipped} skipped (time budget)"
             + (f"; sweep aborted: {md_escape(sweep.error)}" if sweep.error else ""),
             "",
             "| rank | config | ms | TFLOP/s | err |",
             "|---|---|---|---|---|"]
    for i, p in enumerate(order[:top]):
        mark = " (heuristic)" if p.config == sweep.heuristic else ""
        lines.append(f"| {i + 1} | {config_label(p.config)}{mark} | {p.ms:.3f} | {p.tflops:.0f} | {p.rel_err:.1e} |")
    for p in failed if show_failed else ():
        what = p.error if p.error is not None else f"wrong: err {p.rel_err}"
        lines.append(f"| - | {config_label(p.config)} | n/a ({md_escape(what[:REASON_CHARS_IN_MARKDOWN])}) | | |")
    return "\n".join(lines)


def full_markdown(env: dict[str, Any], results: Sequence[CaseResult], sweeps: Sequence[SweepResult]) -> str:
    parts = [markdown_header(env), "", markdown_table(results)]
    if sweeps:
        parts += ["", "## attngen KernelConfig sweep",
                  f"(do_bench warmup={env.get('sweep_warmup_ms', '?')} ms, rep={env.get('sweep_rep_ms', '?')} ms; "
                  f"top {SWEEP_TOP_IN_MARKDOWN} per case here, every point in forward.json)"]
        for s in sweeps:
            parts += ["", sweep_markdown(s)]
    return "\n".join(parts) + "\n"


def to_json(env: dict[str, Any], results: Sequence[CaseResult], sweeps: Sequence[SweepResult]) -> dict[str, Any]:
    def case_dict(c: Case) -> dict[str, Any]:
        return {**asdict(c), "name": c.name}

    return {
        "environment": env,
        "max_rel_err": MAX_REL_ERR,
        "cases": [{**asdict(r), "case": case_dict(r.case), "attngen_ok": r.attngen_ok,
                   "throughput_ratio_attngen_over": {
                       p: throughput_ratio(r.measurements["attngen"].ms if "attngen" in r.measurements else None,
                                           r.measurements[p].ms if p in r.measurements else None)
                       for p in PEERS}}
                  for r in results],
        "sweep": [{**asdict(s), "case": case_dict(s.case),
                   "ranked": [p.config for p in ranked(s.points)]} for s in sweeps],
    }


def write_results(out_dir: Path, markdown: str, data: dict[str, Any]) -> tuple[Path, Path]:
    """Write forward.md and forward.json atomically (temp file + rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "forward.md", out_dir / "forward.json"
    texts = markdown, json.dumps(data, indent=2, allow_nan=True) + "\n"
    for path, text in zip(paths, texts):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths
