"""The parent side of the compile-time benchmark: each (library, variant) runs in a 1st and a 2nd
fresh process on one temporary cache folder (attngen, Triton and Inductor caches inside it),
so the 1st measures a new variant and the 2nd a reload from the disk cache. A ``Record`` is
one process's stage times and errors; ``--merge`` reloads an earlier run's records.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from compile_variants import VARIANTS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().with_name("bench_compile.py")  # the workers run its --worker mode
PROCESSES = ("first", "second")
# What a user waits for before the first output (imports and CUDA initialization excluded).
FIRST_CALL_PARTS = ("block_mask", "compile", "first_fwd")
STDERR_TAIL_CHARS = 300


@dataclass
class Record:
    """One worker process: its stage times (seconds) and errors, or why it did not run."""

    library: str  # "attngen", "flex" ("triton" for the primer)
    variant: str
    process: str  # "first", "second" or "primer"
    times: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    from_cache: bool | None = None  # attngen: whether ag.compile found the module on disk
    skipped: str | None = None  # set when the library cannot express the variant

    @property
    def first_call_s(self) -> float | None:
        """Seconds from the declared variant to the first output (None if it did not run)."""
        if "first_fwd" not in self.times:
            return None
        return sum(self.times[p] for p in FIRST_CALL_PARTS if p in self.times)

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def worker_env(base: Mapping[str, str], cache_dir: Path, smoke: bool) -> dict[str, str]:
    """The environment of a scenario's workers: every cache inside ``cache_dir``, this
    checkout first on the import path, the interpreter only in smoke mode, and no output
    poisoning (a test-suite aid that would add a fill to every timed call)."""
    env = dict(base)
    env.pop("ATTNGEN_POISON_OUTPUTS", None)
    env["ATTNGEN_CACHE_DIR"] = str(cache_dir / "attngen")
    env["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else []))
    if smoke:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def worker_command(kind: str, variant: str, smoke: bool, backward: bool) -> list[str]:
    cmd = [sys.executable, str(SCRIPT), "--worker", kind, "--variant", variant]
    return cmd + (["--smoke"] if smoke else []) + ([] if backward else ["--no-backward"])


def parse_worker_output(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """The worker's JSON (its last stdout line), or an error naming the exit status and the
    last line of stderr when the process died before printing it."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if lines:
        try:
            data = json.loads(lines[-1])
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
    tail = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no output")
    return {"times": {}, "errors": {"process": f"exit status {returncode}: {tail[-STDERR_TAIL_CHARS:]}"}}


def run_worker(cmd: list[str], env: dict[str, str], timeout: float, log_path: Path) -> dict[str, Any]:
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        save_log(log_path, stderr)
        return {"times": {}, "errors": {"process": f"timed out after {timeout:g} s"}}
    save_log(log_path, proc.stderr)
    return parse_worker_output(proc.stdout, proc.stderr, proc.returncode)


def save_log(path: Path, text: str) -> None:
    if text.strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def to_record(library: str, variant: str, process: str, data: Mapping[str, Any]) -> Record:
    return Record(library, variant, process, dict(data.get("times", {})), dict(data.get("errors", {})),
                  data.get("from_cache"))


def load_earlier(path: Path, config: Mapping[str, Any]) -> tuple[list[Record], dict[str, Any]]:
    """Records and environment of an earlier run's compile.json (--merge), which must have
    measured the same problem in the same mode."""
    data = json.loads(path.read_text())
    for key in ("sizes", "smoke", "backward"):
        if data["config"].get(key) != json.loads(json.dumps(config[key])):  # as JSON has it: tuples are lists
            raise SystemExit(f"--merge: {path} was measured with {key}={data['config'].get(key)!r}, "
                             f"this run uses {config[key]!r}")
    names = {f.name for f in fields(Record)}
    records = [Record(**{k: v for k, v in r.items() if k in names}) for r in data["records"]]
    complete = measured_pairs(records)
    return [r for r in records if (r.library, r.variant) in complete], data["environment"]


def measured_pairs(records: Sequence[Record]) -> set[tuple[str, str]]:
    """(library, variant) pairs with both processes recorded or skipped; a scenario cut short
    in the middle is measured again."""
    have = {(r.library, r.variant, r.process) for r in records}
    return ({(r.library, r.variant) for r in records if r.skipped}
            | {(lib, v) for lib, v, _ in have if all((lib, v, p) in have for p in PROCESSES)})


def run_primer(args: argparse.Namespace, cache_dir: Path) -> tuple[Record, dict[str, Any]]:
    """Triton's one-time setup into ``cache_dir/triton`` (primer_worker)."""
    cmd = worker_command("primer", VARIANTS[0], args.smoke, not args.no_backward)
    data = run_worker(cmd, worker_env(os.environ, cache_dir, args.smoke), args.worker_timeout,
                      args.out / "compile_logs" / "triton-primer.txt")
    return to_record("triton", "-", "primer", data), data.get("environment", {})


def run_scenario(library: str, variant: str, args: argparse.Namespace,
                 seed: Path | None) -> Iterator[tuple[Record, dict[str, Any]]]:
    """The 1st and 2nd process on one fresh cache folder, whose Triton cache starts as a
    copy of ``seed`` (the primer's) when given."""
    with tempfile.TemporaryDirectory(prefix=f"bench-compile-{library}-{variant}-") as tmp:
        env = worker_env(os.environ, Path(tmp), args.smoke)
        if seed is not None and seed.is_dir():
            shutil.copytree(seed, env["TRITON_CACHE_DIR"])
        for process in PROCESSES:
            cmd = worker_command(library, variant, args.smoke, not args.no_backward)
            log = args.out / "compile_logs" / f"{library}-{variant}-{process}.txt"
            data = run_worker(cmd, env, args.worker_timeout, log)
            yield to_record(library, variant, process, data), data.get("environment", {})
