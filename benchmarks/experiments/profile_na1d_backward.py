"""Where the 1-D neighborhood's forward+backward spends its time, kernel by kernel, next to
Flex's and to a causal-like band of the same width.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/profile_na1d_backward.py

H100 bf16 B=1 H=16 L=32768 D=128, kernel 2047 (fwd+bwd x0.94 Flex in session 8's comparison).
The dQ pass runs on a side stream beside dK/dV, which stretches both kernels' durations in a
profile; here the passes run one after the other (CONCURRENT_PASSES off) so that each kernel's
CUDA time is its own. Also: the same module's timing with and without the side stream.
"""
from __future__ import annotations

import torch
import triton
from torch.profiler import ProfilerActivity, profile

import attngen as ag
from bench_common import compiled_flex, flex_block_mask  # noqa: E402 (benchmarks/ on sys.path)

H, D, L, K = 16, 128, 32768, 2047


def na1d_mod(b, h, q_idx, kv_idx):
    half = K // 2
    start = torch.clamp(q_idx - half, 0, L - K)
    return (kv_idx >= start) & (kv_idx < start + K)


def main() -> None:
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    q, k, v = (torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    attn = ag.compile(ag.Variant(mask=ag.neighborhood(K)))
    flex = compiled_flex()
    mask = flex_block_mask(na1d_mod, L, "cuda")
    module = attn.module(q.device)
    steps = {
        "attngen": lambda: torch.autograd.grad(attn(q, k, v, spatial_shape=(L,)), (q, k, v), do),
        "flex": lambda: torch.autograd.grad(flex(q, k, v, block_mask=mask), (q, k, v), do),
    }
    for concurrent in (True, False):
        module.CONCURRENT_PASSES = concurrent
        ms = triton.testing.do_bench(steps["attngen"], warmup=25, rep=300)
        print(f"attngen fwd+bwd, side stream {'on' if concurrent else 'off'}: {ms:.3f} ms", flush=True)
    print(f"flex fwd+bwd: {triton.testing.do_bench(steps['flex'], warmup=25, rep=300):.3f} ms", flush=True)
    module.CONCURRENT_PASSES = False
    for name, step in steps.items():
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                step()
            torch.cuda.synchronize()
        print(f"=== {name}: CUDA time per kernel, 10 steps", flush=True)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=6, max_name_column_width=50), flush=True)
    module.CONCURRENT_PASSES = True


if __name__ == "__main__":
    main()
