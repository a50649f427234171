"""Locate the data folders shipped with attngen (templates/, ir/, autotune/).

Installed wheels carry them as the packages ``attngen.templates`` and ``attngen.ir_library``;
a source checkout has them beside the package. Both are supported so that the project
runs from a clone with PYTHONPATH alone (as on the GPU machine).
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def _find(package: str, checkout_dir: str) -> Path:
    local = _ROOT / checkout_dir
    if local.is_dir() and (local / "__init__.py").exists():
        return local
    try:
        return Path(str(importlib.resources.files(package)))
    except (ModuleNotFoundError, TypeError):
        return local


def template_dir() -> Path:
    return _find("attngen.templates", "templates")


def library_dir() -> Path:
    return _find("attngen.ir_library", "ir")


def autotune_dir() -> Path:
    """Shipped tuning defaults (autotune/<gpu family>.json)."""
    return _find("attngen.autotune_records", "autotune")
