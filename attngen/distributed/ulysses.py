"""Ulysses (DeepSpeed-Ulysses): an all-to-all turns sequence shards of every head into the
whole sequence of a group of heads; each rank runs one ordinary call for its heads over the
whole sequence, and a second all-to-all turns the output back.

Rank r gets query heads [r * Hq/W, (r + 1) * Hq/W) and key/value heads likewise (Hq and Hkv
must both divide by W, which keeps every GQA group on one rank). Masks and score_mods see
the global head through the rewrite's head offset (``h -> h + r * Hq/W``), so tensors
indexed by head (ALiBi slopes, bias tables) are passed whole. Document ids are gathered:
every rank attends the whole sequence. Any layout works; the sequence is put in order after
the exchange. The backward exchanges dO (and the lse's gradient) the same way and the
gradients back; it keeps the head group's q, k, v, out and lse from the forward (the same
memory as the local shards).
"""
from __future__ import annotations

import torch

from .allgather import gather_sequence
from .comm import all_to_all_along
from .layout import Chunk
from .pairs import (Gradients, Setup, backward_block, finish_forward, forward_block, learnable, merged,
                    new_accumulators)
from .positions import DOCUMENT_IDS


def check_heads(heads: int, kv_heads: int, world_size: int) -> None:
    if heads % world_size or kv_heads % world_size:
        raise ValueError(f"mode='ulysses' splits heads over the group: Hq ({heads}) and Hkv ({kv_heads}) must both "
                         f"be multiples of the group size ({world_size}); use mode='ring' or 'allgather'")


def heads_to_sequence(setup: Setup, x: torch.Tensor) -> torch.Tensor:
    """(B, H, local L, ...) on every rank -> (B, H/W, L, ...): this rank's heads, whole sequence."""
    layout, size = setup.layout, setup.group.size
    parts = list(x.chunk(size, dim=1))
    received = all_to_all_along(parts, [layout.local_length(r) for r in range(size)], 2, setup.group, setup.traffic)
    return layout.unshard(received, 2)


def sequence_to_heads(setup: Setup, x: torch.Tensor) -> torch.Tensor:
    """The inverse: (B, H/W, L, ...) -> (B, H, local L, ...)."""
    layout, size = setup.layout, setup.group.size
    parts = [layout.shard(x, r, 2) for r in range(size)]
    mine = layout.local_length(setup.group.rank)
    return torch.cat(all_to_all_along(parts, [mine] * size, 2, setup.group, setup.traffic), dim=1)


class UlyssesAttention(torch.autograd.Function):
    """(out, lse) of this rank's tokens, every head; lse is empty for sigmoid."""

    @staticmethod
    def forward(ctx, setup: Setup, q, k, v, *user_values):
        user = dict(zip(setup.kernel.user_names, user_values))
        if DOCUMENT_IDS in user:
            user[DOCUMENT_IDS] = gather_sequence(setup, user[DOCUMENT_IDS], 1)
        qh, kh, vh = (heads_to_sequence(setup, x) for x in (q, k, v))
        whole = ((Chunk(0, setup.layout.length), slice(0, setup.layout.length)),)
        accumulators = new_accumulators(setup, qh, vh.shape[3], whole)
        forward_block(setup, qh, whole, accumulators, kh, vh, whole, user.get(DOCUMENT_IDS), user)
        out_h, lse_h = merged(accumulators, q.dtype)
        out = sequence_to_heads(setup, out_h)
        lse = sequence_to_heads(setup, lse_h) if setup.softmax else lse_h
        ctx.user_names = tuple(user)
        return finish_forward(ctx, setup, out, lse, qh, kh, vh, out_h, lse_h, *user.values())

    @staticmethod
    def backward(ctx, dout, dlse):
        setup: Setup = ctx.setup
        qh, kh, vh, out_h, lse_h, *user_values = ctx.saved_tensors
        names = setup.kernel.user_names
        user = dict(zip(ctx.user_names, user_values))
        wanted = learnable(ctx, names)
        dout_h = torch.zeros_like(out_h) if dout is None else heads_to_sequence(setup, dout)
        dlse_h = heads_to_sequence(setup, dlse) if dlse is not None and setup.softmax else None
        whole = ((Chunk(0, setup.layout.length), slice(0, setup.layout.length)),)
        grads = Gradients.zeros(qh, wanted)
        dk, dv = backward_block(setup, (qh, out_h, lse_h, dout_h, dlse_h), whole, kh, vh, whole,
                                user.get(DOCUMENT_IDS), user, grads)
        dq, dk, dv = (sequence_to_heads(setup, g.to(qh.dtype)) for g in (grads.dq, dk, dv))
        return (None, dq, dk, dv, *grads.for_inputs(names))


__all__ = ["UlyssesAttention", "check_heads", "heads_to_sequence", "sequence_to_heads"]
