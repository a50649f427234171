"""Where the cache lives, and what happens when that place cannot be written.

The cache folder is ``$ATTNGEN_CACHE_DIR`` or the user cache folder (platformdirs). A folder
that cannot be written (read-only file system, no permission, a file in the way) must not
stop a compile: the kernels can be generated anyway, they just cannot be kept. So the first
time a process needs to write there, ``writable_root`` checks that it can (creating the
folder and a probe file in it); if not, the process uses a private temporary folder for the
rest of its life, removed at exit, and says so in one warning that names the folder, the
reason and the variable to set. Only when no temporary folder can be made either does it
fail, with one line (``CacheUnavailable``) that says what to do.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import platformdirs

ENV = "ATTNGEN_CACHE_DIR"

_fallbacks: dict[Path, Path] = {}  # configured root -> private temporary root, once per process
_checked: set[Path] = set()  # configured roots found writable in this process


class CacheUnavailable(OSError):
    """Neither the configured cache folder nor a temporary one can be written."""


def configured_root() -> Path:
    """``$ATTNGEN_CACHE_DIR`` if set, else the user cache folder (platformdirs); not checked."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("attngen"))


def _why_unwritable(root: Path) -> str | None:
    """None when a file can be created in ``root`` (made if missing), else the reason."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def writable_root() -> Path:
    """The folder to read and write cache files in: the configured one when it is writable,
    else this process's private temporary folder (one warning per configured folder)."""
    root = configured_root()
    if root in _checked:
        return root
    if root in _fallbacks:
        return _fallbacks[root]
    reason = _why_unwritable(root)
    if reason is None:
        _checked.add(root)
        return root
    try:
        private = Path(tempfile.mkdtemp(prefix="attngen-cache-"))
    except OSError as exc:
        raise CacheUnavailable(f"attngen: cannot write the kernel cache {root} ({reason}) nor a temporary folder "
                               f"({exc.strerror}); set {ENV} to a writable folder") from None
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    _fallbacks[root] = private
    warnings.warn(f"attngen: cannot write the kernel cache {root} ({reason}); this process keeps its kernels in "
                  f"the temporary folder {private}, removed at exit. Set {ENV} to a writable folder to keep them.",
                  RuntimeWarning, stacklevel=3)
    return private


def forget() -> None:
    """Check the configured folder again on the next write (after ``attngen cache clear``
    removed it, or in tests that change permissions)."""
    _checked.clear()
    _fallbacks.clear()


__all__ = ["CacheUnavailable", "ENV", "configured_root", "forget", "writable_root"]
