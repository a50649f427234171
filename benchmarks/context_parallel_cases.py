"""The measurements of bench_context_parallel.py: causal sequences and 3-D neighborhoods.

Each function runs on every rank of the launch; ranks outside the measured group wait at the
launch-wide barrier, so world sizes 2, 4 and 8 come from one torchrun of 8 processes. One-GPU
baselines run on rank 0 alone while the others wait.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

import attngen as ag
import attngen.distributed as agd
from attngen.distributed.halo import halo_plan
from attngen.runtime.neighborhood import plan as neighborhood_plan, resolve_axes
from context_parallel_timing import Record, causal_flops, timed_ms
from report import relative_l2, short_reason

CAUSAL = ag.Variant(mask=ag.causal(), name="cp_bench_causal")


@dataclass(frozen=True)
class Settings:
    B: int
    H: int
    D: int
    dtype: torch.dtype
    device: torch.device
    warmup: int
    reps: int
    check: bool
    modes: tuple[str, ...]
    torch_cp: bool


def subgroup(world: int) -> dist.ProcessGroup | None:
    """The group of the first ``world`` ranks (every rank must call this, in the same order)."""
    return dist.new_group(list(range(world))) if world < dist.get_world_size() else dist.group.WORLD


def _randn(shape, s: Settings, seed: int, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator(device=s.device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=s.device, dtype=s.dtype).requires_grad_(requires_grad)


def _fwd_and_bwd(make_out: Callable[[], torch.Tensor], leaves: list[torch.Tensor], dout: torch.Tensor):
    """(forward without autograd, forward + backward) callables for timing."""
    def forward():
        with torch.no_grad():
            make_out()

    def forward_backward():
        for t in leaves:
            t.grad = None
        make_out().backward(dout)
    return forward, forward_backward


def _measure(record: Record, fns, s: Settings, group) -> Record:
    try:
        record.fwd_ms = timed_ms(fns[0], s.device, group, s.warmup, s.reps)
        record.fwdbwd_ms = timed_ms(fns[1], s.device, group, s.warmup, s.reps)
    except Exception as exc:  # recorded; the run goes on (a collective failure would hang instead)
        record.error = short_reason(exc)
    return record


def one_gpu(part: str, case: str, world: int, flops: float, s: Settings, backend: str,
            make: Callable[[], tuple]) -> Record | None:
    """A one-GPU baseline on rank 0 (``make() -> (fwd, fwd+bwd)``); the others wait."""
    record = None
    if dist.get_rank() == 0:
        record = Record(part, case, world, backend, flops)
        try:
            _measure(record, make(), s, None)
        except Exception as exc:
            record.error = short_reason(exc)
    dist.barrier()
    return record


def causal_records(s: Settings, L: int, world: int, group) -> list[Record]:
    """attngen's modes, PyTorch's context_parallel over SDPA and the one-GPU baselines for
    causal attention of L tokens over the first ``world`` ranks (balanced layout)."""
    case = f"causal B={s.B} H={s.H} L={L} D={s.D}"
    records: list[Record] = []
    per = L // world
    local_flops = causal_flops(s.B, s.H, per, s.D)

    def attngen_one():
        q, k, v = (_randn((s.B, s.H, per, s.D), s, i, True) for i in range(3))
        attn = ag.compile(CAUSAL)
        return _fwd_and_bwd(lambda: attn(q, k, v), [q, k, v], torch.randn_like(q))

    def sdpa_one():
        q, k, v = (_randn((s.B, s.H, per, s.D), s, i, True) for i in range(3))
        return _fwd_and_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v],
                            torch.randn_like(q))

    for backend, make in (("one GPU attngen, L/W", attngen_one), ("one GPU SDPA, L/W", sdpa_one)):
        if backend.endswith("SDPA, L/W") and not s.torch_cp:
            continue
        found = one_gpu("causal", case, 1, local_flops, s, backend, make)
        if found is not None:
            found.extra["for_world"] = world
            records.append(found)
    if group is not None:
        records += _attngen_cp(s, L, world, group, case)
        if s.torch_cp:
            records += _torch_cp(s, L, world, group, case)
    dist.barrier()
    return records


def _full_qkv(s: Settings, L: int) -> list[torch.Tensor]:
    """The whole sequence's q, k, v, identical on every rank (one seed)."""
    return [_randn((s.B, s.H, L, s.D), s, 100 + i) for i in range(3)]


