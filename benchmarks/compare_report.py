"""The comparison's records and everything written from them: markdown tables, the README
headline, JSON (and merging several runs' JSON), and matplotlib plots.

Pure functions over plain records (no GPU work), so that compare.py's report logic is
testable anywhere; compare.py measures and calls into this module.
"""
from __future__ import annotations

import io
import math
import re
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from report import MAX_REL_ERR, Measurement, format_cell, is_correct, md_escape, short_reason, throughput_ratio

SCHEMA = "attngen-compare/1"
MODES = ("fwd", "fwdbwd")
MODE_TITLES = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
BACKWARD_FLOP_FACTOR = 3.5  # PEERS.md: forward+backward counts 3.5x the forward's FLOPs
ATTNGEN = "attngen"
SDPA = ("sdpa_flash", "sdpa_cudnn")
BASE_TITLES = {"attngen": "attngen", "flex": "FlexAttention", "sdpa_flash": "SDPA flash", "sdpa_cudnn": "SDPA cuDNN",
               "fla": "fla chunk_simple_gla", "attngen_softmax": "attngen softmax", "attngen_gluon": "attngen Gluon"}
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
STANDARD_COLUMNS = ("attngen", "flex", "sdpa_flash", "sdpa_cudnn")
# families whose forward has a Gluon (sm90) kernel: "attngen" is what a call selects, "attngen
# Gluon" the Gluon forward forced (dialect="gluon"; its backward is the tl one)
GLUON_COLUMNS = ("attngen", "attngen_gluon", "flex", "sdpa_flash", "sdpa_cudnn")


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Target:
    """A goal for attngen's ratio: at least ``factor`` over each of ``peers`` (None: every
    other backend that has a time), in ``modes``, for ``cases`` (None: every case)."""
    text: str
    factor: float = 1.0
    peers: tuple[str, ...] | None = None
    modes: tuple[str, ...] = MODES
    cases: tuple[str, ...] | None = None

    def applies(self, row: "Row") -> bool:
        return row.mode in self.modes and (self.cases is None or row.case in self.cases)


# The issues' speed targets (issue 6 "Autotuning ... ahead of every peer on the H100" unless named)
AT_LEAST_FLEX = Target(">= Flex", 1.0, ("flex",))
FLEX_1_1 = Target(">= 1.1x Flex", 1.1, ("flex",))
CUDNN_0_85_FWD = Target(">= 0.85x cuDNN fwd", 0.85, ("sdpa_cudnn",), ("fwd",))
# issue 27 (Hopper-native kernels), at B=2 H=16 L=8192 D=128
GLUON_DENSE_FWD = Target(">= 1.05x cuDNN fwd (issue 27)", 1.05, ("sdpa_cudnn",), ("fwd",), ("dense_L8192_D128",))
GLUON_CAUSAL_FWD = Target(">= 1.0x cuDNN fwd (issue 27)", 1.0, ("sdpa_cudnn",), ("fwd",), ("causal_L8192_D128",))
GLUON_FWDBWD = Target(">= 1.0x cuDNN and 1.2x Flex fwd+bwd (issue 27)", 1.0, ("sdpa_cudnn",), ("fwdbwd",),
                      ("dense_L8192_D128", "causal_L8192_D128"))
GLUON_FWDBWD_FLEX = Target(">= 1.2x Flex fwd+bwd (issue 27)", 1.2, ("flex",), ("fwdbwd",),
                           ("dense_L8192_D128", "causal_L8192_D128"))


@dataclass(frozen=True)
class Family:
    title: str
    short: str  # the headline's name for it
    columns: tuple[str, ...] = STANDARD_COLUMNS
    titles: tuple[tuple[str, str], ...] = ()  # backend -> column title, where it differs from BASE_TITLES
    note: str = ""
    headline_peer: str = "flex"
    ylabel: str = "TFLOP/s"
    targets: tuple[Target, ...] = (AT_LEAST_FLEX,)  # every one that applies to a row is judged

    def title_of(self, backend: str) -> str:
        return dict(self.titles).get(backend, BASE_TITLES.get(backend, backend))


