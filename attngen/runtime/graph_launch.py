"""Which custom op a graph call takes: the opaque ``attngen::attention`` (runtime/ops.py), or
``attngen::attention_kernels``, whose kernels Inductor launches itself (runtime/inductor_ops.py).

The second op's body is traced from shapes alone, so a call takes it only when everything its
launch needs is known at trace time; ``kernel_launch_reason`` says why not otherwise:

- a CUDA device and the ``tl`` forward (Inductor launches ``triton.jit`` kernels; the Gluon
  kernels and the interpreter's are not those);
- a dense, band or neighborhood plan (tile lists are computed from runtime tensors at run
  time, so those calls keep the opaque op);
- static shapes (the config and the tile plan are chosen from the sizes), no ``out=``, not
  under ``torch.export`` (an exported program keeps the serializable opaque op);
- gradients only for runtime tensors whose gradients the kernels accumulate, and not
  ``deterministic``.

``ATTNGEN_GRAPH_LAUNCH`` chooses: "op" (the default: every graph call takes the opaque op)
or "inductor" (the Inductor-launched op wherever a call can). The Inductor launch becomes the
default once the GPU suite has run it (tests/test_inductor_launch.py); until then it is opt-in.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ..ir.kernel import BAND, DENSE, NEIGHBORHOOD
from .config import KernelConfig
from .loader import interpreter_active

GRAPH_LAUNCHES = ("op", "inductor")


def graph_launch() -> str:
    """``ATTNGEN_GRAPH_LAUNCH`` ("op" when unset); ValueError naming the variable otherwise."""
    value = os.environ.get("ATTNGEN_GRAPH_LAUNCH", "").strip().lower() or "op"
    if value not in GRAPH_LAUNCHES:
        raise ValueError(f"ATTNGEN_GRAPH_LAUNCH must be one of {GRAPH_LAUNCHES} or unset, got {value!r}")
    return value


def _static(*tensors: Tensor) -> bool:
    return all(isinstance(s, int) for t in tensors for s in t.shape)


def launch_config(attn, call, p, axes) -> KernelConfig:
    """The forward's config: the caller's, else the one its problem class launches with."""
    return call.config if call.config is not None else attn._fitted_config(p, axes)[0]


def kernel_launch_reason(attn, call, q: Tensor, k: Tensor, v: Tensor, bound: dict[str, Tensor],
                         out: Optional[Tensor]) -> Optional[str]:
    """Why this graph call keeps the opaque op (None: Inductor can launch its kernels)."""
    if graph_launch() != "inductor":
        return "ATTNGEN_GRAPH_LAUNCH is not 'inductor'"
    if torch.compiler.is_exporting():
        return "torch.export keeps the opaque op"
    if q.device.type != "cuda" or interpreter_active():
        return "Inductor launches Triton kernels on CUDA devices only"
    if out is not None:
        return "out= writes into the caller's tensor"
    if attn.ir.strategy not in (DENSE, BAND, NEIGHBORHOOD):
        return "tile lists are computed from runtime tensors at run time"
    if call.deterministic:
        return "deterministic gradients of score tensors are computed in torch"
    if not _static(q, k, v):
        return "dynamic shapes: the config and the tile plan are chosen from the sizes"
    p, _, axes = attn._problem(call, q, k, v)
    if launch_config(attn, call, p, axes).dialect != "tl":
        return "the Gluon forward is not a triton.jit kernel"
    if torch.is_grad_enabled():
        accumulated = set(attn.module(q.device).GRAD_TENSORS)
        missing = [n for n, t in bound.items() if t.requires_grad and n not in accumulated]
        if missing:
            return f"the gradients of {missing} are computed in torch"
    return None
