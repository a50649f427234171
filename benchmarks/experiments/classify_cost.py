"""What a training step pays when its document ids are new: the classification of the tile-list
mask (classifier launch, spans, runs, the host sync; for the forward's tiles and, in the
backward, the dQ pass's and the transposed dK/dV lists) on top of the kernels. Flex's
counterpart is create_block_mask on every new batch.

    PYTHONPATH=.:benchmarks:benchmarks/experiments python benchmarks/experiments/classify_cost.py

H100, bf16, B=2 H=16 L=8192 D=128, causal packed documents (4 x 2048). Wall time per step
(host and device, synchronized), median of 30 steps: ids reused (classifications cached) and
ids a fresh tensor each step (classified again).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import triton

import attngen as ag
import bench_common as common  # noqa: E402 (benchmarks/ on sys.path)
import compare_cases as cc  # noqa: E402

B, H, L, D = 2, 16, 8192, 128
STEPS = 30


def wall(step, fresh_ids) -> float:
    times = []
    for _ in range(STEPS):
        ids = fresh_ids()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(ids)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    attn = ag.compile(ag.Variant(mask=ag.document() & ag.causal()))
    flex = common.compiled_flex()
    base = torch.arange(4, device="cuda").repeat_interleave(L // 4).expand(B, -1).contiguous()

    def attngen_step(ids):
        torch.autograd.grad(attn(q, k, v, document_ids=ids), leaves, dout)

    def flex_step(ids):
        block_mask = common.flex_block_mask(cc.document_mod(ids), L, "cuda", B=B)
        torch.autograd.grad(flex(q, k, v, block_mask=block_mask), leaves, dout)

    cached = {}

    def flex_cached_step(ids):
        if "bm" not in cached:
            cached["bm"] = common.flex_block_mask(cc.document_mod(ids), L, "cuda", B=B)
        torch.autograd.grad(flex(q, k, v, block_mask=cached["bm"]), leaves, dout)

    for step in (attngen_step, flex_step, flex_cached_step):  # compile and warm
        for _ in range(3):
            step(base.clone())
    rows = [("attngen, ids reused", wall(attngen_step, lambda: base)),
            ("attngen, new ids each step", wall(attngen_step, lambda: base.clone())),
            ("Flex, block mask reused", wall(flex_cached_step, lambda: base)),
            ("Flex, create_block_mask each step", wall(flex_step, lambda: base.clone()))]
    for name, ms in rows:
        print(f"{name}: {ms:.3f} ms per fwd+bwd step (wall, median of {STEPS})", flush=True)


if __name__ == "__main__":
    main()
