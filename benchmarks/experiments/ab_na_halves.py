"""A/B: neighborhood forward with two-halves query boxes against the shipped config.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_halves.py [--rounds N]

Grids whose forward takes the dense kernel's tiles (block-sparse boxes, 1-D windows) ran
128x128 tiles on 8 warps, where the dense kernel gained 7-11% from two interleaved halves
(dense B=8 L=2048: 488 against 457 TFLOP/s; benchmarks/NOTES.md, "Tile-list masks"). The neighborhood kernel
now has the halves too; this times both, interleaved, H100 bf16 B=1 H=16 D=128, TFLOP/s on
attended entries, with the dense kernel on the same sequence length for the speed-of-light
line (dense rate x density).
"""
from __future__ import annotations

import argparse
import math

import torch
import triton

import attngen as ag
from attngen import KernelConfig as C

H, D = 16, 128
# name: (grid, kernel, stride)
CASES = {
    "blocked3d 16x32x32 k=s=8x16x16": ((16, 32, 32), (8, 16, 16), (8, 16, 16)),
    "gna2d 128x128 k32 s16": ((128, 128), (32, 32), (16, 16)),
    "na1d 32768 k2047": ((32768,), (2047,), (1,)),
    "blocked2d 128x128 k=s=16": ((128, 128), (16, 16), (16, 16)),
}
CONFIGS = {
    "shipped": None,
    "128x128 w8 s3": C(128, 128, 8, 3),
    "halves 256x64 w8 s4": C(256, 64, 8, 4, halves=True),
    "halves 256x64 w8 s3": C(256, 64, 8, 3, halves=True),
    "halves 128x64 w4 s3": C(128, 64, 4, 3, halves=True),
}


def attended(shape, kernel, stride) -> int:
    # non-causal, no dilation: every query sees exactly k keys per axis
    return math.prod(shape) * math.prod(kernel)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    dense = ag.compile(ag.Variant())
    runs, flops = {}, {}
    for name, (shape, kernel, stride) in CASES.items():
        L = math.prod(shape)
        q, k, v = (torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        attn = ag.compile(ag.Variant(mask=ag.neighborhood(kernel, stride=stride)))
        with torch.no_grad():
            ref = attn(q, k, v, spatial_shape=shape).float()
            print(f"{name}: shipped config {attn.last_config} ({attn.last_config_source})", flush=True)
            for label, cfg in CONFIGS.items():
                try:
                    out = attn(q, k, v, spatial_shape=shape, config=cfg).float() if cfg else ref
                except Exception as exc:  # noqa: BLE001 - a config that does not fit: report, go on
                    print(f"  {label}: FAILED {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                    continue
                err = ((out - ref).norm() / ref.norm()).item()
                print(f"  {label}: rel err vs shipped {err:.1e}", flush=True)
                runs[(name, label)] = (lambda a=attn, c=cfg, q=q, k=k, v=v, s=shape: a(q, k, v, spatial_shape=s, config=c))
                flops[(name, label)] = 4.0 * H * D * attended(shape, kernel, stride)
            runs[(name, "dense kernel x density")] = lambda q=q, k=k, v=v: dense(q, k, v)
            flops[(name, "dense kernel x density")] = 4.0 * H * D * L * L
    rates = {key: [] for key in runs}
    with torch.no_grad():
        for _ in range(args.rounds):
            for key, fn in runs.items():
                rates[key].append(flops[key] / triton.testing.do_bench(fn, warmup=25, rep=150) / 1e9)
    for name in CASES:
        print(f"--- {name} (TFLOP/s on attended entries; the dense line is the speed of light)")
        for (case, label), r in rates.items():
            if case == name:
                med = sorted(r)[len(r) // 2]
                print(f"  {label:24s}: " + " ".join(f"{x:5.0f}" for x in r) + f"  (median {med:.0f})", flush=True)


if __name__ == "__main__":
    main()
