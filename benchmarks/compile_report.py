"""The compile-time benchmark's report: the first-call summary against the targets, every stage of
every process, markdown and JSON."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from compile_processes import Record
from compile_variants import LIBRARY_TITLES, VARIANTS
from result_files import write_atomic

# The targets for attngen's first call, per process.
# The targets for attngen's first call, per process.
TARGET_S = {"first": 5.0, "second": 0.5}
DETAIL_COLUMNS = (("import_torch", "import torch"), ("import_library", "import library"), ("declare", "declare"),
                  ("setup", "setup (CUDA, inputs)"), ("block_mask", "create_block_mask"), ("compile", "compile"),
                  ("first_fwd", "first fwd"), ("second_fwd", "second fwd"), ("first_call", "first call"),
                  ("first_fwd_bwd", "first fwd+bwd"))
REASON_CHARS = 60


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}" if seconds >= 10 else f"{seconds:.3f}"


def clip(reason: str) -> str:
    reason = reason.replace("|", "\\|").replace("\n", " ")
    return reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS] + "..."


def cell(record: Record | None, key: str) -> str:
    """A stage's seconds, or why there are none (the first call: whichever stage failed;
    a variant the library cannot express: see skipped_notes)."""
    if record is None:
        return "-"
    if record.skipped:
        return "n/a"
    value = record.first_call_s if key == "first_call" else record.times.get(key)
    if value is not None:
        return fmt_s(value)
    reason = record.errors.get(key) or record.errors.get("process")
    if reason is None and key == "first_call" and record.errors:
        stage, why = next(iter(record.errors.items()))
        reason = f"{stage}: {why}"
    return f"n/a ({clip(reason)})" if reason else "-"


def verdict(seconds: float | None, limit: float, smoke: bool) -> str:
    if smoke:
        return "n/a (interpreter)"
    if seconds is None:
        return "-"
    return "yes" if seconds < limit else "**NO**"


def ratio(flex_s: float | None, attngen_s: float | None) -> str:
    """How many times longer FlexAttention's first call took than attngen's."""
    if flex_s is None or attngen_s is None or attngen_s <= 0:
        return "-"
    return f"x{flex_s / attngen_s:.1f}"


def find(records: Sequence[Record], library: str, variant: str, process: str) -> Record | None:
    for r in records:
        if r.library == library and r.variant == variant and (r.process == process or r.skipped):
            return r
    return None


def first_call_of(record: Record | None) -> float | None:
    return record.first_call_s if record is not None else None


def variants_in(records: Sequence[Record]) -> list[str]:
    return [v for v in VARIANTS if any(r.variant == v for r in records)]


def summary_table(records: Sequence[Record], smoke: bool) -> str:
    rows = [f"| variant | attngen first call, 1st process | < {TARGET_S['first']:g} s | attngen, 2nd process | "
            f"< {TARGET_S['second']:g} s | "
            "Flex first call, 1st process | Flex, 2nd process | Flex / attngen (1st, 2nd) | "
            "first fwd+bwd, 1st process: attngen / Flex | 2nd process: attngen / Flex |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants_in(records):
        a1, a2 = find(records, "attngen", v, "first"), find(records, "attngen", v, "second")
        f1, f2 = find(records, "flex", v, "first"), find(records, "flex", v, "second")
        rows.append(" | ".join([
            f"| {v}", cell(a1, "first_call"), verdict(first_call_of(a1), TARGET_S["first"], smoke),
            cell(a2, "first_call"), verdict(first_call_of(a2), TARGET_S["second"], smoke),
            cell(f1, "first_call"), cell(f2, "first_call"),
            f"{ratio(first_call_of(f1), first_call_of(a1))}, {ratio(first_call_of(f2), first_call_of(a2))}",
            f"{cell(a1, 'first_fwd_bwd')} / {cell(f1, 'first_fwd_bwd')}",
            f"{cell(a2, 'first_fwd_bwd')} / {cell(f2, 'first_fwd_bwd')} |"]))
    return "\n".join(rows)


def detail_table(records: Sequence[Record]) -> str:
    titles = [title for _, title in DETAIL_COLUMNS]
    rows = ["| library | variant | process | " + " | ".join(titles) + " | attngen cache hit |",
            "|---|---|---|" + "---|" * (len(titles) + 1)]
    for r in records:
        if r.skipped or r.process == "primer":
            continue
        hit = "-" if r.from_cache is None else ("yes" if r.from_cache else "no")
        rows.append(f"| {LIBRARY_TITLES[r.library]} | {r.variant} | {r.process} | "
                    + " | ".join(cell(r, key) for key, _ in DETAIL_COLUMNS) + f" | {hit} |")
    return "\n".join(rows)


def primer_note(records: Sequence[Record]) -> str:
    primers = [r for r in records if r.process == "primer"]
    if not primers:
        return "- Triton's one-time setup was not separated (--no-prime or smoke): 1st processes include it"
    took = primers[-1].times.get("triton_setup")
    what = f"{fmt_s(took)} s" if took is not None else cell(primers[-1], "triton_setup")
    return (f"- Triton's one-time setup (driver utilities, built with a C compiler; any earlier Triton use on a "
            f"machine has it cached) ran once in a primer process ({what}), not counted; its Triton cache seeded "
            "every scenario's")


def skipped_notes(records: Sequence[Record]) -> str:
    """Why some cells are n/a: variants a library cannot express."""
    return "; ".join(f"{LIBRARY_TITLES[r.library]} cannot run {r.variant} ({r.skipped})" for r in records if r.skipped)


def markdown_header(env: Mapping[str, Any], config: Mapping[str, Any], records: Sequence[Record]) -> str:
    sizes = config["sizes"]
    lines = [
        "# attngen compile time",
        "",
        f"- date (UTC): {env.get('date_utc', '?')}; commit {env.get('commit', '?')}",
        f"- device: {env.get('device', '?')}; torch {env.get('torch', '?')}, Triton {env.get('triton', '?')}, "
        f"attngen {env.get('attngen', '?')}, CUDA {env.get('cuda', '?')}, Python {env.get('python', '?')}",
        f"- problem: B={sizes['B']} H={sizes['H']} L={sizes['L']} D={sizes['D']} {sizes['dtype']}; "
        f"na2d: {sizes['grid'][0]}x{sizes['grid'][1]} tokens, kernel {sizes['kernel']}x{sizes['kernel']}; "
        f"causal sliding window {sizes['window']}; causal documents: {sizes['documents']} per sequence; "
        "alibi: causal with runtime slopes; sigmoid: causal; lightning: the built-in",
        "- every row is one fresh Python process; 1st process: empty attngen, Triton and Inductor caches (a new "
        "temporary folder per variant and library); 2nd process: a new process on the caches the 1st left",
        "- first call = attngen: `ag.compile` + the first forward; FlexAttention: `create_block_mask` + "
        "`torch.compile(flex_attention)` + its first forward; synchronized, under `torch.no_grad()`; imports "
        "(Flex: with Dynamo and Inductor) and CUDA initialization are not counted (see the detail table)",
        "- first fwd+bwd: the first forward with gradients and its backward, after the first call (backward kernels "
        "compile here; Flex also recompiles its forward for training)",
        f"- targets (issue \"Autotuning ...\", item 3): attngen first call < {TARGET_S['first']:g} s in the 1st "
        f"process, < {TARGET_S['second']:g} s in the 2nd; PEERS.md: FlexAttention compiles each new mask in 5-8 s "
        "per process",
        primer_note(records),
    ]
    if env.get("merged"):
        lines.append(f"- includes the records of an earlier run: {env['merged']}")
    if config.get("smoke"):
        lines.append("- **smoke run**: CPU, Triton interpreter, float32, tiny sizes, no FlexAttention. The "
                     "interpreter has no JIT compile, so these numbers measure code generation and module loading "
                     "only (and the interpreter's run time in the calls); they check the script, not the targets")
    return "\n".join(lines)


def full_markdown(env: Mapping[str, Any], config: Mapping[str, Any], records: Sequence[Record]) -> str:
    notes = skipped_notes(records)
    return "\n".join([markdown_header(env, config, records), "", "## First call (seconds)", "",
                      summary_table(records, bool(config.get("smoke")))] + (["", f"n/a: {notes}"] if notes else [])
                     + ["", "## Every part (seconds)", "", detail_table(records)]) + "\n"


def to_json(env: Mapping[str, Any], config: Mapping[str, Any], records: Sequence[Record]) -> dict[str, Any]:
    return {"environment": dict(env), "config": dict(config), "targets_s": TARGET_S,
            "records": [{**asdict(r), "first_call_s": r.first_call_s} for r in records]}


def write_results(out: Path, env: Mapping[str, Any], config: Mapping[str, Any],
                  records: Sequence[Record]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "compile.md", out / "compile.json"
    write_atomic(md, full_markdown(env, config, records))
    write_atomic(js, json.dumps(to_json(env, config, records), indent=2) + "\n")
    return md, js


def missed_targets(records: Sequence[Record]) -> list[str]:
    """attngen first calls over their target, as 'variant (process): seconds'."""
    return [f"{r.variant} ({r.process}): {fmt_s(r.first_call_s)} s" for r in records
            if r.library == "attngen" and r.process in TARGET_S and r.first_call_s is not None
            and r.first_call_s >= TARGET_S[r.process]]


def progress_line(r: Record) -> str:
    if r.skipped:
        return f"{LIBRARY_TITLES[r.library]} {r.variant}: n/a ({r.skipped})"
    parts = [f"{key} {fmt_s(value)}" for key, value in r.times.items()]
    errors = [f"{key}: {reason}" for key, reason in r.errors.items()]
    return (f"{LIBRARY_TITLES[r.library]} {r.variant} {r.process}: " + ", ".join(parts)
            + (f" | first call {fmt_s(r.first_call_s)} s" if r.first_call_s is not None else "")
            + (f" | FAILED {'; '.join(errors)}" if errors else ""))