FAMILIES: dict[str, Family] = {
    "dense": Family("Dense", "dense", columns=GLUON_COLUMNS,
                    targets=(FLEX_1_1, CUDNN_0_85_FWD, GLUON_DENSE_FWD, GLUON_FWDBWD, GLUON_FWDBWD_FLEX)),
    "causal": Family("Causal", "causal", columns=GLUON_COLUMNS,
                     targets=(FLEX_1_1, CUDNN_0_85_FWD, GLUON_CAUSAL_FWD, GLUON_FWDBWD, GLUON_FWDBWD_FLEX)),
    "window": Family("Sliding window (causal)", "sliding window", columns=GLUON_COLUMNS,
                     note="SDPA has no sliding-window kernel: its columns stay empty."),
    "document": Family("Document masking (causal packed documents)", "documents",
                       note="Document ids are a runtime tensor (attngen) and a mask_mod reading it (Flex)."),
    "score_mods": Family("Score mods (ALiBi, tanh soft-capping at 30; causal)", "score_mod (ALiBi)", columns=GLUON_COLUMNS,
                         note="ALiBi slopes are a runtime tensor that does not require grad, for attngen and Flex "
                              "alike: fwd+bwd computes dq, dk, dv only (Flex's gradient of a captured tensor ran "
                              "out of memory at this shape in bench_backward.py)."),
    "neighborhood": Family("Neighborhood attention (NATTEN semantics)", "neighborhood",
                           targets=(Target(">= 3x Flex (issues 3 and 4)", 3.0, ("flex",), cases=("na2d_31",)),
                                    Target(">= 2x Flex (issue 3)", 2.0, ("flex",), ("fwd",), cases=("na2d_63",)),
                                    Target(">= Flex", 1.0, ("flex",), cases=("na1d", "na3d")))),
    "sigmoid": Family("Sigmoid attention", "sigmoid", columns=("attngen", "attngen_softmax", "flex"),
                      titles=(("attngen", "attngen sigmoid"), ("flex", "FlexAttention (softmax)")),
                      note="No peer computes sigmoid attention: attngen's softmax and Flex's softmax on the same "
                           "shape and mask are reference points, not the same function.",
                      targets=(Target(">= 1.15x attngen softmax (issue 5)", 1.15, ("attngen_softmax",), ("fwd",)),
                               Target("> Flex softmax (issue 5)", 1.0, ("flex",), ("fwd",)))),
    "linear": Family("Linear attention (lightning: causal, per-head decay)", "linear (lightning)",
                     columns=("attngen", "fla", "sdpa_flash", "sdpa_cudnn"),
                     titles=(("attngen", "attngen lightning"), ("sdpa_flash", "SDPA flash (causal softmax)"),
                             ("sdpa_cudnn", "SDPA cuDNN (causal softmax)")),
                     note="fla's chunk_simple_gla(g_gamma, scale=1.0) computes the same function; SDPA computes "
                          "causal softmax attention on the same shape (what linear attention replaces). TFLOP/s "
                          "use causal attention's FLOP count for every backend (equivalent throughput).",
                     headline_peer="fla", ylabel="TFLOP/s (causal attention's FLOPs)",
                     targets=(Target(">= fla (issue 5)", 1.0, ("fla",)),)),
}


# --------------------------------------------------------------------------- records


@dataclass
class Check:
    """One relative L2 error: ``backend``'s ``what`` (out, dq, dk, dv) against ``against``."""
    backend: str
    against: str  # "reference" or another backend's name
    what: str
    err: float | None
    detail: str = ""  # what the reference covers (rows, slice)

    @property
    def ok(self) -> bool:
        return is_correct(self.err)


