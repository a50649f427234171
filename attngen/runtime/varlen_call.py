"""A varlen call's entry: validate the arguments, then launch eagerly (``VarlenFunction``,
runtime/varlen.py) or, under graphs, through the custom op (runtime/varlen_ops.py)."""
from __future__ import annotations

import torch

from . import varlen_ops  # noqa: F401 - defines attngen::varlen_attention
from .attention import AttentionCall
from .validate import in_graph
from .config import KernelConfig
from .ops import encode_config
from .validate import Problem, check_call_options, check_qkv, check_runtime_tensors, check_scale
from .varlen import VarlenCall, VarlenFunction, VarlenKernel, packed_view, varlen_forward
from .varlen_checks import check_cu_seqlens, check_document_ids, check_max_seqlen, check_packed


def _user_tensors(kernel: VarlenKernel, tensors: dict[str, object], captured: dict[str, torch.Tensor],
                  p: Problem, batch: int, max_q: int, max_k: int) -> list[torch.Tensor]:
    """The call's tensors (keyword and captured) in ``kernel.user_names``' order, checked by
    check_runtime_tensors under the names the caller uses, except a renamed ``document_ids``
    (passes/varlen.py), whose varlen shape (B, >= max_seqlen) check_document_ids checks."""
    renamed = kernel.renamed  # user name -> packed name
    params = tuple(prm for prm in kernel._params if prm.name in kernel.user_names)  # the offsets: check_cu_seqlens
    plain = tuple(prm for prm in params if prm.name not in renamed.values())
    given = {n: t for n, t in tensors.items() if n not in renamed}
    for user, packed in renamed.items():
        if user not in tensors:
            raise TypeError(f"variant '{kernel.variant.label}' needs runtime tensor(s) {user} "
                            f"(pass them by keyword, e.g. {user}=...)")
        check_document_ids(tensors[user], batch, max_q, max_k)
    bound = check_runtime_tensors(plain, given, captured, p, kernel.variant.label)
    bound.update({packed: tensors[user] for user, packed in renamed.items()})
    return [bound[n] for n in kernel.user_names]


def run(kernel: VarlenKernel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
        cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, scale: float | None = None,
        return_lse: bool = False, check: bool = True, config: KernelConfig | None = None,
        deterministic: bool | None = None, captured: dict[str, torch.Tensor] | None = None,
        **tensors: torch.Tensor):
    """A varlen call (``ag.varlen_attention``'s arguments after the kernel). ``captured``: the
    captured tensors to read (default the kernel's): variants that differ only in the tensors
    they capture share one kernel, and each call reads its own variant's."""
    check_packed(q, k, v)
    batch = check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, q.device)
    max_q = check_max_seqlen(max_seqlen_q, "max_seqlen_q")
    max_k = check_max_seqlen(max_seqlen_k, "max_seqlen_k")
    if not isinstance(check, bool):
        raise TypeError(f"check must be a bool, got {check!r}")
    deterministic = check_call_options(return_lse, config, deterministic, kernel.ir.algorithm, kernel.variant.label,
                                       KernelConfig)
    # shapes, dtypes, heads and head dims through the packed views (one token stands in for an
    # empty side: check_qkv refuses empty tensors, a varlen batch may have no tokens)
    views = [packed_view(x if x.shape[0] else x.new_zeros((1, *x.shape[1:]))) for x in (q, k, v)]
    p = check_qkv(*views)
    check_scale(scale, p.D)
    user = _user_tensors(kernel, tensors, kernel.captured_tensors() if captured is None else captured, p, batch,
                         max_q, max_k)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *user))
    if needs_grad and not kernel._has_backward:
        raise NotImplementedError(f"variant '{kernel.variant.label}': no backward kernel could be generated for its "
                                  "score_mod's derivative; run under torch.no_grad() or detach the inputs")
    attention = AttentionCall(scale, None, config, needs_grad or return_lse, return_lse, deterministic)
    call = VarlenCall(attention, check, max_q, max_k)
    if in_graph(q, k, v):

        out, lse = torch.ops.attngen.varlen_attention(
            kernel.key, q, k, v, cu_seqlens_q, cu_seqlens_k, user, scale, encode_config(config),
            attention.store_lse, return_lse, deterministic, check, max_q, max_k)
    elif needs_grad:
        out, lse = VarlenFunction.apply(kernel, call, q, k, v, cu_seqlens_q, cu_seqlens_k, *user)
    else:
        out, lse = varlen_forward(kernel, call, q, k, v, cu_seqlens_q, cu_seqlens_k, user)
    return (out, lse) if return_lse else out


__all__ = ["run"]
