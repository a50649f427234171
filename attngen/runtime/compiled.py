"""What every compiled variant has: its IR, its generated module on disk, and the loaded
module. ``CompiledAttention`` (softmax and sigmoid) and ``CompiledLinearAttention`` build on
it."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from ..ir.kernel import KernelIR
from ..ir.nodes import Variant
from . import ops, triton_binaries
from .cache import entry_dir
from .loader import interpreter_active, load_module


_NO_SWITCH = contextlib.nullcontext()


def device_guard(device: torch.device):
    """Launch on ``device`` (Triton launches on the current CUDA device). Switching costs two
    driver calls, so a call on the current device (the usual case) skips it."""
    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return _NO_SWITCH
    return torch.cuda.device(device)


class CompiledKernel:
    """Attributes: ``variant`` (the input), ``ir`` (the kernel IR after all passes; ``str()``
    is its text), ``source`` (the generated Triton module), ``path`` (that module on disk),
    ``key`` (its cache key) and ``from_cache`` (True when nothing was generated)."""

    def __init__(self, variant: Variant, ir: KernelIR, module_path: Path, key: str, from_cache: bool) -> None:
        self.variant = variant
        self.ir = ir
        self.path = Path(module_path)
        self.key = key
        self.from_cache = from_cache
        self.source = self.path.read_text()
        self._module = None
        # the variant's tensors, resolved once: a call (and a graph tracer such as Dynamo,
        # which reads them as attributes) does not walk the IR again
        self._params = variant.tensors()
        self._names = tuple(p.name for p in self._params)
        self._captured = variant.captured()
        ops.register(self)

    def module(self, device: torch.device):
        """The generated module (CPU tensors need the process to run the Triton interpreter)."""
        if device.type == "cpu" and not interpreter_active():
            raise ValueError("q is on the CPU, which needs the Triton interpreter: set TRITON_INTERPRET=1 "
                             "before importing triton (attngen does so itself when no GPU is present)")
        if self._module is None:  # resolving the path on every call cost ~0.1 ms of host time
            module = load_module(self.path, f"{self.ir.name}_{self.key[:16]}", source=self.source)
            if not interpreter_active():
                triton_binaries.attach(module, entry_dir(self.key))
            self._module = module
        return self._module

    @staticmethod
    def poison(*buffers: torch.Tensor | None) -> None:
        """Debugging/testing aid (ATTNGEN_POISON_OUTPUTS=1): fill the outputs with NaN before
        the launch, so any element a kernel fails to write stays NaN."""
        if os.environ.get("ATTNGEN_POISON_OUTPUTS", "0") not in ("", "0"):
            for b in buffers:
                if b is not None:
                    b.fill_(float("nan"))
