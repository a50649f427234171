"""Variable-length batches on a packed variant's kernels.

``VarlenKernel`` is the compiled packed variant (passes/varlen.py): a ``CompiledAttention``
over q (1, Hq, total_q, D) views of the packed tensors, whose tile plans come in closed form
from ``cu_seqlens`` (runtime/varlen_plan.py) instead of the generic classifier.
runtime/varlen_call.py validates a call and launches it: eagerly through ``VarlenFunction``
(autograd), under graphs through the custom ops of runtime/varlen_ops.py; both run
``varlen_forward`` / ``varlen_backward`` below.

Layouts: q (total_q, Hq, D), k (total_k, Hkv, D), v (total_k, Hkv, Dv), any strides; the
output is (total_q, Hq, Dv) contiguous in q's dtype, and the log-sum-exp (Hq, total_q)
float32, FlashAttention's varlen layouts. The kernels read the packed tensors in place
(``x.permute(1, 0, 2)[None]`` is a (1, H, total, D) view) and write the output through the
same kind of view.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..passes.varlen import CU_SEQLENS_K, CU_SEQLENS_Q, SEQ_IDS_Q, VarlenVariant
from .attention import AttentionCall, CompiledAttention
from .config import KernelConfig
from .validate import Problem
from .varlen_checks import check_cu_seqlens_values
from .varlen_plan import SequenceBands, VarlenTileLists, sequence_ids


def packed_view(x: torch.Tensor) -> torch.Tensor:
    """(total, H, D) -> (1, H, total, D), a view."""
    return x.permute(1, 0, 2).unsqueeze(0)


class _Batch:
    """What a batch's offsets decide, derived once: the sequence of each query token, which
    (max_seqlen_q, max_seqlen_k) the offsets were checked against, and the tile plans by
    (block_m, block_n, heads)."""

    def __init__(self, cu_q: torch.Tensor, total_q: int) -> None:
        self.seq_q = sequence_ids(cu_q, total_q)
        self.checked: set[tuple[int, int]] = set()
        self.plans: dict[tuple[int, int, int], VarlenTileLists] = {}


class _Batches:
    """A small LRU of ``_Batch`` records, valid while the offsets tensors are the same objects
    at the same version (an in-place update starts a new record). Nothing is kept while a CUDA
    graph is captured: a replay must derive everything from the tensors' new values."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, tuple[tuple, _Batch]] = OrderedDict()

    def get(self, cu_q: torch.Tensor, cu_k: torch.Tensor, total_q: int, total_k: int) -> _Batch:
        if cu_q.is_cuda and torch.cuda.is_current_stream_capturing():
            return _Batch(cu_q, total_q)
        key = (id(cu_q), cu_q._version, cu_q.data_ptr(), id(cu_k), cu_k._version, cu_k.data_ptr(), total_q, total_k)
        hit = self._entries.get(key)
        if hit is not None and hit[0][0]() is cu_q and hit[0][1]() is cu_k:
            self._entries.move_to_end(key)
            return hit[1]
        batch = _Batch(cu_q, total_q)
        self._entries[key] = ((weakref.ref(cu_q), weakref.ref(cu_k)), batch)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return batch


