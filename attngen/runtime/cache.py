"""The on-disk kernel cache.

Each entry is a folder named by the cache key (a sha256 over the final IR text, the
templates, the attngen and Triton versions and the target) holding ``kernel.py``,
``kernel.ir`` and ``manifest.json``. Writers hold a file lock per entry and write each
file to a temporary name before ``os.replace``; the manifest, written last, records the
module's sha256, so an entry whose files do not match it (a crash mid-write, a disk
error, an edit) is detected and rebuilt. An entry may also hold ``binaries.json``, the index of
the Triton binaries its kernels were compiled to (``triton_binaries``), and the cache root a
``lowered/`` folder (``lowering_cache``).

Faults (tests/test_cache_faults.py): a cache folder that cannot be written is replaced by a
private temporary one (``cache_dir``); a write that fails (disk full) leaves no manifest, so
the entry is never loaded and the next call builds it again, and the error names the folder;
a folder removed while in use is made again; a process killed while it holds an entry's lock
releases it with its file descriptors (``filelock`` takes an ``flock``), so the lock file
left behind blocks nobody.
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

from filelock import FileLock, Timeout

from . import cache_dir

MANIFEST = "manifest.json"
MODULE = "kernel.py"
IR = "kernel.ir"
LOCK_SUFFIX = ".lock"
# A build takes seconds; a process that holds an entry's lock this long has hung (a dead one
# holds nothing: the OS drops its flock).
LOCK_TIMEOUT_S = 600


def cache_root() -> Path:
    """The folder cache files are read from and written to: ``$ATTNGEN_CACHE_DIR`` or the
    user cache folder, or a private temporary folder when that cannot be written."""
    return cache_dir.writable_root()


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
    is missing or corrupt (or ``force``).

    A write that fails is retried once after checking the folder again (it may have become
    read-only: then the private temporary folder takes over); a second failure raises
    ``OSError`` naming the folder, with no manifest written, so nothing half-written is
    ever loaded and the next call builds the entry again."""
    built: list[tuple[str, str]] = []  # build() once, even when the write is retried elsewhere

    def build_once() -> tuple[str, str]:
        if not built:
            built.append(build())
        return built[0]

    try:
        return _get_or_build(key, build_once, force)
    except (TimeoutError, cache_dir.CacheUnavailable):
        raise
    except OSError:
        cache_dir.forget()
    try:
        return _get_or_build(key, build_once, force)
    except (TimeoutError, cache_dir.CacheUnavailable):
        raise
    except OSError as exc:
        raise OSError(exc.errno, f"attngen: cannot write the kernel cache entry {entry_dir(key)} "
                                 f"({exc.strerror or exc}); free space there or set {cache_dir.ENV} to another "
                                 f"folder") from exc


def _get_or_build(key: str, build: Callable[[], tuple[str, str]], force: bool) -> Entry:
    path = entry_dir(key)
    if not force and _valid(path, key):
        return Entry(key, path, built=False)
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / f"{key}{LOCK_SUFFIX}"), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise TimeoutError(f"attngen: another process has held {lock.lock_file} for {LOCK_TIMEOUT_S} s while "
                      "building the same kernel; if none is running, delete that file") from None
    try:
        if not force and _valid(path, key):  # another process built it while we waited
            return Entry(key, path, built=False)
        (path / MANIFEST).unlink(missing_ok=True)  # the entry is invalid until the manifest is back
        source, ir_text = build()
        path.mkdir(parents=True, exist_ok=True)  # the folder may have been removed meanwhile
        atomic_write(path / MODULE, source)
        atomic_write(path / IR, ir_text)
        manifest = {"key": key, "sha256": hashlib.sha256(source.encode()).hexdigest(), "created": time.time()}
        atomic_write(path / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    finally:
        lock.release()
    return Entry(key, path, built=True)
