"""Seeing and pruning the cache folder (``attngen cache list|size|clear``).

The folder (``cache.py``'s docstring has the layout) holds four kinds of things:

- kernel entries ``<root>/<key[:2]>/<key>/`` (module, IR, manifest, binaries index) and the
  ``<key>.lock`` files beside them;
- ``lowered/``: the lowered IR per variant text and compiler version (``lowering_cache``);
- ``autotune/``: tuning records written by ``attngen tune`` (minutes of GPU time each, so
  ``clear`` keeps them unless asked);
- anything else (left alone).

Clearing takes each entry's lock without waiting: an entry that another process is building
right now is skipped, not pulled from under it. A process that already loaded a module keeps
running it (the loader executes the text it verified, runtime/loader.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from .cache import IR, LOCK_SUFFIX, MANIFEST, _valid

_KEY = re.compile(r"^[0-9a-f]{64}$")
LOWERED = "lowered"
RECORDS = "autotune"


@dataclass(frozen=True)
class EntryInfo:
    key: str
    path: Path
    name: str  # the kernel's name (first line of kernel.ir), or "?" when unreadable
    size: int  # bytes
    created: float  # seconds since the epoch
    valid: bool  # False: half-written or damaged; the next compile rebuilds it


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += (Path(dirpath) / f).stat().st_size
            except OSError:  # removed while we walk
                pass
    return total


def _entry_dirs(root: Path):
    if not root.is_dir():
        return
    for shard in sorted(root.iterdir()):
        if len(shard.name) == 2 and shard.is_dir():
            for entry in sorted(shard.iterdir()):
                if entry.is_dir() and _KEY.match(entry.name) and entry.name.startswith(shard.name):
                    yield entry


def _info(entry: Path) -> EntryInfo:
    key = entry.name
    try:
        name = (entry / IR).read_text().split("\n", 1)[0].removeprefix("kernel ").strip() or "?"
    except OSError:
        name = "?"
    try:
        created = float(json.loads((entry / MANIFEST).read_text())["created"])
    except (OSError, ValueError, KeyError, TypeError):
        created = entry.stat().st_mtime
    return EntryInfo(key, entry, name, _size(entry), created, _valid(entry, key))


def entries(root: Path) -> list[EntryInfo]:
    """Every kernel entry under ``root``, oldest first."""
    return sorted((_info(e) for e in _entry_dirs(root)), key=lambda e: e.created)


def usage(root: Path) -> dict[str, int]:
    """Bytes used under ``root`` by kernels (entries and locks), lowered IR, tuning records
    and anything else."""
    out = {"kernels": 0, LOWERED: 0, RECORDS: 0, "other": 0}
    if not root.is_dir():
        return out
    for child in root.iterdir():
        kind = (child.name if child.name in (LOWERED, RECORDS)
                else "kernels" if len(child.name) == 2 and child.is_dir() else "other")
        out[kind] += _size(child)
    return out


@dataclass(frozen=True)
class Cleared:
    entries: int
    skipped: int  # entries another process held locked
    bytes: int


def clear(root: Path, older_than_s: float | None = None, records: bool = False) -> Cleared:
    """Remove kernel entries (those created more than ``older_than_s`` ago, or all), their
    stale locks, the lowered IR and, with ``records``, the tuning records."""
    cutoff = None if older_than_s is None else time.time() - older_than_s
    removed = skipped = freed = 0
    for info in entries(root):
        if cutoff is not None and info.created > cutoff:
            continue
        lock = FileLock(str(info.path.parent / f"{info.key}{LOCK_SUFFIX}"), timeout=0)
        try:
            with lock:
                shutil.rmtree(info.path, ignore_errors=True)
        except Timeout:
            skipped += 1
            continue
        # no one held it; a process that opened it meanwhile at worst builds the entry twice
        # (entries are written atomically and are identical)
        Path(lock.lock_file).unlink(missing_ok=True)
        removed += 1
        freed += info.size
    for kind in (LOWERED,) + ((RECORDS,) if records else ()):
        folder = root / kind
        if folder.is_dir():
            freed += _remove_files(folder, cutoff)
    for shard in root.iterdir() if root.is_dir() else ():
        if len(shard.name) == 2 and shard.is_dir() and not any(shard.iterdir()):
            shard.rmdir()
    return Cleared(removed, skipped, freed)


def _remove_files(folder: Path, cutoff: float | None) -> int:
    freed = 0
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        try:
            if path.is_file() and (cutoff is None or path.stat().st_mtime <= cutoff):
                size = path.stat().st_size
                path.unlink()
                freed += size
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:  # removed meanwhile, or a file we may not delete: leave it
            pass
    return freed


def human(n: int) -> str:
    """``1234567`` -> ``1.2 MB``."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


__all__ = ["Cleared", "EntryInfo", "clear", "entries", "human", "usage"]