class VarlenKernel(CompiledAttention):
    """A compiled packed variant (see the module's docstring). ``source``, ``ir`` etc. are the
    packed variant's; ``user_names`` are the tensors a call passes besides the offsets (the
    variant's runtime and captured tensors, under their packed names)."""

    def __init__(self, base: CompiledAttention, rewrite: VarlenVariant) -> None:
        super().__init__(base.variant, base.ir, base.path, base.key, base.from_cache)
        self.rewrite = rewrite
        self.renamed = dict(rewrite.renamed)  # user name -> packed name
        internal = {CU_SEQLENS_Q, CU_SEQLENS_K, SEQ_IDS_Q}
        self.user_names = tuple(n for n in self._names if n not in internal)
        self._per_head = "h" in (base.ir.tile_depends or ())  # the mask reads h: plans are (1, Hq, ...)
        self._batches = _Batches()

    def __repr__(self) -> str:
        return f"VarlenKernel({self.ir.name!r}, band={self.rewrite.band.text()}, exact={self.rewrite.exact})"

    def batch(self, cu_q: torch.Tensor, cu_k: torch.Tensor, total_q: int, total_k: int) -> _Batch:
        return self._batches.get(cu_q, cu_k, total_q, total_k)

    def check_offsets(self, batch: _Batch, cu_q: torch.Tensor, cu_k: torch.Tensor, total_q: int, total_k: int,
                      max_q: int, max_k: int) -> None:
        """runtime/varlen_checks.py's device check, once per batch: the layers of a model call
        with the same offsets tensors, and only the first call pays the host sync."""
        if (max_q, max_k) not in batch.checked:
            check_cu_seqlens_values(cu_q, cu_k, total_q, total_k, max_q, max_k)
            batch.checked.add((max_q, max_k))

    def bind_varlen(self, batch: _Batch, cu_q: torch.Tensor, cu_k: torch.Tensor,
                    user: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor the kernels read, by packed name, and the offsets the plans read (always,
        even those the packed variant does not: the kernels' launchers take what they read by name)."""
        bound = dict(zip(self.user_names, user))
        bound.update({CU_SEQLENS_Q: cu_q, CU_SEQLENS_K: cu_k, SEQ_IDS_Q: batch.seq_q})
        return bound

    def tile_lists(self, p: Problem, bound: dict[str, torch.Tensor], config: KernelConfig, axes=None,
                   cache: bool = True) -> VarlenTileLists:
        """The closed-form plan for this batch at ``config``'s tiles (kept with the batch). A
        call through ``attn(q, k, v, ...)`` on the packed views without the offsets (not what
        ag.varlen_attention does) gets the generic classifier, which evaluates the whole mask."""
        if CU_SEQLENS_Q not in bound:
            return super().tile_lists(p, bound, config, axes, cache)
        cu_q, cu_k = bound[CU_SEQLENS_Q], bound[CU_SEQLENS_K]
        batch = self.batch(cu_q, cu_k, p.Lq, p.Lkv)
        heads = p.HQ if self._per_head else 1
        plan = batch.plans.get((config.block_m, config.block_n, heads))
        if plan is None:
            bands = SequenceBands.build(self.rewrite.band, self.rewrite.exact, cu_q, cu_k, bound[SEQ_IDS_Q],
                                        p.Lq, p.Lkv)
            plan = batch.plans[(config.block_m, config.block_n, heads)] = bands.row_plan(
                config.block_m, config.block_n, heads)
        return plan


@dataclass(frozen=True)
class VarlenCall:
    """A call's settings besides its tensors. ``attention``: the packed kernel's
    AttentionCall; ``check``: read cu_seqlens back to check them (one sync)."""

    attention: AttentionCall
    check: bool
    max_seqlen_q: int
    max_seqlen_k: int


def _like(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``result`` in ``torch.empty_like(like)``'s layout (what the ops' fake implementations
    promise graphs); a copy only for inputs that are not dense."""
    if result.stride() == like.stride():  # a dense input: empty_like keeps its strides
        return result
    target = torch.empty_like(like)
    return result if target.stride() == result.stride() else target.copy_(result)


def varlen_forward(kernel: VarlenKernel, call: VarlenCall, q, k, v, cu_q, cu_k, user: list[torch.Tensor]):
    """(out (total_q, Hq, Dv), lse (Hq, total_q) or None) of validated packed inputs."""
    total_q, total_k = q.shape[0], k.shape[0]
    batch = kernel.batch(cu_q, cu_k, total_q, total_k)
    if call.check:
        kernel.check_offsets(batch, cu_q, cu_k, total_q, total_k, call.max_seqlen_q, call.max_seqlen_k)
    HQ, DV = q.shape[1], v.shape[2]
    out = torch.empty((total_q, HQ, DV), dtype=q.dtype, device=q.device)
    lse = torch.empty((HQ, total_q), dtype=torch.float32, device=q.device) if call.attention.store_lse else None
    if total_q == 0:
        return out, lse
    if total_k == 0:  # no sequence has a key: every row keeps nothing (SEMANTICS.md)
        out.zero_()
        if lse is not None:
            sinks = dict(zip(kernel.user_names, user)).get("sinks")
            if sinks is not None:  # the denominator is the sink alone
                lse.copy_(sinks.float()[:, None].expand(HQ, total_q))
            else:
                lse.fill_(float("-inf"))
        return out, lse
    bound = kernel.bind_varlen(batch, cu_q, cu_k, user)
    kernel.forward_impl(call.attention, packed_view(q), packed_view(k), packed_view(v), bound, out=packed_view(out),
                        lse=None if lse is None else lse[None])
    return out, lse


def varlen_backward(kernel: VarlenKernel, call: VarlenCall, q, k, v, out, lse, dout, dlse, cu_q, cu_k,
                    user: list[torch.Tensor], learnable: tuple[str, ...]):
    """(dq, dk, dv, {packed name: gradient}) of a varlen forward's (out, lse)."""
    if q.shape[0] == 0 or k.shape[0] == 0:  # nothing attended: no gradient reaches the inputs
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v),
                {n: torch.zeros_like(t) for n, t in zip(kernel.user_names, user) if n in learnable})
    bound = kernel.bind_varlen(kernel.batch(cu_q, cu_k, q.shape[0], k.shape[0]), cu_q, cu_k, user)
    dq, dk, dv, grads = kernel.backward_impl(
        call.attention, packed_view(q), packed_view(k), packed_view(v), packed_view(out), lse[None],
        None if dout is None else packed_view(dout), None if dlse is None else dlse[None], bound, learnable)
    unpack = (lambda g: g[0].permute(1, 0, 2))
    return _like(unpack(dq), q), _like(unpack(dk), k), _like(unpack(dv), v), grads


class VarlenFunction(torch.autograd.Function):
    """out, lse = varlen attention(q, k, v, *user tensors) for eager calls."""

    @staticmethod
    def forward(ctx, kernel, call, q, k, v, cu_q, cu_k, *user):
        out, lse = varlen_forward(kernel, call, q, k, v, cu_q, cu_k, list(user))
        ctx.kernel, ctx.call = kernel, call
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, *user)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, cu_q, cu_k, *user = ctx.saved_tensors
        kernel = ctx.kernel
        learnable = tuple(n for n, need in zip(kernel.user_names, ctx.needs_input_grad[7:]) if need)
        dq, dk, dv, grads = varlen_backward(kernel, ctx.call, q, k, v, out, lse, dout, dlse, cu_q, cu_k, user,
                                            learnable)
        return (None, None, dq, dk, dv, None, None, *(grads.get(n) for n in kernel.user_names))


__all__ = ["VarlenCall", "VarlenFunction", "VarlenKernel", "packed_view", "varlen_backward", "varlen_forward"]
