"""``ag.compile``: lower a Variant, look its kernel up in the disk cache, load it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import triton

from . import __version__
from .codegen.render import render, template_sources
from .ir.kernel import KernelIR
from .ir.nodes import Variant
from .passes import lower
from .passes.normalization import CHUNKED_LINEAR
from .runtime import lowering_cache
from .runtime.attention import CompiledAttention
from .runtime.cache import cache_key, get_or_build
from .runtime.linear import CompiledLinearAttention

_TEMPLATES: str | None = None


def target() -> str:
    """What the kernels are built for; part of the cache key."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"cuda-sm{major}{minor}"
    return "interpreter"


def kernel_key(ir_text: str) -> str:
    global _TEMPLATES
    if _TEMPLATES is None:
        _TEMPLATES = template_sources()
    return cache_key(ir_text, _TEMPLATES, __version__, triton.__version__, target())


def compile(variant: Variant, *, after_each_pass: Callable[[str, KernelIR], None] | None = None,
            rebuild: bool = False
            ) -> CompiledAttention | CompiledLinearAttention:  # noqa: A001 - the public name is ag.compile
    """Compile ``variant`` to its attention kernels (cached on disk; no GPU needed).

    ``after_each_pass(name, ir)`` observes the IR after every pass (``--print-after-all``);
    ``rebuild=True`` regenerates the module even when the cache has it.
    """
    if not isinstance(variant, Variant):
        raise TypeError(f"compile: expected an ag.Variant, got {type(variant).__name__}")
    if after_each_pass is not None and not callable(after_each_pass):
        raise TypeError(f"compile: after_each_pass must be a function (name, ir) or None, got "
                        f"{type(after_each_pass).__name__}")
    if not isinstance(rebuild, bool):
        raise TypeError(f"compile: rebuild must be a bool, got {rebuild!r}")
    ir, ir_text = _lowered(variant, after_each_pass, rebuild)
    key = kernel_key(ir_text)
    entry = get_or_build(key, lambda: (render(ir), ir_text), force=rebuild)
    return _compiled_class(ir)(variant, ir, entry.module_path, key, from_cache=not entry.built)


def _lowered(variant: Variant, after_each_pass: Callable[[str, KernelIR], None] | None,
             rebuild: bool) -> tuple[KernelIR, str]:
    """The variant's final IR and its text: from the lowering cache when a process lowered
    it before (skipping networkx and sympy), else from the passes (then stored)."""
    watching = after_each_pass is not None  # the caller wants to see every pass run
    found = None if watching or rebuild else lowering_cache.load(variant)
    if found is not None:
        return found
    ir = lower(variant, after_each_pass)
    text = ir.to_text()
    lowering_cache.store(variant, ir, text)
    return ir, text


def _compiled_class(ir: KernelIR) -> type:
    """Linear attention has its own callable (no scale, no lse, a decay gradient)."""
    return CompiledLinearAttention if ir.algorithm == CHUNKED_LINEAR else CompiledAttention


def load_compiled(module_path: str | Path, variant: Variant) -> CompiledAttention | CompiledLinearAttention:
    """Use an already generated module file (as ``attngen compile -o DIR`` writes) for ``variant``.

    The module's embedded IR must match what ``variant`` lowers to, so a stale file is
    refused instead of silently computing something else.
    """
    module_path = Path(module_path)
    ir = lower(variant)
    expected = render(ir)
    try:
        found = module_path.read_text()
    except OSError as exc:
        raise FileNotFoundError(f"load_compiled: cannot read '{module_path}': {exc.strerror}") from None
    if found != expected:
        raise ValueError(f"load_compiled: '{module_path}' was not generated from this variant by this "
                         f"attngen version ({__version__}); regenerate it with `attngen compile`")
    return _compiled_class(ir)(variant, ir, module_path, kernel_key(ir.to_text()), from_cache=True)