@dataclass
class Row:
    """One case in one mode: every backend's measurement and every check."""
    family: str
    case: str
    title: str
    mode: str
    flops: float
    main: bool = False
    backends: list[str] = field(default_factory=list)  # the ones this case runs, in table order
    measurements: dict[str, Measurement] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ms(self, backend: str) -> float | None:
        m = self.measurements.get(backend)
        return m.ms if m is not None and m.error is None else None

    def tflops(self, backend: str) -> float | None:
        m = self.measurements.get(backend)
        return m.tflops if m is not None and m.error is None else None

    def ratio(self, backend: str) -> float | None:
        """attngen's throughput over ``backend``'s (same FLOPs): > 1 means attngen is faster."""
        return throughput_ratio(self.ms(ATTNGEN), self.ms(backend))

    def failures(self) -> list[str]:
        """What makes the run fail: attngen not running, and any check over the limit."""
        out = []
        a = self.measurements.get(ATTNGEN)
        if a is not None and a.error is not None:
            out.append(f"{self.case} {self.mode}: attngen failed ({a.error})")
        out += [f"{self.case} {self.mode}: {c.backend} {c.what} vs {c.against} err {c.err}" for c in self.checks
                if not c.ok]
        return out


def row_from_dict(d: dict[str, Any]) -> Row:
    d = dict(d)
    d["measurements"] = {k: Measurement(**m) for k, m in d.get("measurements", {}).items()}
    d["checks"] = [Check(**c) for c in d.get("checks", [])]
    return Row(**d)


def row_key(row: Row) -> tuple[str, str]:
    return row.case, row.mode


def ordered(rows: Iterable[Row]) -> list[Row]:
    """Family order of FAMILIES, then the order the rows came in, fwd before fwd+bwd per case."""
    rows = list(rows)
    first_seen = {}
    for i, r in enumerate(rows):
        first_seen.setdefault(r.case, i)
    fam = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(rows, key=lambda r: (fam.get(r.family, len(fam)), first_seen[r.case], MODES.index(r.mode)))


def best_sdpa(row: Row) -> str | None:
    """The faster SDPA backend that ran (the stronger peer), or None."""
    timed = [(row.ms(b), b) for b in SDPA if row.ms(b) is not None]
    return min(timed)[1] if timed else None


# --------------------------------------------------------------------------- markdown


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"x{x:.2f}"


def err_cell(row: Row) -> str:
    """attngen's largest error (all its checks), then any wrong peer."""
    checks = [c for c in row.checks if c.backend == ATTNGEN]
    errs = [c.err for c in checks if c.err is not None]
    worst = max(errs, key=lambda e: math.inf if math.isnan(e) else e) if errs else None
    cell = "-" if not checks else ("n/a" if worst is None else f"{worst:.1e}")
    if not all(c.ok for c in checks):
        cell += " **WRONG**" if worst is not None and not is_correct(worst) else " **unchecked**"
    wrong = sorted({c.backend for c in row.checks if c.backend != ATTNGEN and not c.ok})
    if wrong:
        cell += "; **wrong: " + ", ".join(wrong) + "**"
    return cell


def target_cell(row: Row, family: Family) -> str:
    """Every target that applies to the row, each judged on its peers' ratios ("-" if none)."""
    verdicts = []
    for target in (t for t in family.targets if t.applies(row)):
        peers = target.peers if target.peers is not None else [b for b in row.backends if b != ATTNGEN]
        ratios = [(row.ratio(b), b) for b in peers if row.ratio(b) is not None]
        if not ratios:
            continue
        worst, who = min(ratios)
        verdict = "met" if worst >= target.factor else "**missed**"
        verdicts.append(f"{md_escape(target.text)}: {verdict} (min {fmt_ratio(worst)}, {family.title_of(who)})")
    return "; ".join(verdicts) or "-"


