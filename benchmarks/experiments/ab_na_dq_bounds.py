"""A/B: the neighborhood dQ pass's loads without bounds masks.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_dq_bounds.py [--rounds N]

The dQ pass gathers each KV box with positions clamped into the sequence, yet loaded K and V
with bounds masks (IN_BOUNDS False); session 4 measured 10% on the dense dK/dV pass from
dropping such masks. The generated module now loads unmasked when the head dims are unpadded;
the "masked" module here is the same source with that flag forced off (the earlier behaviour).
Forward+backward (torch.autograd.grad), interleaved rounds, H100 bf16 B=1 H=16 D=128.
"""
from __future__ import annotations

import argparse
import math

import torch
import triton

import attngen as ag
from rewritten import replace_once, use_rewritten  # noqa: E402 (this folder)

H, D = 16, 128
CASES = {"2-D 128x128 k31x31": ((128, 128), (31, 31)), "1-D 32768 k2047": ((32768,), (2047,)),
         "3-D 16x32x32 k7x15x15": ((16, 32, 32), (7, 15, 15))}
UNMASKED = "    q_even = dict(EVEN_N=even_dims)\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    runs = {}
    for name, (shape, kernel) in CASES.items():
        L = math.prod(shape)
        q, k, v = (torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        na = ag.neighborhood(kernel)
        new = ag.compile(ag.Variant(mask=na, name=f"na_unmasked_{len(shape)}d"))
        old = ag.compile(ag.Variant(mask=na, name=f"na_masked_{len(shape)}d"))
        use_rewritten(old, lambda source: replace_once(source, UNMASKED, "    q_even = dict(EVEN_N=False)\n"))
        grads = [torch.autograd.grad(a(q, k, v, spatial_shape=shape), (q, k, v), do) for a in (new, old)]
        err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(*grads))
        print(f"{name}: unmasked vs masked dQ loads, max rel err {err:.1e}", flush=True)
        for label, attn in (("unmasked (new)", new), ("masked (old)", old)):
            runs[(name, label)] = (lambda a=attn, q=q, k=k, v=v, do=do, s=shape:
                                   torch.autograd.grad(a(q, k, v, spatial_shape=s), (q, k, v), do))
    times = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            times[key].append(triton.testing.do_bench(fn, warmup=25, rep=200))
    for (name, label), t in times.items():
        print(f"{name:24s} {label:16s}: " + " ".join(f"{x:.3f}" for x in t) + f" ms (median {sorted(t)[len(t) // 2]:.3f})",
              flush=True)


if __name__ == "__main__":
    main()
