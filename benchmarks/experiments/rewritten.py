"""Experiments that time a hand-edited variant of a generated module: load the edited source
as a module and make a compiled variant launch it (forward and backward alike)."""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

_FOLDER = Path(tempfile.mkdtemp(prefix="attngen-rewritten-"))


def load_source(source: str, name: str) -> ModuleType:
    """``source`` imported as module ``name`` (written to a temporary folder)."""
    path = _FOLDER / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def replace_once(source: str, old: str, new: str) -> str:
    """``source`` with its one occurrence of ``old`` replaced; stops the experiment when the
    generated code no longer has exactly one."""
    assert source.count(old) == 1, f"generated source changed: update the experiment ({old[:60]!r})"
    return source.replace(old, new)


def use_rewritten(attn, edit: Callable[[str], str]) -> None:
    """Make ``attn`` (a CompiledAttention) launch ``edit(attn.source)`` instead of its module."""
    attn._module = load_source(edit(attn.source), f"{attn.ir.name}_rewritten")
