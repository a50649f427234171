"""Launch a cached kernel in a new process without recomputing Triton's cache key.

When a ``@triton.jit`` function meets a new specialization, Triton builds its disk-cache key
from ``triton_key()`` (a sha256 over libtriton and Triton's Python sources, about 0.5 s once
per process on the H100 machine) and the function's source hash (an AST walk over it and
every function it calls). Only then does it find the binary it compiled last time. That
start-up cost was most of a second process's first call (benchmarks/bench_compile.py).

attngen knows more than Triton here: a generated module's cache entry is keyed by its source,
the templates, the attngen and Triton versions and the GPU. So each entry keeps an index,
``binaries.json``, from a launch specialization (argument types, alignments, constexprs and
options, exactly the key Triton's JIT uses in memory) to the hash of the binary Triton
compiled for it. A later process rebuilds the ``CompiledKernel`` from Triton's cache folder by
that hash, as Triton itself does on a cache hit, and puts it into the function's in-memory
cache; the first launch then costs what any later one does.

Anything unexpected (another Triton version without these internals, a binary missing from
Triton's cache, compile hooks installed by a profiler) leaves the JIT to do what it always
does, so the index can only save time, never change what runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import types
from pathlib import Path
from typing import Any

from filelock import FileLock

from .cache import atomic_write

INDEX = "binaries.json"
LOG = logging.getLogger(__name__)
_ATTACHED = "__attngen_binaries__"  # marks a module whose kernels are already wrapped


def attach(module: types.ModuleType, entry_dir: Path) -> None:
    """Wrap every Triton JIT function of ``module`` so that its binaries are recorded in,
    and reloaded from, ``entry_dir/binaries.json``. Idempotent."""
    if getattr(module, _ATTACHED, False):
        return
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:  # a Triton without this layout: nothing to wrap
        return
    index = _Index(Path(entry_dir) / INDEX)
    for value in list(vars(module).values()):
        if isinstance(value, JITFunction) and _has_jit_internals(value):
            value._do_compile = _recording_compile(value, value._do_compile, index)
    setattr(module, _ATTACHED, True)


def _has_jit_internals(fn: Any) -> bool:
    # (``fn.ASTSource`` appears only once the function's first launch has built its binder)
    return all(hasattr(fn, name) for name in ("_do_compile", "device_caches"))


class _Index:
    """The entry's ``binaries.json``, read once per process, merged on every write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, dict[str, str]] | None = None

    def get(self, key: str) -> dict[str, str] | None:
        if self._records is None:
            self._records = self._read()
        return self._records.get(key)

    def put(self, key: str, record: dict[str, str]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock"):
                records = self._read()  # another process may have added records meanwhile
                records[key] = record
                atomic_write(self.path, json.dumps(records, indent=0, sort_keys=True))
            self._records = records
        except OSError:  # a read-only cache only costs the next process its start-up time
            pass

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            records = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return records if isinstance(records, dict) else {}


def _record_key(fn: Any, jit_key: str, device: int) -> str:
    """The function, Triton's in-memory specialization key, the device's target (a machine
    may mix GPU generations) and the environment variables that Triton's own disk key
    includes (TRITON_* settings that change code generation)."""
    from triton._C.libtriton import get_cache_invalidating_env_vars

    target = fn.device_caches[device][2]
    env = sorted(get_cache_invalidating_env_vars().items())
    return hashlib.sha256(f"{fn.__name__}\n{jit_key}\n{target}\n{env}".encode()).hexdigest()


def _hooks_installed() -> bool:
    """Profilers and Inductor observe compiles through these knobs; leave them to the JIT."""
    from triton import knobs

    return (knobs.runtime.jit_cache_hook is not None or knobs.runtime.jit_post_compile_hook is not None
            or bool(knobs.compilation.always_compile))


def _recording_compile(fn: Any, do_compile: Any, index: _Index) -> Any:
    """``JITFunction._do_compile`` with the index in front of it."""

    def compile_or_reload(key, signature, device, constexprs, options, attrs, warmup):
        if _hooks_installed():
            return do_compile(key, signature, device, constexprs, options, attrs, warmup)
        record_key = _record_key(fn, str(key), device)
        record = index.get(record_key)
        kernel = _reload(fn, record, signature, constexprs, attrs)
        LOG.debug("%s: %s (record %s, specialization %s)", fn.__name__,
                  "reloaded" if kernel is not None else "compiling", record_key[:12] if record else None, key)
        if kernel is not None:
            fn.device_caches[device][0][key] = kernel  # Triton's in-memory kernel cache
            return kernel
        kernel = do_compile(key, signature, device, constexprs, options, attrs, warmup)
        if kernel is not None and hasattr(kernel, "hash") and hasattr(kernel, "name"):  # not an async future
            index.put(record_key, {"hash": kernel.hash, "name": kernel.name})
        return kernel

    return compile_or_reload


def _reload(fn: Any, record: dict[str, str] | None, signature, constexprs, attrs) -> Any:
    """The ``CompiledKernel`` Triton compiled for ``record``, from Triton's cache; None when
    Triton's cache no longer has it."""
    if not record:
        return None
    try:
        from triton.compiler.compiler import ASTSource, CompiledKernel
        from triton.runtime.cache import get_cache_manager

        group = get_cache_manager(record["hash"]).get_group(f"{record['name']}.json")
        if not group:
            LOG.debug("binary %s is no longer in Triton's cache", record["hash"][:12])
            return None
        source = getattr(fn, "ASTSource", ASTSource)(fn, signature, constexprs, attrs)
        return CompiledKernel(source, group, record["hash"])
    except Exception as exc:  # noqa: BLE001 - any failure means: compile as Triton would
        LOG.debug("cannot reload binary %s: %s: %s", record.get("hash"), type(exc).__name__, exc)
        return None


__all__ = ["attach", "INDEX"]
