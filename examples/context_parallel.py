"""Context parallelism: one attention over a sequence sharded across processes.

    python -m torch.distributed.run --standalone --nproc-per-node 2 examples/context_parallel.py

Runs on CPUs (gloo, the Triton interpreter) or one GPU per process (NCCL). Each rank holds
its shard of q, k, v in the balanced layout that ``layout_for`` picks for a causal mask,
runs ring attention with ALiBi and learned sinks, and compares its output and gradients
with one process attending the whole sequence. Then a 2-D neighborhood sharded by rows,
which exchanges only the halo its windows reach.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

import attngen as ag
import attngen.distributed as agd


@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


def main() -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # every rank draws the same whole sequence, then keeps its shard

    variant = ag.Variant(score=alibi, mask=ag.causal(), norm=ag.softmax(sink=True), name="alibi_sinks")
    B, H, L, D = 1, 2, 64, 16
    q, k, v = (torch.randn(B, H, L, D, device=device) for _ in range(3))
    slopes, sinks = torch.rand(H, device=device), torch.zeros(H, device=device, requires_grad=True)
    layout = agd.layout_for(variant, L, world)  # balanced: rank r holds chunks r and 2W-1-r
    ql, kl, vl = (agd.shard(x, layout).requires_grad_() for x in (q, k, v))
    out = agd.context_parallel_attention(variant, ql, kl, vl, layout=layout, mode="ring", slopes=slopes, sinks=sinks)
    out.sum().backward()
    dist.all_reduce(sinks.grad)  # sinks are whole on every rank: their gradient is summed over the group

    whole = [x.clone().requires_grad_() for x in (q, k, v)]
    sinks_whole = sinks.detach().clone().requires_grad_()
    reference = ag.compile(variant)(*whole, slopes=slopes, sinks=sinks_whole)
    reference.sum().backward()
    errors = {"out": (out - agd.shard(reference, layout)).abs().max().item(),
              "dq": (ql.grad - agd.shard(whole[0].grad, layout)).abs().max().item(),
              "dsinks": (sinks.grad - sinks_whole.grad).abs().max().item()}
    print(f"rank {rank}: ring attention over {world} ranks, max abs error {errors}")
    assert max(errors.values()) < 1e-3

    grid = agd.GridLayout((12, 8), world)  # a 12 x 8 grid split by rows
    na = ag.Variant(mask=ag.neighborhood(kernel_size=5, dilation=(2, 1)))
    x = torch.randn(B, H, 96, D, device=device)
    traffic = agd.Traffic()
    local = agd.context_parallel_attention(na, *(agd.shard(x, grid) for _ in range(3)), layout=grid, traffic=traffic)
    full = ag.compile(na)(x, x, x, spatial_shape=(12, 8))
    print(f"rank {rank}: neighborhood halo mode, {traffic.sent['halo']} bytes sent, max abs error "
          f"{(local - agd.shard(full, grid)).abs().max().item():.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
