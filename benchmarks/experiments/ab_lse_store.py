"""A/B: the forward without the log-sum-exp store (calls with no backward and no return_lse)
against the same kernel writing it (``return_lse=True``), and the block-sparse neighborhoods'
pipeline depth (3 stages against the shipped 4).

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_lse_store.py [--rounds N]

Forward under no_grad, H100 bf16, interleaved rounds (na_program_overhead.py found the lse
store worth ~15 us of GNA 2-D's 317 us).
"""
from __future__ import annotations

import argparse
import math

import torch
import triton

import attngen as ag
from rewritten import interleaved_ms  # noqa: E402 (this folder)

# name: (B, H, spatial shape or L, variant mask, neighborhood or not, configs to try besides the pick)
SPARSE = [ag.KernelConfig(256, 64, 8, 3, halves=True)]
CASES = {
    "dense L=8192": (2, 16, 8192, None, []),
    "causal L=8192": (2, 16, 8192, ag.causal(), []),
    "2-D NA 128x128 k31": (1, 16, (128, 128), ag.neighborhood((31, 31)), []),
    "GNA 2-D k32 s16": (1, 16, (128, 128), ag.neighborhood((32, 32), stride=(16, 16)), SPARSE),
    "blocked 3-D k=s=8x16x16": (1, 16, (16, 32, 32), ag.neighborhood((8, 16, 16), stride=(8, 16, 16)), SPARSE),
    "blocked 2-D k=s=16": (1, 16, (128, 128), ag.neighborhood((16, 16), stride=(16, 16)), []),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    runs, flops = {}, {}
    for i, (name, (B, H, shape, mask, configs)) in enumerate(CASES.items()):
        L = math.prod(shape) if isinstance(shape, tuple) else shape
        kw = {"spatial_shape": shape} if isinstance(shape, tuple) else {}
        q, k, v = (torch.randn(B, H, L, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        variant = ag.Variant(mask=mask, name=f"ab_lse_{i}")
        attn = ag.compile(variant)
        with torch.no_grad():
            plain = attn(q, k, v, **kw)
            with_lse, _ = attn(q, k, v, return_lse=True, **kw)
        print(f"{name}: {attn.last_config}; outputs equal: {torch.equal(plain, with_lse)}", flush=True)
        f = 4 * B * H * L * L * 128 * _density(mask, shape)
        for label, extra in [("no lse", {}), ("lse", {"return_lse": True})] + [(str(c), {"config": c}) for c in configs]:
            def run(a=attn, q=q, k=k, v=v, kw=kw, extra=extra):
                with torch.no_grad():
                    return a(q, k, v, **kw, **extra)
            runs[(name, label)] = run
            flops[(name, label)] = f
    times = interleaved_ms(runs, args.rounds)
    for (name, label), t in times.items():
        med = sorted(t)[len(t) // 2]
        print(f"{name:26s} {label:70s}: " + " ".join(f"{x:.4f}" for x in t)
              + f" ms  median {med:.4f} ({flops[(name, label)] / med / 1e9:.0f} TFLOP/s)", flush=True)


def _density(mask, shape) -> float:
    """Attended fraction of the score matrix: causal (L+1)/2L, a neighborhood's window product
    over the grid (exact for the cases above: no borders shrink a NATTEN window), else 1."""
    if mask is None:
        return 1.0
    if isinstance(shape, int):
        return (shape + 1) / (2 * shape)
    return math.prod(mask.kernel_size) / math.prod(shape)


if __name__ == "__main__":
    main()
