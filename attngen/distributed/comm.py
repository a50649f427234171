"""The communication context parallelism needs, on torch.distributed (any backend: NCCL on
GPUs, gloo on CPUs), with the bytes each process sends counted.

- ``Exchange.post``: point-to-point sends and receives (``batch_isend_irecv``) that stay in
  flight while the caller computes; ``Pending.wait`` hands over the received tensors. On CUDA
  the operations are issued from a side stream, so they wait only for the tensors they
  send (not for the compute queued before them) and the compute stream waits for a receive
  only where it reads it. On CPU (gloo) the same calls run asynchronously in gloo's threads.
- ``all_gather_along``, ``reduce_scatter_along``, ``all_to_all_along``: the collectives, with
  uneven sizes padded to the largest (backends differ on uneven lists; padding works on all).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class Traffic:
    """Payload bytes this process sent, by kind ("ring", "all_gather", "all_to_all",
    "reduce_scatter", "halo"). A collective counts what this process contributes to the
    others (an all-gather of n bytes over W ranks: n * (W - 1)), whatever algorithm the
    backend runs."""

    sent: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, nbytes: int) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + nbytes

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def _count(traffic: Traffic | None, kind: str, tensors, copies: int = 1) -> None:
    if traffic is not None:
        traffic.add(kind, copies * sum(t.numel() * t.element_size() for t in tensors))


@dataclass(frozen=True)
class Group:
    """A process group and this process's place in it."""

    group: dist.ProcessGroup
    rank: int
    size: int

    @classmethod
    def of(cls, group: dist.ProcessGroup | None) -> "Group":
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("attngen.distributed needs an initialized torch.distributed process group "
                               "(torch.distributed.init_process_group)")
        group = group if group is not None else dist.group.WORLD
        return cls(group, dist.get_rank(group), dist.get_world_size(group))

    def global_rank(self, rank: int) -> int:
        """The default group's rank of this group's ``rank`` (what P2P operations address)."""
        if self.group is dist.group.WORLD:
            return rank
        return dist.get_global_rank(self.group, rank)


class Pending:
    """Operations in flight; ``wait()`` returns the received tensors in ``post``'s order."""

    def __init__(self, works: list, received: list[torch.Tensor], stream) -> None:
        self._works, self._received, self._stream = works, received, stream

    def wait(self) -> list[torch.Tensor]:
        for work in self._works:
            work.wait()
        if self._stream is not None:  # the compute stream reads what the side stream received
            current = torch.cuda.current_stream(self._stream.device)
            current.wait_stream(self._stream)
            for t in self._received:
                t.record_stream(current)
        return self._received


_STREAMS: dict[torch.device, "torch.cuda.Stream"] = {}  # one communication stream per GPU, made once


def _side_stream(device: torch.device):
    if device.type != "cuda":
        return None
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


class Exchange:
    """Point-to-point exchanges of one group, issued from a side stream on CUDA."""

    def __init__(self, group: Group, traffic: Traffic | None, kind: str) -> None:
        self.group, self.traffic, self.kind = group, traffic, kind

    def post(self, sends: list[tuple[int, torch.Tensor]], recvs: list[tuple[int, tuple, torch.dtype]],
             device: torch.device) -> Pending:
        """Send each (peer, tensor) and receive each (peer, shape, dtype), peers being ranks of
        the group. Tensors to one peer are matched in order (tags number them)."""
        stream = _side_stream(device)
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(device))  # what we send was written there
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            received = [torch.empty(shape, dtype=dtype, device=device) for _, shape, dtype in recvs]
            ops, tags = [], {}
            for peer, tensor in sends:
                tag = tags[("s", peer)] = tags.get(("s", peer), -1) + 1
                tensor = tensor.contiguous()
                ops.append(dist.P2POp(dist.isend, tensor, self.group.global_rank(peer), self.group.group, tag))
                if stream is not None:  # keep the allocator from reusing it while the send reads it
                    tensor.record_stream(stream)
            for (peer, _, _), buffer in zip(recvs, received):
                tag = tags[("r", peer)] = tags.get(("r", peer), -1) + 1
                ops.append(dist.P2POp(dist.irecv, buffer, self.group.global_rank(peer), self.group.group, tag))
            works = dist.batch_isend_irecv(ops) if ops else []
        _count(self.traffic, self.kind, [t for _, t in sends])
        return Pending(works, received, stream)


def _pad_along(x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    if x.shape[dim] == length:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = length - x.shape[dim]
    return torch.cat((x, x.new_zeros(shape)), dim)


def all_gather_along(x: torch.Tensor, lengths: list[int], dim: int, group: Group,
                     traffic: Traffic | None = None) -> list[torch.Tensor]:
    """Every rank's ``x`` (rank r's has ``lengths[r]`` positions along ``dim``)."""
    padded = _pad_along(x, dim, max(lengths))
    gathered = [torch.empty_like(padded) for _ in range(group.size)]
    dist.all_gather(gathered, padded, group=group.group)
    _count(traffic, "all_gather", [x], group.size - 1)
    return [g.narrow(dim, 0, n) for g, n in zip(gathered, lengths)]


def reduce_scatter_along(parts: list[torch.Tensor], dim: int, group: Group,
                         traffic: Traffic | None = None) -> torch.Tensor:
    """The sum over ranks of their ``parts[rank]`` (``parts[r]`` goes to rank r)."""
    longest = max(p.shape[dim] for p in parts)
    padded = [_pad_along(p, dim, longest) for p in parts]
    out = torch.empty_like(padded[group.rank])
    dist.reduce_scatter(out, padded, group=group.group)
    _count(traffic, "reduce_scatter", [p for r, p in enumerate(parts) if r != group.rank])
    return out.narrow(dim, 0, parts[group.rank].shape[dim])


def all_to_all_along(parts: list[torch.Tensor], recv_lengths: list[int], dim: int, group: Group,
                     traffic: Traffic | None = None) -> list[torch.Tensor]:
    """Send ``parts[r]`` to rank r; returns what each rank sent here (``recv_lengths[r]``
    positions along ``dim`` from rank r). Every part has the same shape off ``dim``."""
    longest = max(max(p.shape[dim] for p in parts), max(recv_lengths))
    padded = [_pad_along(p, dim, longest) for p in parts]
    received = [torch.empty_like(padded[0]) for _ in range(group.size)]
    dist.all_to_all(received, padded, group=group.group)
    _count(traffic, "all_to_all", [p for r, p in enumerate(parts) if r != group.rank])
    return [t.narrow(dim, 0, n) for t, n in zip(received, recv_lengths)]


__all__ = ["Exchange", "Group", "Pending", "Traffic", "all_gather_along", "all_to_all_along", "reduce_scatter_along"]
