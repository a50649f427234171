"""The lowered IR of each variant, kept on disk so that a new process skips the passes.

Lowering is pure (Variant -> KernelIR), so its result is a function of the variant's
canonical text and of the compiler's own code. A new process would otherwise import
networkx for the pass order and run sympy over every expression before it could even look
the kernel up: 0.18 s here with bytecode caches, about 1 s on the H100 machine, where
Python writes no bytecode (benchmarks/bench_compile.py).

Entries live under ``<cache root>/lowered/`` as pickles keyed by a sha256 over the variant
text, the attngen version and a fingerprint of attngen's sources (so an edited pass never
reads a stale IR). The IR's traced mask and score functions are stored without the user's
Python function and captured tensors: the runtime reads those from the variant of the
current call, never from the IR. A file that does not unpickle to the expected key is
ignored and overwritten; writes are atomic, so a crash leaves either nothing or a whole file.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import pickle
from pathlib import Path

from sympy.core.parameters import evaluate

from .._version import __version__
from ..ir.kernel import KernelIR
from ..ir.nodes import Variant
from ..ir.nodes import _TracedFunction
from .cache import atomic_write, cache_key, cache_root

PACKAGE = Path(__file__).resolve().parents[1]
_BY_REFERENCE = ("fn", "captures")  # fields of a traced function that point into the user's process


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """sha256 over attngen's Python sources (about 3 ms, once per process)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _path(variant_text: str) -> tuple[str, Path]:
    key = cache_key("lowered", variant_text, __version__, compiler_fingerprint())
    return key, cache_root() / "lowered" / key[:2] / f"{key}.pickle"


def load(variant: Variant) -> tuple[KernelIR, str] | None:
    """The lowered IR stored for ``variant`` and its text (the kernel cache key's core; kept
    because printing some conditions imports more of sympy, 0.1-0.2 s), or None."""
    key, path = _path(variant.to_text())
    try:
        with evaluate(False):  # stored expressions are canonical already; evaluating would import more of sympy
            stored_key, ir, text = pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 - missing, truncated or from another version: lower again
        return None
    if stored_key != key or not isinstance(ir, KernelIR) or not isinstance(text, str):
        return None
    return ir, text


def store(variant: Variant, ir: KernelIR, text: str) -> None:
    """Keep ``ir`` (whose text is ``text``) as the lowering of ``variant`` (best effort: a
    read-only cache only costs time)."""
    key, path = _path(variant.to_text())
    buffer = io.BytesIO()
    try:
        _Pickler(buffer).dump((key, ir, text))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass


class _Pickler(pickle.Pickler):
    """Pickles traced functions without their by-reference fields."""

    def reducer_override(self, obj):
        if isinstance(obj, _TracedFunction) and dataclasses.is_dataclass(obj):
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                      if f.init and f.name not in _BY_REFERENCE}
            return _rebuild_traced, (type(obj), fields)
        return NotImplemented


def _rebuild_traced(cls: type, fields: dict) -> _TracedFunction:
    return cls(**fields)


__all__ = ["load", "store", "compiler_fingerprint"]
