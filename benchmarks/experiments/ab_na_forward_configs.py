"""A/B: forward tile configs for 2-D/3-D neighborhood windows after the one-loop walk.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_forward_configs.py [--rounds N]

The masked neighborhoods' forward tiles (64x64, 4 warps, 3 stages from the shipped table) were
chosen when the walk split full boxes from the shell and derived each box with divisions. The
one-loop walk (670a040) makes every step cheaper, which can move the best tile size. Forward
under no_grad, interleaved rounds, H100 bf16 B=1 H=16 D=128; the first line per case is the
config the call picks by itself.
"""
from __future__ import annotations

import argparse
import math

import torch
import triton

import attngen as ag
from rewritten import interleaved_ms  # noqa: E402 (this folder)

CASES = {"2-D 128x128 k31x31": ((128, 128), (31, 31)), "3-D 16x32x32 k7x15x15": ((16, 32, 32), (7, 15, 15))}
CONFIGS = [(64, 64, 4, 3), (64, 64, 4, 4), (64, 64, 4, 2), (128, 64, 8, 3), (64, 128, 4, 3), (128, 128, 8, 3),
           (64, 32, 4, 3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    runs = {}
    for name, (shape, kernel) in CASES.items():
        q, k, v = (torch.randn(1, 16, math.prod(shape), 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        attn = ag.compile(ag.Variant(mask=ag.neighborhood(kernel)))
        with torch.no_grad():
            attn(q, k, v, spatial_shape=shape)
        print(f"{name}: picks {attn.last_config} ({attn.last_config_source})", flush=True)
        for cfg in [None] + CONFIGS:
            config = ag.KernelConfig(*cfg) if cfg else None

            def run(a=attn, q=q, k=k, v=v, s=shape, c=config):
                with torch.no_grad():
                    return a(q, k, v, spatial_shape=s, config=c)
            runs[(name, cfg or "picked")] = run
    times = interleaved_ms(runs, args.rounds)
    for (name, cfg), t in times.items():
        print(f"{name:24s} {str(cfg):18s}: " + " ".join(f"{x:.3f}" for x in t) + f" ms (min {min(t):.3f})", flush=True)


if __name__ == "__main__":
    main()
