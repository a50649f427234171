"""Results on disk: the commit a results header names, and files replaced atomically.

Standard library only: bench_compile's measured worker processes import it before their
clocks start, so it must not pull in torch.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def git_commit() -> str:
    """``$ATTNGEN_COMMIT`` if set (the device tool's copy of the tree can carry stale git
    metadata), else ``git rev-parse HEAD``; ``unknown`` outside a checkout."""
    if os.environ.get("ATTNGEN_COMMIT"):
        return os.environ["ATTNGEN_COMMIT"]
    try:
        res = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=REPO, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else "unknown"


def default_out(family: str, smoke: bool = False, environ: dict[str, str] | None = None) -> Path:
    """Where a benchmark writes when no ``--out`` is given: ``$OUT`` (the device tool's folder),
    else its family's folder under benchmarks/results/; a smoke run (not a measurement) writes
    under the system's temporary folder instead, so it never replaces a committed result."""
    environ = os.environ if environ is None else environ
    if environ.get("OUT"):
        return Path(environ["OUT"])
    return Path(tempfile.gettempdir()) / "attngen-bench-smoke" / family if smoke else RESULTS / family


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file and a rename: a run cut off mid-write
    leaves the previous file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
