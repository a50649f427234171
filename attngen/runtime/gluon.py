"""The Gluon kernels (Hopper, sm90): where they can run, their default configs, and their modules.

A ``KernelConfig(dialect="gluon")`` launches the module that attngen/codegen/render_gluon.py
renders from the same KernelIR as the ``tl`` module. It needs three things the ``tl`` kernels
do not: an sm90 GPU (Gluon has no interpreter and its wgmma/TMA code is Hopper's), a Triton
with Gluon, and inputs that TMA can read (fp16/bf16, head dims that are multiples of 16 up to
256, a contiguous last dimension, 16-byte aligned bases and strides). Each check returns the
reason it fails, so that a forced call (``dialect="gluon"``) raises it and an automatic
selection falls back to ``tl`` instead. The backward follows a Gluon forward where
``gluon_backward_reason`` allows it (the ``tl`` backward runs otherwise).
"""
from __future__ import annotations

import functools
import types

import torch

from ..codegen.render_gluon import gluon_unsupported, render_gluon, render_gluon_backward
from ..ir.kernel import KernelIR
from .cache import entry_dir
from .config import KernelConfig
from .loader import interpreter_active, load_module
from .validate import in_graph

GLUON_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _triton_reason() -> str | None:
    try:
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia import hopper  # noqa: F401
    except ImportError:
        return "this Triton has no Gluon (triton.experimental.gluon, Triton 3.6 or later)"
    if not hasattr(gl, "warp_specialize"):
        return "this Triton's Gluon has no warp_specialize (Triton 3.6 or later)"
    return None


@functools.lru_cache(maxsize=None)
def device_reason(device: torch.device) -> str | None:
    """Why this process cannot run Gluon kernels on ``device``, or None."""
    if device.type != "cuda":
        return f"Gluon kernels run on CUDA GPUs only (tensors are on {device.type}; Gluon has no interpreter)"
    if interpreter_active():
        return "Gluon kernels cannot run under the Triton interpreter (TRITON_INTERPRET=1)"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return f"the Gluon forward is written for sm90 (H100/H200); this GPU is sm{major}{minor}"
    return _triton_reason()


def shape_reason(dtype: torch.dtype, d: int, dv: int) -> str | None:
    """Why the Gluon forward cannot take this dtype and these head dims (wgmma's and TMA's
    rules), or None."""
    if dtype not in GLUON_DTYPES:
        return f"q must be float16 or bfloat16 for the Gluon forward, got {dtype}"
    for name, dim in (("D", d), ("Dv", dv)):
        if dim % 16 or not 16 <= dim <= 256:
            return f"the Gluon forward needs head dims that are multiples of 16 up to 256, got {name}={dim}"
    return None


def _input_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None) -> str | None:
    reason = shape_reason(q.dtype, q.shape[3], v.shape[3])
    if reason is not None:
        return reason
    traced = in_graph(q, k, v)  # fake tensors have no address: the op's run checks it
    for name, t in (("q", q), ("k", k), ("v", v)):
        # TMA: a contiguous last dimension, the base and every other stride 16-byte aligned
        if t.stride(3) != 1:
            return f"{name} needs a contiguous last dimension for the Gluon forward (TMA), got stride {t.stride(3)}"
        if (not traced and t.data_ptr() % 16) or any((s * t.element_size()) % 16 for s in t.stride()[:3]):
            return (f"{name} needs a 16-byte aligned base and strides for the Gluon forward (TMA), "
                    f"got strides {tuple(t.stride())}")
    if out is not None and out.stride(3) != 1:
        return f"out needs a contiguous last dimension for the Gluon forward, got stride {out.stride(3)}"
    return None


def gluon_reason(plan_reason: str | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 out: torch.Tensor | None = None) -> str | None:
    """Why this call cannot run the Gluon forward, or None when it can. ``plan_reason``: the
    variant's ``gluon_unsupported`` (computed once per variant: it walks the IR)."""
    return plan_reason or device_reason(q.device) or _input_reason(q, k, v, out)


def gluon_possible(ir: KernelIR, device: torch.device) -> bool:
    """Whether calls of ``ir`` on ``device`` can take the Gluon forward (inputs aside)."""
    return gluon_unsupported(ir) is None and device_reason(torch.device(device)) is None


def default_gluon_config(d: int, dv: int) -> KernelConfig:
    """128 x 128 tiles with a two-slot K/V ring (D <= 128); wider heads take 64-key tiles, which
    keep the ring in shared memory and the accumulators in registers."""
    return KernelConfig(128, 64 if max(d, dv) > 128 else 128, 4, 2, dialect="gluon")


def load_gluon_module(ir: KernelIR, key: str) -> types.ModuleType:
    """The Gluon module of the kernel with cache key ``key``, rendered from its IR (a few
    milliseconds; nothing is written to disk: the loader serves the text to Triton)."""
    source = render_gluon(ir)
    return load_module(entry_dir(key) / "gluon_fwd.py", f"{ir.name}_{key[:16]}_gluon", source=source)


# -- The Gluon backward (templates/attention_bwd_gluon.py.j2): a call whose forward ran in the
# Gluon dialect takes it where it can (gluon_backward_reason), the tl backward elsewhere.


def default_gluon_backward_config(d: int, dv: int) -> tuple[KernelConfig, KernelConfig]:
    """The (dK/dV, dQ) configs of the Gluon backward's launcher: 128 keys a dK/dV program walking
    64-query tiles through a two-slot ring, 128 queries a dQ program walking 64-key tiles
    (the sizes its compile check holds spill-free at D <= 128)."""
    return KernelConfig(64, 128, 4, 2), KernelConfig(128, 64, 4, 2)


def gluon_backward_reason(plan_reason: str | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why this call's backward cannot run in Gluon (before the module is rendered), or None.
    ``plan_reason``: the variant's ``gluon_backward_unsupported``. Gradients of tensors the
    score reads are the caller's check: they need the tl backward's atomics."""
    reason = plan_reason or device_reason(q.device) or _input_reason(q, k, v, None)
    if reason is not None:
        return reason
    if max(q.shape[3], v.shape[3]) > 128:
        return f"the Gluon backward keeps dK and dV in registers: head dims up to 128, got D={q.shape[3]}, Dv={v.shape[3]}"
    return None


def load_gluon_backward_module(ir: KernelIR, key: str) -> types.ModuleType:
    """The Gluon backward module of the kernel with cache key ``key`` (its launcher:
    ``launch_backward_gluon``), rendered like the forward's."""
    source = render_gluon_backward(ir)
    return load_module(entry_dir(key) / "gluon_bwd.py", f"{ir.name}_{key[:16]}_gluon_bwd", source=source)