def _sharded_inputs(s: Settings, L: int, rank: int, local_length: int, shard: Callable):
    """(q, k, v, dO) of this rank, and with --check the one-GPU reference of its shards:
    the whole sequence drawn from one seed on every rank, then sharded."""
    if not s.check:
        local = [_randn((s.B, s.H, local_length, s.D), s, 10 * rank + i, True) for i in range(3)]
        return local, _randn(local[0].shape, s, 7 + rank), None
    full = _full_qkv(s, L)
    dout = _randn(full[0].shape, s, 200)
    local = [shard(x).detach().clone().requires_grad_() for x in full]
    return local, shard(dout), (full, dout)


def _reference(run_full: Callable, full: list[torch.Tensor], dout: torch.Tensor, shard: Callable) -> dict:
    """This rank's shards of one GPU's out, dq, dk, dv on the whole sequence."""
    leaves = [x.detach().clone().requires_grad_() for x in full]
    out = run_full(*leaves)
    out.backward(dout)
    return {"out": shard(out.detach()), "dq": shard(leaves[0].grad), "dk": shard(leaves[1].grad),
            "dv": shard(leaves[2].grad)}


def _check(record: Record, run: Callable, local: list[torch.Tensor], dout: torch.Tensor, reference: dict) -> None:
    """Relative L2 errors of the sharded call's out and gradients against one GPU's."""
    for t in local:
        t.grad = None
    out = run()
    out.backward(dout)
    got = {"out": out.detach(), "dq": local[0].grad, "dk": local[1].grad, "dv": local[2].grad}
    record.rel_err = {name: relative_l2(got[name], want) for name, want in reference.items()}


def _attngen_cp(s: Settings, L: int, world: int, group, case: str) -> list[Record]:
    layout = agd.SequenceLayout(L, world, balanced=True)
    rank = dist.get_rank(group)
    attn = ag.compile(CAUSAL)
    shard = (lambda x: layout.shard(x, rank, 2))
    local, dout, whole = _sharded_inputs(s, L, rank, layout.local_length(rank), shard)
    reference = _reference(attn, *whole, shard) if whole is not None else None
    records = []
    for mode in s.modes:
        record = Record("causal", case, world, f"attngen {mode}", causal_flops(s.B, s.H, L, s.D))

        def run(mode=mode):
            return agd.context_parallel_attention(attn, *local, layout=layout, group=group, mode=mode)
        if reference is not None:
            _check(record, run, local, dout, reference)
        records.append(_measure(record, _fwd_and_bwd(run, local, dout), s, group))
    return records


def _torch_cp(s: Settings, L: int, world: int, group, case: str) -> list[Record]:
    """PyTorch's context_parallel over SDPA (head-tail load balancing, the same shards as
    attngen's balanced layout), with each of its rotate methods."""
    records = []
    try:
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.tensor.experimental import context_parallel
        from torch.distributed.tensor.experimental._attention import set_rotate_method

        mesh = DeviceMesh.from_group(group, s.device.type)
    except Exception as exc:
        return [Record("causal", case, world, "torch context_parallel", causal_flops(s.B, s.H, L, s.D),
                       error=short_reason(exc))]
    for rotate in ("allgather", "alltoall"):
        record = Record("causal", case, world, f"torch CP SDPA ({rotate})", causal_flops(s.B, s.H, L, s.D))
        try:
            set_rotate_method(rotate)
            buffers = _full_qkv(s, L)
            with context_parallel(mesh, buffers=buffers, buffer_seq_dims=[2, 2, 2], no_restore_buffers=set(buffers)):
                local = [b.detach().clone().requires_grad_() for b in buffers]
                dout = torch.randn_like(local[0])

                def run():
                    return F.scaled_dot_product_attention(*local, is_causal=True)
                _measure(record, _fwd_and_bwd(run, local, dout), s, group)
        except Exception as exc:
            record.error = short_reason(exc)
        records.append(record)
    return records


