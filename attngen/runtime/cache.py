"""The on-disk kernel cache.

Each entry is a folder named by the cache key (a sha256 over the final IR text, the
templates, the attngen and Triton versions and the target) holding ``kernel.py``,
``kernel.ir`` and ``manifest.json``. Writers hold a file lock per entry and write each
file to a temporary name before ``os.replace``; the manifest, written last, records the
module's sha256, so an entry whose files do not match it (a crash mid-write, a disk
error, an edit) is detected and rebuilt. An entry may also hold ``binaries.json``, the index of
the Triton binaries its kernels were compiled to (``triton_binaries``), and the cache root a
``lowered/`` folder (``lowering_cache``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import platformdirs
from filelock import FileLock

MANIFEST = "manifest.json"
MODULE = "kernel.py"
IR = "kernel.ir"


def cache_root() -> Path:
    """``$ATTNGEN_CACHE_DIR`` if set, else the user cache folder (platformdirs)."""
    env = os.environ.get("ATTNGEN_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("attngen"))


def entry_dir(key: str) -> Path:
    """The folder of the cache entry for ``key``."""
    return cache_root() / key[:2] / key


def cache_key(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    built: bool  # True when this call generated the module, False on a cache hit

    @property
    def module_path(self) -> Path:
        return self.path / MODULE


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``:
    readers see the old file or the whole new one, and a crash leaves no partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _valid(path: Path, key: str) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        source = (path / MODULE).read_bytes()
        (path / IR).stat()
    except (OSError, ValueError):
        return False
    return manifest.get("key") == key and manifest.get("sha256") == hashlib.sha256(source).hexdigest()


def get_or_build(key: str, build: Callable[[], tuple[str, str]], force: bool = False) -> Entry:
    """Return the entry for ``key``, calling ``build() -> (module_source, ir_text)`` if it
    is missing or corrupt (or ``force``)."""
    path = entry_dir(key)
    if not force and _valid(path, key):
        return Entry(key, path, built=False)
    path.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f"{key}.lock")):
        if not force and _valid(path, key):  # another process built it while we waited
            return Entry(key, path, built=False)
        (path / MANIFEST).unlink(missing_ok=True)  # the entry is invalid until the manifest is back
        source, ir_text = build()
        atomic_write(path / MODULE, source)
        atomic_write(path / IR, ir_text)
        manifest = {"key": key, "sha256": hashlib.sha256(source.encode()).hexdigest(), "created": time.time()}
        atomic_write(path / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return Entry(key, path, built=True)
