"""Ring attention: each rank keeps its queries and passes its key/value block around the ring.

Forward, W steps: at step t rank r holds the block of rank (r - t) mod W. It posts the
send of that block to rank r + 1 and the receive of the next one from rank r - 1 first, then
attends its query chunks to the block it holds (pairs.py), so the transfer runs while it
computes; partial results merge by log-sum-exp (merge.py).

Backward (FlashAttention's ring backward): the blocks travel the same way, and with them an
fp32 (dK, dV) accumulator per block, one step behind: at step t a rank computes the block's
contributions into a fresh buffer while the accumulator of that block is still arriving from
rank r - 1 (which added its share at step t - 1), then adds it and sends the sum on. After
W steps every accumulator has visited every rank and arrives back at the block's owner.
Each pair's gradients come from the merged (out, lse), so they are exact contributions.

Document ids of the keys travel with their block. On CUDA the exchange runs on a side
stream (comm.py); on gloo the sends and receives run in gloo's threads while the
interpreter computes.
"""
from __future__ import annotations

import torch

from .comm import Exchange
from .pairs import (Gradients, Setup, backward_block, finish_forward, forward_block, merged, new_accumulators,
                    saved_for_backward)
from .positions import DOCUMENT_IDS


def _block_specs(k: torch.Tensor, v: torch.Tensor, documents: torch.Tensor | None, length: int) -> list:
    """(shape, dtype) of a block of ``length`` positions: k, v and the keys' document ids."""
    specs = [((k.shape[0], k.shape[1], length, k.shape[3]), k.dtype),
             ((v.shape[0], v.shape[1], length, v.shape[3]), v.dtype)]
    if documents is not None:
        specs.append(((documents.shape[0], length), documents.dtype))
    return specs


def _grad_specs(k: torch.Tensor, v: torch.Tensor, length: int) -> list:
    return [(shape, torch.float32) for shape, _ in _block_specs(k, v, None, length)]


class RingAttention(torch.autograd.Function):
    """(out, lse) of this rank's queries over the whole sequence; lse is empty for sigmoid."""

    @staticmethod
    def forward(ctx, setup: Setup, q, k, v, *user_values):
        user = dict(zip(setup.kernel.user_names, user_values))
        group, layout = setup.group, setup.layout
        size, rank = group.size, group.rank
        documents = user.get(DOCUMENT_IDS)
        queries = layout.local_slices(rank)
        accumulators = new_accumulators(setup, q, v.shape[3], queries)
        exchange = Exchange(group, setup.traffic, "ring")
        block = [k, v] + ([documents] if documents is not None else [])
        for step in range(size):
            owner = (rank - step) % size
            pending = None
            if step < size - 1:  # the next block travels while this one is attended
                incoming = _block_specs(k, v, documents, layout.local_length((owner - 1) % size))
                pending = exchange.post([((rank + 1) % size, t) for t in block],
                                        [((rank - 1) % size, shape, dtype) for shape, dtype in incoming], q.device)
            forward_block(setup, q, queries, accumulators, block[0], block[1], layout.local_slices(owner),
                          block[2] if documents is not None else None, user)
            if pending is not None:
                block = pending.wait()
        out, lse = merged(accumulators, q.dtype)
        return finish_forward(ctx, setup, out, lse, q, k, v, out, lse, *user_values)

    @staticmethod
    def backward(ctx, dout, dlse):
        setup, (q, k, v, out, lse), user, wanted = saved_for_backward(ctx)
        names = setup.kernel.user_names
        if dout is None:
            dout = torch.zeros_like(out)
        group, layout = setup.group, setup.layout
        size, rank = group.size, group.rank
        documents = user.get(DOCUMENT_IDS)
        queries = layout.local_slices(rank)
        saved = (q, out, lse, dout, dlse if setup.softmax else None)
        grads = Gradients.zeros(q, wanted)
        kv_exchange = Exchange(group, setup.traffic, "ring")
        grad_exchange = Exchange(group, setup.traffic, "ring")
        block = [k, v] + ([documents] if documents is not None else [])
        carried = None  # the (dK, dV) accumulator of the block held now, arriving from rank - 1
        for step in range(size):
            owner = (rank - step) % size
            pending = None
            if step < size - 1:
                incoming = _block_specs(k, v, documents, layout.local_length((owner - 1) % size))
                pending = kv_exchange.post([((rank + 1) % size, t) for t in block],
                                           [((rank - 1) % size, shape, dtype) for shape, dtype in incoming], q.device)
            dk, dv = backward_block(setup, saved, queries, block[0], block[1], layout.local_slices(owner),
                                    block[2] if documents is not None else None, user, grads)
            if carried is not None:
                earlier_dk, earlier_dv = carried.wait()
                dk += earlier_dk
                dv += earlier_dv
            if size > 1:  # send the sum on; receive the accumulator of the next block (or, last, our own)
                nxt = (owner - 1) % size
                carried = grad_exchange.post([((rank + 1) % size, dk), ((rank + 1) % size, dv)],
                                             [((rank - 1) % size, shape, dtype)
                                              for shape, dtype in _grad_specs(k, v, layout.local_length(nxt))],
                                             q.device)
            if pending is not None:
                block = pending.wait()
        if carried is not None:
            dk, dv = carried.wait()
        return (None, grads.dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *grads.for_inputs(names))


__all__ = ["RingAttention"]
