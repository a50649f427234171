"""``ag.varlen_attention``: variable-length batches in FlashAttention's varlen convention.

    out = ag.varlen_attention(attn, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                              scale=None, return_lse=False, check=True, **tensors)

``attn`` is a compiled softmax or sigmoid variant (``ag.compile(variant)``) or the Variant
itself. The first call compiles its packed variant (passes/varlen.py: "same sequence" and the
variant's mask at each sequence's coordinates) once per process and caches it; later calls
(and graphs, where the lookup is a constant) reuse it. docs/varlen.md has the semantics.
"""
from __future__ import annotations

import torch

from .compiler import compile as compile_variant
from .ir.nodes import Variant
from .passes.varlen import varlen_variant
from .runtime import ops
from .runtime.attention import CompiledAttention
from .runtime.config import KernelConfig
from .runtime.linear import CompiledLinearAttention
from .runtime.varlen import VarlenKernel
from .runtime.varlen_call import run

_KERNELS: dict[str, VarlenKernel] = {}  # by the key of the kernel a call names


def varlen_kernel(attn: CompiledAttention | Variant) -> VarlenKernel:
    """The compiled packed variant of ``attn`` (compiled on first use, then cached)."""
    if isinstance(attn, Variant):
        attn = compile_variant(attn)
    if isinstance(attn, CompiledLinearAttention):
        varlen_variant(attn.variant)  # raises its UnsupportedVariant, which says what to use instead
    if not isinstance(attn, CompiledAttention):
        raise TypeError(f"varlen_attention: attn must be what ag.compile returns (or an ag.Variant), "
                        f"got {type(attn).__name__}")
    if isinstance(attn, VarlenKernel):
        return attn
    found = _KERNELS.get(attn.key)
    if found is None:
        rewrite = varlen_variant(attn.variant)
        found = VarlenKernel(compile_variant(rewrite.variant), rewrite)
        _KERNELS[attn.key] = found
    return found


@torch._dynamo.assume_constant_result
def _varlen_key(key: str) -> str:
    """The packed kernel's key for the kernel registered under ``key`` (a constant for Dynamo,
    so that compiling happens outside the graph)."""
    return varlen_kernel(ops.kernel_for(key)).key


def varlen_attention(attn: CompiledAttention | Variant, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                     scale: float | None = None, return_lse: bool = False, check: bool = True,
                     config: KernelConfig | None = None, deterministic: bool | None = None,
                     **tensors: torch.Tensor):
    """Attention over B packed sequences of different lengths.

    q (total_q, Hq, D), k (total_k, Hkv, D), v (total_k, Hkv, Dv), any strides;
    ``cu_seqlens_q`` / ``cu_seqlens_k`` (B + 1,) int32: sequence b is q[cu_seqlens_q[b]:
    cu_seqlens_q[b + 1]] against k, v[cu_seqlens_k[b]:cu_seqlens_k[b + 1]]; ``max_seqlen_*``
    bound the lengths. In a score_mod or mask_mod, ``b`` is the sequence and ``q_idx`` /
    ``kv_idx`` positions inside it. Returns out (total_q, Hq, Dv) in q's dtype, and with
    ``return_lse=True`` also the log-sum-exp (Hq, total_q) float32.

    ``check``: read cu_seqlens back (one host sync) to check that they start at 0, do not
    decrease, end at the token counts and respect max_seqlen; pass False inside CUDA graph
    captures. ``scale``, ``config``, ``deterministic`` and the variant's tensors (by keyword)
    as for ``attn(q, k, v)``; ``document_ids`` of ``ag.document()`` is (B, >= max_seqlen),
    indexed [sequence, position].
    """
    if isinstance(attn, CompiledAttention) and not isinstance(attn, VarlenKernel):
        kernel = ops.kernel_for(_varlen_key(attn.key))
        captured = attn.captured_tensors()  # this variant's (the kernel may serve an equal one capturing others)
    else:
        kernel = varlen_kernel(attn)
        captured = attn.captured() if isinstance(attn, Variant) else None
    return run(kernel, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=scale,
               return_lse=return_lse, check=check, config=config, deterministic=deterministic, captured=captured,
               **tensors)


__all__ = ["varlen_attention", "varlen_kernel"]
