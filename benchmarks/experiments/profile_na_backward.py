"""Where a neighborhood's forward+backward spends its time, kernel by kernel, next to Flex's.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/profile_na_backward.py [--case 1d|2d|3d]

H100 bf16 B=1 H=16 D=128: 1-D L=32768 kernel 2047 (session 8: fwd+bwd x0.94 Flex), 2-D 128x128
kernel 31x31, 3-D 16x32x32 kernel 7x15x15. The dQ pass runs on a side stream beside dK/dV, which
stretches both kernels' durations in a profile; here the passes run one after the other
(CONCURRENT_PASSES off) so that each kernel's CUDA time is its own. Also: the same module's
timing with and without the side stream.
"""
from __future__ import annotations

import argparse
import math

import torch
import triton
from torch.profiler import ProfilerActivity, profile

import attngen as ag
from bench_common import compiled_flex, flex_block_mask  # noqa: E402 (benchmarks/ on sys.path)
from bench_neighborhood import NACase, na_mask_mod  # noqa: E402

CASES = {"1d": NACase("1d", (32768,), (2047,)), "2d": NACase("2d", (128, 128), (31, 31)),
         "3d": NACase("3d", (16, 32, 32), (7, 15, 15))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=list(CASES), default="1d")
    case = CASES[ap.parse_args().case]
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__,
          "case", case, flush=True)
    L = math.prod(case.spatial)
    q, k, v = (torch.randn(1, case.H, L, case.D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    do = torch.randn_like(q)
    attn = ag.compile(ag.Variant(mask=ag.neighborhood(case.kernel)))
    flex = compiled_flex()
    mask = flex_block_mask(na_mask_mod(case), L, "cuda")
    module = attn.module(q.device)
    steps = {
        "attngen": lambda: torch.autograd.grad(attn(q, k, v, spatial_shape=case.spatial), (q, k, v), do),
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
