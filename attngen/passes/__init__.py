"""Compiler passes: each module holds one pure ``KernelIR -> KernelIR`` rewrite.

Importing this package registers them; ``lower(variant)`` runs them in dependency order.
"""
from __future__ import annotations

from typing import Callable

from ..ir.kernel import KernelIR
from ..ir.nodes import Variant
from . import cse, exp2, geometry, normalization, score_mask, simplify, tiles  # noqa: F401 - registration
from .errors import UnsupportedVariant
from .pipeline import REGISTRY, pass_order, run_passes


def lower(variant: Variant, after_each: Callable[[str, KernelIR], None] | None = None) -> KernelIR:
    """Lower a Variant to the final KernelIR that code generation renders."""
    return run_passes(KernelIR.from_variant(variant), after_each)


__all__ = ["lower", "pass_order", "REGISTRY", "UnsupportedVariant"]
