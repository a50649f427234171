"""The built-in variant library: the textual IR files under ir/ (``attngen list``)."""
from __future__ import annotations

from pathlib import Path

from ._resources import library_dir
from .ir.nodes import Variant
from .ir.text import load


def builtin_names() -> list[str]:
    return sorted(p.stem for p in library_dir().glob("*.ir"))


def builtin_path(name: str) -> Path:
    path = library_dir() / f"{name}.ir"
    if not path.is_file():
        known = ", ".join(builtin_names())
        raise ValueError(f"no built-in variant named '{name}' (built-ins: {known})")
    return path


def builtin(name: str) -> Variant:
    """Load a built-in variant by name, e.g. ``builtin("alibi")``."""
    return load(builtin_path(name))


def describe(name: str) -> str:
    """The first comment line of a built-in's IR file."""
    for line in builtin_path(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
