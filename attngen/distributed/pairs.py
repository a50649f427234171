"""A rank's query chunks against one block of key chunks: the work every mode shares.

Ring attention meets the key blocks one ring step at a time, all-gather mode meets one block
holding the whole sequence, Ulysses one block of the whole sequence for a group of heads.
Each of them calls ``forward_block`` per block, merging into one accumulator per query
chunk, and ``backward_block`` per block with the merged (out, lse), which gives each pair's
exact gradient contributions. Pairs the mask empties are decided on the host from the
geometry (chunk_plan.py) and never launched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from ..runtime.attention import AttentionCall
from .chunk_kernel import OffsetKernel
from .chunk_plan import PairGeometry
from .comm import Group, Traffic
from .fast_paths import PairKernels
from .layout import Chunk, SequenceLayout
from .merge import accumulator
from .positions import DOCUMENT_IDS

Piece = tuple[Chunk, slice]  # a chunk of the sequence and where it lies in a local tensor


@dataclass(frozen=True)
class Setup:
    """What a context-parallel call fixes besides its tensors."""

    kernels: PairKernels
    call: AttentionCall
    layout: SequenceLayout
    group: Group
    traffic: Traffic | None
    head_offset: int = 0

    @property
    def kernel(self) -> OffsetKernel:
        return self.kernels.offset

    @property
    def softmax(self) -> bool:
        return self.kernel.rewrite.softmax


def live_pairs(setup: Setup, queries: Sequence[Piece], keys: Sequence[Piece]
               ) -> Iterator[tuple[int, slice, slice, PairGeometry]]:
    """(query chunk index, its rows, the key chunk's columns, geometry) of every pair whose
    mask keeps something."""
    length = setup.layout.length
    for index, (qc, rows) in enumerate(queries):
        for kc, cols in keys:
            geometry = PairGeometry(qc.start, kc.start, qc.length, kc.length, length, length, setup.head_offset)
            if not setup.kernel.pair(geometry).empty:
                yield index, rows, cols, geometry


def _pair_call(setup: Setup, user: dict[str, torch.Tensor], rows: slice, cols: slice, geometry: PairGeometry,
               kv_documents: torch.Tensor | None, device: torch.device):
    """The kernel that runs the pair (fast_paths.py) and the tensors it reads: the query
    chunk's own document ids, the key chunk's beside them, the pair's offsets."""
    if DOCUMENT_IDS in user:
        user = dict(user)
        user[DOCUMENT_IDS] = user[DOCUMENT_IDS][:, rows]
    keys_ids = kv_documents[:, cols] if kv_documents is not None else None
    kernel = setup.kernels.choose(geometry)
    bound = setup.kernel.bind_pair(user, geometry, device, keys_ids)
    return kernel, {n: t for n, t in bound.items() if n in kernel._names}


def new_accumulators(setup: Setup, q: torch.Tensor, dv: int, queries: Sequence[Piece]) -> list:
    return [accumulator(setup.softmax, (q.shape[0], q.shape[1], c.length, dv), q.device) for c, _ in queries]


def forward_block(setup: Setup, q: torch.Tensor, queries: Sequence[Piece], accumulators: list, k: torch.Tensor,
                  v: torch.Tensor, keys: Sequence[Piece], kv_documents: torch.Tensor | None,
                  user: dict[str, torch.Tensor]) -> None:
    """Merge every live pair of ``queries`` x ``keys`` into the query chunks' accumulators."""
    for index, rows, cols, geometry in live_pairs(setup, queries, keys):
        kernel, bound = _pair_call(setup, user, rows, cols, geometry, kv_documents, q.device)
        out, lse = kernel.forward_impl(setup.call, q[:, :, rows], k[:, :, cols], v[:, :, cols], bound)
        accumulators[index].add(out, lse)


def merged(accumulators: list, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(out in ``dtype``, lse fp32 or an empty tensor for sigmoid) over the local rows, in
    the query chunks' local order."""
    out = torch.cat([a.out for a in accumulators], dim=2).to(dtype)
    if accumulators[0].lse is None:
        return out, out.new_empty((0,), dtype=torch.float32)
    return out, torch.cat([a.lse for a in accumulators], dim=2)


@dataclass
class Gradients:
    """The backward's accumulators over blocks: dq (fp32, local rows) and the gradients of
    the runtime tensors that require them."""

    dq: torch.Tensor
    learnable: tuple[str, ...]
    tensors: dict[str, torch.Tensor]

    @classmethod
    def zeros(cls, q: torch.Tensor, learnable: tuple[str, ...]) -> "Gradients":
        return cls(torch.zeros(q.shape, dtype=torch.float32, device=q.device), learnable, {})

    def add_tensor_grads(self, grads: dict[str, torch.Tensor]) -> None:
        for name, g in grads.items():
            if g is not None:
                self.tensors[name] = self.tensors[name] + g if name in self.tensors else g

    def for_inputs(self, names: Sequence[str]) -> list[torch.Tensor | None]:
        return [self.tensors.get(n) for n in names]


def backward_block(setup: Setup, saved: tuple, queries: Sequence[Piece], k: torch.Tensor, v: torch.Tensor,
                   keys: Sequence[Piece], kv_documents: torch.Tensor | None, user: dict[str, torch.Tensor],
                   grads: Gradients) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the pairs' dq and tensor gradients into ``grads``; return this block's (dk, dv)
    contributions in fp32. ``saved``: (q, out, lse, dout, dlse) over the local rows, out and
    lse merged over every key chunk."""
    q, out, lse, dout, dlse = saved
    dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    softmax = setup.softmax
    for _, rows, cols, geometry in live_pairs(setup, queries, keys):
        kernel, bound = _pair_call(setup, user, rows, cols, geometry, kv_documents, q.device)
        pair_dq, pair_dk, pair_dv, tensor_grads = kernel.backward_impl(
            setup.call, q[:, :, rows], k[:, :, cols], v[:, :, cols], out[:, :, rows],
            lse[:, :, rows] if softmax else None, None if dout is None else dout[:, :, rows],
            None if dlse is None else dlse[:, :, rows], bound, tuple(n for n in grads.learnable if n in bound))
        grads.dq[:, :, rows] += pair_dq
        dk[:, :, cols] += pair_dk
        dv[:, :, cols] += pair_dv
        grads.add_tensor_grads(tensor_grads)
    return dk, dv


def finish_forward(ctx, setup, out: torch.Tensor, lse: torch.Tensor, *saved) -> tuple[torch.Tensor, torch.Tensor]:
    """What every sharded autograd Function's forward ends with: keep ``saved`` and the
    setup for the backward; sigmoid's (empty) lse takes no gradient."""
    ctx.setup = setup
    ctx.save_for_backward(*saved)
    ctx.set_materialize_grads(False)
    if not setup.kernel.rewrite.softmax:
        ctx.mark_non_differentiable(lse)
    return out, lse


def saved_for_backward(ctx) -> tuple[Setup, list[torch.Tensor], dict[str, torch.Tensor], tuple[str, ...]]:
    """(setup, [q, k, v, out, lse], runtime tensors by name, those that want a gradient) of a
    forward that saved q, k, v, out, lse and the runtime tensors in the kernel's order."""
    setup = ctx.setup
    q, k, v, out, lse, *user_values = ctx.saved_tensors
    names = setup.kernel.user_names
    return setup, [q, k, v, out, lse], dict(zip(names, user_values)), learnable(ctx, names)


def learnable(ctx, names: Sequence[str]) -> tuple[str, ...]:
    """The runtime tensors (inputs after setup, q, k, v) whose gradients are asked for."""
    return tuple(n for n, need in zip(names, ctx.needs_input_grad[4:]) if need)


__all__ = ["Gradients", "Piece", "Setup", "backward_block", "finish_forward", "forward_block", "learnable", "live_pairs", "merged", "saved_for_backward",
           "new_accumulators"]
