"""Halo mode: neighborhood attention over a grid sharded by rows of its first axis.

Each rank receives from its peers exactly the key/value rows its queries' windows reach
(halo.py; document ids travel with them), builds the slab the halo plan names around its
own rows (zeros elsewhere), and runs the ordinary neighborhood kernel on it, with the
variant's other masks and score_mod at global positions (positions.py: both sides offset by
the slab's first token). Its own rows' outputs are the result; nothing is merged, since every
query sees its whole window in one call.

The backward runs the kernels' backward on the slab with dO zero outside the local rows, so
only local queries contribute; the gradients of the received key/value rows go back to their
owners, who add them (the same rows, in the other direction).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime.attention import AttentionCall
from .chunk_kernel import OffsetKernel
from .chunk_plan import PairGeometry
from .comm import Exchange, Group, Traffic
from .halo import GridLayout, HaloPlan
from .pairs import finish_forward, learnable
from .positions import DOCUMENT_IDS


@dataclass(frozen=True)
class HaloSetup:
    """What a halo-mode call fixes besides its tensors (``call`` carries the slab's grid)."""

    kernel: OffsetKernel
    call: AttentionCall
    grid: GridLayout
    plan: HaloPlan
    group: Group
    traffic: Traffic | None

    @property
    def geometry(self) -> PairGeometry:
        first = self.plan.slab[0] * self.grid.row_size
        tokens = (self.plan.slab[1] - self.plan.slab[0]) * self.grid.row_size
        return PairGeometry(first, first, tokens, tokens, self.grid.length, self.grid.length)


def _rows(x: torch.Tensor, row_size: int, row_dim: int) -> torch.Tensor:
    """Tokens along ``row_dim`` as (rows, row_size) there."""
    return x.unflatten(row_dim, (x.shape[row_dim] // row_size, row_size))


def _own(setup: HaloSetup, slab: torch.Tensor, row_dim: int) -> torch.Tensor:
    """The local rows of a slab-shaped tensor (tokens along ``row_dim``), as a view."""
    (p0, _), (a, b) = setup.plan.slab, setup.plan.own
    rs = setup.grid.row_size
    return slab.narrow(row_dim, (a - p0) * rs, (b - a) * rs)


def _exchange(setup: HaloSetup, tensors: list[tuple[torch.Tensor, int]], reverse: bool,
              device: torch.device) -> dict[int, list[torch.Tensor]]:
    """Send rows to peers, receive rows from them: forward, each peer's ``send`` rows of the
    local tensors (tokens along their dim); ``reverse``, slab tensors' ``receive`` rows back
    to the peers they came from. Returns what each peer sent, rows-shaped."""
    plan, rs = setup.plan, setup.grid.row_size
    outgoing, incoming = (plan.receive, plan.send) if reverse else (plan.send, plan.receive)
    base = plan.slab[0] if reverse else plan.own[0]
    sends, recvs = [], []
    for peer, rows in outgoing.items():
        for x, dim in tensors:
            sends.append((peer, _rows(x, rs, dim).index_select(dim, (rows - base).to(x.device))))
    for peer, rows in incoming.items():
        for x, dim in tensors:
            shape = list(_rows(x, rs, dim).shape)
            shape[dim] = rows.numel()
            recvs.append((peer, tuple(shape), x.dtype))
    received = Exchange(setup.group, setup.traffic, "halo").post(sends, recvs, device).wait()
    per_peer, i = {}, 0
    for peer in incoming:
        per_peer[peer] = received[i:i + len(tensors)]
        i += len(tensors)
    return per_peer


def _slab_of(setup: HaloSetup, local: torch.Tensor, dim: int, received: dict[int, torch.Tensor]) -> torch.Tensor:
    """The slab tensor: local rows, received rows, zeros elsewhere (tokens along ``dim``)."""
    plan, rs = setup.plan, setup.grid.row_size
    p0, p1 = plan.slab
    shape = list(local.shape)
    shape[dim] = (p1 - p0) * rs
    out = local.new_zeros(shape)
    _own(setup, out, dim).copy_(local)
    rows_view = _rows(out, rs, dim)
    for peer, rows in received.items():
        rows_view.index_copy_(dim, (plan.receive[peer] - p0).to(local.device), rows)
    return out


class HaloAttention(torch.autograd.Function):
    """(out, lse) of this rank's rows; lse is empty for sigmoid."""

    @staticmethod
    def forward(ctx, setup: HaloSetup, q, k, v, *user_values):
        kernel = setup.kernel
        user = dict(zip(kernel.user_names, user_values))
        documents = user.get(DOCUMENT_IDS)
        local = [(k, 2), (v, 2)] + ([(documents, 1)] if documents is not None else [])
        received = _exchange(setup, local, False, q.device)
        slabs = [_slab_of(setup, x, dim, {p: got[i] for p, got in received.items()})
                 for i, (x, dim) in enumerate(local)]
        k_slab, v_slab = slabs[0], slabs[1]
        if documents is not None:
            user[DOCUMENT_IDS] = slabs[2]
        q_slab = _slab_of(setup, q, 2, {})
        bound = kernel.bind_pair(user, setup.geometry, q.device, user.get(DOCUMENT_IDS))
        out_slab, lse_slab = kernel.forward_impl(setup.call, q_slab, k_slab, v_slab, bound)
        softmax = kernel.rewrite.softmax
        out = _own(setup, out_slab, 2).contiguous()
        lse = _own(setup, lse_slab, 2).contiguous() if softmax else out.new_empty((0,), dtype=torch.float32)
        ctx.user_names = tuple(user)
        return finish_forward(ctx, setup, out, lse, q, k_slab, v_slab, out_slab, lse_slab if softmax else None,
                              *user.values())

    @staticmethod
    def backward(ctx, dout, dlse):
        setup: HaloSetup = ctx.setup
        kernel = setup.kernel
        q, k_slab, v_slab, out_slab, lse_slab, *user_values = ctx.saved_tensors
        user = dict(zip(ctx.user_names, user_values))
        wanted = learnable(ctx, kernel.user_names)
        q_slab = _slab_of(setup, q, 2, {})
        dout_slab = torch.zeros_like(out_slab)
        if dout is not None:
            _own(setup, dout_slab, 2).copy_(dout)
        dlse_slab = None
        if dlse is not None and lse_slab is not None:
            dlse_slab = torch.zeros_like(lse_slab)
            _own(setup, dlse_slab, 2).copy_(dlse)
        bound = kernel.bind_pair(user, setup.geometry, q.device, user.get(DOCUMENT_IDS))
        dq, dk, dv, grads = kernel.backward_impl(setup.call, q_slab, k_slab, v_slab, out_slab, lse_slab, dout_slab,
                                                 dlse_slab, bound, wanted)
        dk, dv = dk.float(), dv.float()
        returned = _exchange(setup, [(dk, 2), (dv, 2)], True, q.device)
        rs = setup.grid.row_size
        dk_own, dv_own = _own(setup, dk, 2).clone(), _own(setup, dv, 2).clone()
        a = setup.plan.own[0]
        for peer, (peer_dk, peer_dv) in returned.items():
            rows = (setup.plan.send[peer] - a).to(q.device)
            _rows(dk_own, rs, 2).index_add_(2, rows, peer_dk)
            _rows(dv_own, rs, 2).index_add_(2, rows, peer_dv)
        k_dtype = k_slab.dtype
        return (None, _own(setup, dq, 2).contiguous(), dk_own.to(k_dtype), dv_own.to(v_slab.dtype),
                *(grads.get(n) for n in kernel.user_names))


__all__ = ["HaloAttention", "HaloSetup"]
