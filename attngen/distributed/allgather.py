"""All-gather mode: every rank gathers the whole sequence's keys and values, then attends its
own query chunks to them, one call per query chunk (the pair's plan skips the tiles the
mask empties, so a causal rank reads only the keys before its chunks).

The backward gathers keys and values again (rather than keeping W times the local block
alive between forward and backward), computes dK/dV for the whole sequence in fp32 and
reduce-scatters them to their owners. Memory per rank: the gathered K/V during the call,
which is what limits this mode against ring attention at long sequence lengths.
"""
from __future__ import annotations

import torch

from .comm import all_gather_along, reduce_scatter_along
from .layout import Chunk
from .pairs import (Gradients, Setup, backward_block, finish_forward, forward_block, merged, new_accumulators,
                    saved_for_backward)
from .positions import DOCUMENT_IDS


def gather_sequence(setup: Setup, x: torch.Tensor, dim: int) -> torch.Tensor:
    """The whole sequence along ``dim`` from every rank's local part, in sequence order."""
    layout = setup.layout
    lengths = [layout.local_length(r) for r in range(layout.world_size)]
    return layout.unshard(all_gather_along(x, lengths, dim, setup.group, setup.traffic), dim)


def _whole(setup: Setup) -> tuple[tuple[Chunk, slice], ...]:
    return ((Chunk(0, setup.layout.length), slice(0, setup.layout.length)),)


def _gathered_keys(setup: Setup, k, v, documents):
    full_documents = gather_sequence(setup, documents, 1) if documents is not None else None
    return gather_sequence(setup, k, 2), gather_sequence(setup, v, 2), full_documents


class AllGatherAttention(torch.autograd.Function):
    """(out, lse) of this rank's queries over the gathered sequence; lse is empty for sigmoid."""

    @staticmethod
    def forward(ctx, setup: Setup, q, k, v, *user_values):
        user = dict(zip(setup.kernel.user_names, user_values))
        full_k, full_v, full_documents = _gathered_keys(setup, k, v, user.get(DOCUMENT_IDS))
        queries = setup.layout.local_slices(setup.group.rank)
        accumulators = new_accumulators(setup, q, v.shape[3], queries)
        forward_block(setup, q, queries, accumulators, full_k, full_v, _whole(setup), full_documents, user)
        out, lse = merged(accumulators, q.dtype)
        return finish_forward(ctx, setup, out, lse, q, k, v, out, lse, *user_values)

    @staticmethod
    def backward(ctx, dout, dlse):
        setup, (q, k, v, out, lse), user, wanted = saved_for_backward(ctx)
        names = setup.kernel.user_names
        full_k, full_v, full_documents = _gathered_keys(setup, k, v, user.get(DOCUMENT_IDS))
        grads = Gradients.zeros(q, wanted)
        saved = (q, out, lse, torch.zeros_like(out) if dout is None else dout, dlse if setup.softmax else None)
        queries = setup.layout.local_slices(setup.group.rank)
        dk, dv = backward_block(setup, saved, queries, full_k, full_v, _whole(setup), full_documents, user, grads)
        layout = setup.layout
        dk = reduce_scatter_along([layout.shard(dk, r, 2) for r in range(layout.world_size)], 2, setup.group,
                                  setup.traffic)
        dv = reduce_scatter_along([layout.shard(dv, r, 2) for r in range(layout.world_size)], 2, setup.group,
                                  setup.traffic)
        return (None, grads.dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *grads.for_inputs(names))


__all__ = ["AllGatherAttention", "gather_sequence"]