# ------------------------------------------------------------------ 3-D neighborhoods
def na_attended(shape: tuple[int, ...], kernel: tuple[int, ...]) -> int:
    """Attended (query, key) pairs of one head on the grid."""
    na = ag.neighborhood(kernel)
    axes = resolve_axes(na, shape, math.prod(shape))
    return neighborhood_plan(axes, 16, 16).counts()["attended"]


def na_records(s: Settings, shape: tuple[int, ...], kernel: tuple[int, ...], world: int, group) -> list[Record]:
    """Halo mode, Ulysses and one GPU on the grid of shape[0] / world rows; halo bytes
    against an all-gather's, and the slab's extra rows."""
    variant = ag.Variant(mask=ag.neighborhood(kernel), name="cp_bench_na")
    attn = ag.compile(variant)
    case = f"NA {'x'.join(map(str, shape))} k{'x'.join(map(str, kernel))} B={s.B} H={s.H} D={s.D}"
    records: list[Record] = []
    rows0 = shape[0] // world
    small = (rows0,) + tuple(shape[1:])
    flops = 4.0 * s.B * s.H * s.D

    def attngen_one():
        q, k, v = (_randn((s.B, s.H, math.prod(small), s.D), s, i, True) for i in range(3))
        return _fwd_and_bwd(lambda: attn(q, k, v, spatial_shape=small), [q, k, v], torch.randn_like(q))

    found = one_gpu("na", case, 1, flops * na_attended(small, kernel), s, "one GPU attngen, grid/W", attngen_one)
    if found is not None:
        found.extra.update(grid=small, for_world=world)
        records.append(found)
    if group is not None:
        records += _na_sharded(s, attn, shape, kernel, world, group, case, flops * na_attended(shape, kernel))
    dist.barrier()
    return records


def _na_sharded(s: Settings, attn, shape, kernel, world: int, group, case: str, flops: float) -> list[Record]:
    grid = agd.GridLayout(shape, world)
    rank = dist.get_rank(group)
    shard = (lambda x: agd.shard(x, grid, rank))
    local, dout, whole = _sharded_inputs(s, math.prod(shape), rank, grid.sequence.local_length(rank), shard)
    reference = (_reference(lambda q, k, v: attn(q, k, v, spatial_shape=shape), *whole, shard)
                 if whole is not None else None)
    plans = [halo_plan(ag.neighborhood(kernel), grid, r) for r in range(world)]
    slab_rows = max((p.slab[1] - p.slab[0]) / (p.own[1] - p.own[0]) for p in plans)
    kv_bytes = 2 * local[1].numel() * local[1].element_size()
    records = []
    for mode in ("halo", "ulysses") if s.H % world == 0 else ("halo",):
        record = Record("na", case, world, f"attngen {mode}", flops)
        traffic = agd.Traffic()

        def run(mode=mode, traffic=None):
            return agd.context_parallel_attention(attn, *local, layout=grid, group=group, mode=mode, traffic=traffic)
        try:
            with torch.no_grad():
                run(traffic=traffic)
            record.extra["bytes_sent_fwd_max_rank"] = _max_over(traffic.total, s.device, group)
            if mode == "halo":
                record.extra["slab_rows_over_own_rows"] = slab_rows
            if reference is not None:
                _check(record, run, local, dout, reference)
        except Exception as exc:
            record.error = short_reason(exc)
        records.append(_measure(record, _fwd_and_bwd(run, local, dout), s, group) if record.error is None else record)
    gather = Record("na", case, world, "K/V all-gather (traffic reference)", 0.0)
    gather.extra["bytes_sent_fwd_max_rank"] = (world - 1) * _max_over(kv_bytes, s.device, group)

    def all_gather():
        for x in local[1:]:
            dist.all_gather([torch.empty_like(x) for _ in range(world)], x.detach(), group=group)
    gather.fwd_ms = timed_ms(all_gather, s.device, group, s.warmup, s.reps)
    records.append(gather)
    return records


def _max_over(value: int, device: torch.device, group) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.item())


__all__ = ["Settings", "causal_records", "na_records", "subgroup"]