def family_table(family_name: str, rows: Sequence[Row], judge: bool = True) -> str:
    """One family's table; ``judge``: evaluate the targets (not on interpreter wall times)."""
    fam = FAMILIES[family_name]
    head = ["case", "mode"] + [fam.title_of(b) for b in fam.columns] + ["err (attngen max; wrong peers)", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [format_cell(r.measurements.get(b) if b in r.backends else None, r.ms(ATTNGEN), b != ATTNGEN)
                 for b in fam.columns]
        lines.append("| " + " | ".join([md_escape(r.title) + (" (main)" if r.main else ""), MODE_TITLES[r.mode],
                                         *cells, err_cell(r), target_cell(r, fam) if judge else "-"]) + " |")
    return "\n".join(lines)


def setup_table(rows: Sequence[Row]) -> str:
    """First calls (build + compile + one run), kept out of the timings."""
    backends = [b for b in BASE_TITLES if any(b in r.measurements for r in rows)]
    lines = ["| case | mode | " + " | ".join(BASE_TITLES[b] for b in backends) + " |",
             "|---|---|" + "---|" * len(backends)]
    for r in rows:
        cells = []
        for b in backends:
            m = r.measurements.get(b)
            cells.append(f"{m.setup_s:.1f}" if m is not None and m.setup_s is not None else "-")
        lines.append(f"| {r.case} | {MODE_TITLES[r.mode]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(env: dict[str, Any], parts: Sequence[dict[str, Any]] = ()) -> str:
    smoke = env.get("smoke")
    timing = (f"median of triton.testing.do_bench(warmup={env.get('warmup_ms')} ms, rep={env.get('rep_ms')} ms)"
              if env.get("cuda") else "wall time of one call under the Triton interpreter (not a performance figure)")
    lines = [
        "# attngen against FlexAttention, SDPA (flash, cuDNN) and fla" + (" (smoke)" if smoke else ""),
        "",
        f"- date (UTC): {env.get('date_utc', '?')}",
        f"- device: {env.get('device', '?')}",
        f"- torch {env.get('torch', '?')}, Triton {env.get('triton', '?')}, CUDA {env.get('cuda') or '-'}, "
        f"cuDNN {env.get('cudnn') or '-'}, attngen {env.get('attngen', '?')} (commit {env.get('commit', '?')}), "
        f"fla {env.get('fla') or '-'}",
        f"- {env.get('dtype', '?')}; {timing}; every backend in the same process on the same inputs; "
        "fwd runs under torch.no_grad, fwd+bwd is `out.backward(dout)`",
        f"- TFLOP/s count attended score entries only: 4*B*H*D*attended forward, x{BACKWARD_FLOP_FACTOR:g} for "
        "forward+backward (shared/PEERS.md's convention)",
        "- cell: ms, TF/s, xR = attngen's throughput over that backend's (R > 1: attngen faster); "
        "n/a (reason): the backend could not run; -: it cannot express the case",
        "- checks: each backend's output (and dq, dk, dv in fwd+bwd) against float64 `ag.reference` on batch 0, "
        "head 0, every query row (neighborhoods: a float64 oracle on sampled query rows of every head; their "
        "gradients on batch 0, head 0 up to 16K tokens), and attngen against every peer computing the same "
        f"function on the whole tensors; relative L2 limit {MAX_REL_ERR:g}",
    ]
    if len(parts) > 1:
        lines.append(f"- merged from {len(parts)} runs: " + "; ".join(
            f"{p.get('date_utc', '?')} on {p.get('device', '?')} (commit {p.get('commit', '?')})" for p in parts))
    return "\n".join(lines)


def markdown(env: dict[str, Any], rows: Sequence[Row], parts: Sequence[dict[str, Any]] = (),
             plot_note: str | None = None) -> str:
    rows = ordered(rows)
    out = [header(env, parts)]
    for name, fam in FAMILIES.items():
        mine = [r for r in rows if r.family == name]
        if not mine:
            continue
        out += ["", f"## {fam.title}", ""]
        if fam.note:
            out += [fam.note, ""]
        out.append(family_table(name, mine, judge=bool(env.get("cuda"))))
        notes = sorted({n for r in mine for n in r.notes})
        if notes:
            out += [""] + [f"- {md_escape(n)}" for n in notes]
    if rows:
        out += ["", "## First calls (seconds: build, compile and one run; not in the timings)", "", setup_table(rows)]
    failures = [f for r in rows for f in r.failures()]
    if failures:
        out += ["", "## FAILURES", ""] + [f"- {md_escape(f)}" for f in failures]
    if plot_note:
        out += ["", f"Plots: {plot_note}"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- headline


def headline_rows(rows: Sequence[Row]) -> list[tuple[Row | None, Row | None]]:
    """(fwd, fwd+bwd) of each family's main case, in family order."""
    out = []
    for name in FAMILIES:
        mains = [r for r in rows if r.family == name and r.main]
        for case in dict.fromkeys(r.case for r in mains):
            pick = {r.mode: r for r in mains if r.case == case}
            out.append((pick.get("fwd"), pick.get("fwdbwd")))
    return out


def pair(fwd: Row | None, bwd: Row | None, value) -> str:
    cells = [value(r) if r is not None else None for r in (fwd, bwd)]
    return " / ".join("-" if c is None else c for c in cells)


def headline_table(rows: Sequence[Row]) -> str:
    lines = ["| family | case | attngen TFLOP/s (fwd / fwd+bwd) | x FlexAttention (fla for linear) | x best SDPA |",
             "|---|---|---|---|---|"]
    for fwd, bwd in headline_rows(rows):
        r = fwd or bwd
        fam = FAMILIES[r.family]
        tf = pair(fwd, bwd, lambda x: None if x.tflops(ATTNGEN) is None else f"{x.tflops(ATTNGEN):.0f}")
        peer = pair(fwd, bwd, lambda x: None if x.ratio(fam.headline_peer) is None else fmt_ratio(
            x.ratio(fam.headline_peer)))
        if fam.title_of(fam.headline_peer) != BASE_TITLES["flex"]:
            peer += f" vs {fam.title_of(fam.headline_peer)}"
        sdpa = pair(fwd, bwd, lambda x: None if best_sdpa(x) is None else
                    f"{fmt_ratio(x.ratio(best_sdpa(x)))} {BASE_TITLES[best_sdpa(x)].replace('SDPA ', '')}")
        lines.append(f"| {fam.short} | {md_escape(r.title)} | {tf} | {peer} | {sdpa} |")
    return "\n".join(lines)


def headline_block(env: dict[str, Any], rows: Sequence[Row], source: str, runs: int = 1) -> str:
    """The README's headline: how and where it was measured, then ``headline_table``. ``runs``:
    how many runs a merged compare.json holds (``env`` is the newest one's)."""
    where = "Measured on" if runs <= 1 else f"Merged from {runs} runs (each row the newest of its case), the newest on"
    return "\n".join([
        f"{where} {env.get('device', '?')} ({env.get('date_utc', '?')} UTC; torch {env.get('torch', '?')}, "
        f"Triton {env.get('triton', '?')}, CUDA {env.get('cuda') or '-'}, attngen {env.get('attngen', '?')} at "
        f"{env.get('commit', '?')}), {env.get('dtype', '?')}, peers in the same process on the same inputs. "
        "TFLOP/s count attended entries (x3.5 for forward+backward); xR = attngen's throughput over the peer's "
        f"(R > 1: attngen faster). Every family and shape: `{source}` and the compare.md beside it. Generated by "
        f"`python benchmarks/compare.py --headline {source}`.",
        "",
        headline_table(rows),
    ])


def replace_between_markers(text: str, body: str, start: str = HEADLINE_START, end: str = HEADLINE_END) -> str:
    """``text`` with everything between the two marker lines replaced by ``body``."""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"expected exactly one {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", text)


# --------------------------------------------------------------------------- JSON


def to_json(env: dict[str, Any], rows: Sequence[Row], parts: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"schema": SCHEMA, "environment": env, "parts": list(parts) or [env], "max_rel_err": MAX_REL_ERR,
            "rows": [asdict(r) for r in ordered(rows)]}


def from_json(data: dict[str, Any]) -> tuple[dict[str, Any], list[Row], list[dict[str, Any]]]:
    if data.get("schema") != SCHEMA:
        raise ValueError(f"not a compare.py result (schema {data.get('schema')!r}, expected {SCHEMA!r})")
    env = data["environment"]
    return env, [row_from_dict(r) for r in data["rows"]], data.get("parts") or [env]


def merge(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs' JSON: rows of all of them (a later run's row replaces an
    earlier one of the same case and mode), the last run's environment (the newest, as its
    rows win), every run as a part."""
    if not docs:
        raise ValueError("nothing to merge")
    rows: dict[tuple[str, str], Row] = {}
    parts: list[dict[str, Any]] = []
    env = None
    for doc in docs:
        e, rs, ps = from_json(doc)
        env = e
        parts += ps
        rows.update({row_key(r): r for r in rs})
    return to_json(env, list(rows.values()), parts)


def mismatched_parts(parts: Sequence[dict[str, Any]]) -> list[str]:
    """Environment keys on which the merged runs disagree (timings compare only on one setup)."""
    keys = ("device", "torch", "triton", "cuda", "dtype")
    return [k for k in keys if len({str(p.get(k)) for p in parts}) > 1]


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on the GPU machine
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, rows: Sequence[Row], columns: Sequence[str], family: Family, labels: Sequence[str]) -> None:
    """Grouped bars: one group per row, one bar per backend (0 where it did not run)."""
    width = 0.8 / max(1, len(columns))
    for n, b in enumerate(columns):
        xs = [i + (n - (len(columns) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r.tflops(b) or 0.0 for r in rows], width, label=family.title_of(b), color=f"C{n}")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel(family.ylabel, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)


def family_figure(plt, name: str, rows: Sequence[Row], subtitle: str):
    fam = FAMILIES[name]
    columns = [b for b in fam.columns if any(b in r.backends for r in rows)]
    fig, axes = plt.subplots(1, len(MODES), figsize=(11, 4.2), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], MODES):
        mine = [r for r in rows if r.mode == mode]
        _bars(ax, mine, columns, fam, [r.case for r in mine])
        ax.set_title(MODE_TITLES[mode], fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{fam.title}\n{subtitle}", fontsize=9)
    fig.tight_layout()
    return fig


def overview_figure(plt, rows: Sequence[Row], subtitle: str):
    names = [n for n in FAMILIES if any(r.family == n for r in rows)]
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 3.8 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        fam = FAMILIES[name]
        mine = [r for r in rows if r.family == name]
        columns = [b for b in fam.columns if any(b in r.backends for r in mine)]
        _bars(ax, mine, columns, fam, [f"{r.case}\n{MODE_TITLES[r.mode]}" for r in mine])
        ax.set_title(fam.title, fontsize=9)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(subtitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_subtitle(env: dict[str, Any]) -> str:
    what = "smoke run: interpreter wall times, not performance" if env.get("smoke") else "TFLOP/s on attended entries"
    return f"{env.get('device', '?')}, {env.get('dtype', '?')}, {env.get('date_utc', '?')} UTC; {what}"


def write_plots(out_dir: Path, env: dict[str, Any], rows: Sequence[Row], loose: bool = True) -> str:
    """plots/<family>.png (when ``loose``), their tarball plots.tar.gz, and compare.png.
    Returns a note naming what was written, or why nothing was."""
    try:
        plt = _pyplot()
    except Exception as exc:
        return f"none (matplotlib does not import: {short_reason(exc)})"
    rows = ordered(rows)
    subtitle = plot_subtitle(env)
    pngs: dict[str, bytes] = {}
    for name in FAMILIES:
        mine = [r for r in rows if r.family == name]
        if mine:
            pngs[f"plots/{name}.png"] = _png(plt, family_figure(plt, name, mine, subtitle))
    if not pngs:
        return "none (no rows)"
    out_dir.mkdir(parents=True, exist_ok=True)
    if loose:
        (out_dir / "plots").mkdir(exist_ok=True)
        for rel, data in pngs.items():
            (out_dir / rel).write_bytes(data)
    with tarfile.open(out_dir / "plots.tar.gz", "w:gz") as tar:
        for rel, data in pngs.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (out_dir / "compare.png").write_bytes(_png(plt, overview_figure(plt, rows, subtitle)))
    where = "plots/<family>.png and " if loose else ""
    return f"compare.png (every family), {where}plots.tar.gz ({', '.join(Path(p).name for p in pngs)})"


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
