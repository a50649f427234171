"""Import generated modules.

Triton chooses between compiling and interpreting (``TRITON_INTERPRET=1``) when its
language module and each ``@triton.jit`` function are first imported, so the mode is
process-wide: ``attngen/__init__`` switches the interpreter on when there is no GPU, and a
call with CPU tensors in a compiled-mode process gets a clear error instead of a crash.
"""
from __future__ import annotations

import importlib.util
import linecache
import os
import sys
import types
from pathlib import Path

_LOADED: dict[str, types.ModuleType] = {}


class KernelLoadError(RuntimeError):
    """A generated module could not be imported."""


def interpreter_active() -> bool:
    """Whether Triton kernels run under the interpreter in this process."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def load_module(path: Path, tag: str, source: str | None = None) -> types.ModuleType:
    """Import the module at ``path`` once per process.

    With ``source`` (the text the cache entry was verified to hold when it was compiled),
    the module is executed from that text, not from the file, and ``linecache`` serves that
    text to ``inspect.getsource`` (which ``triton.jit`` calls): a cache entry truncated,
    replaced or deleted by another process between ``ag.compile`` and the first call cannot
    make this process import half a module."""
    key = str(Path(path).resolve())
    if key in _LOADED:
        return _LOADED[key]
    name = f"attngen_kernels.{tag}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise KernelLoadError(f"cannot import generated module {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # triton.jit reads the kernel source through its module
    try:
        if source is None:
            spec.loader.exec_module(module)
        else:
            # an entry whose mtime is None is never checked against the file (linecache.checkcache)
            linecache.cache[str(path)] = (len(source), None, source.splitlines(keepends=True), str(path))
            exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)  # noqa: S102 - our own generated module
    except Exception as exc:
        sys.modules.pop(name, None)
        raise KernelLoadError(f"generated module {path} failed to import: {type(exc).__name__}: {exc}") from exc
    _LOADED[key] = module
    return module
