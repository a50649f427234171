"""A/B: the neighborhood dK/dV shell loop with rows clamped into the grid and unmasked loads.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_shell.py [--rounds N]

SASS of the 1-D case's dK/dV pass (dkdv_*.sass): the loop over shell query boxes (window test)
is 1124 instructions per step, the inner loop 517, causal attention's unmasked loop 408. On 2-D
and 3-D grids every step runs the shell loop. Its loads carried bounds masks for rows past the
queries that reach the KV box; those rows are now moved onto the last reaching one (valid grid
positions, loads without masks) and dropped by the mask instead. "old" is the module generated
at fb8fb99 (saved beside this script in ab_na_shell_old/), "new" the current one; fwd+bwd,
interleaved rounds, H100 bf16 B=1 H=16 D=128.

Logs: ab_na_shell_all_unmasked.log (unmasked shell loads on every grid: 1-D 5% slower) and
ab_na_shell.log (1-D keeps the masks, SHELL_IN_BOUNDS; results/2026-11-24-h100-session8/experiments/).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import triton

import attngen as ag
from rewritten import use_rewritten  # noqa: E402 (this folder)

H, D = 16, 128
CASES = {"2-D 128x128 k31x31": ((128, 128), (31, 31)), "3-D 16x32x32 k7x15x15": ((16, 32, 32), (7, 15, 15)),
         "1-D 32768 k2047": ((32768,), (2047,))}
OLD = Path(__file__).resolve().parent / "ab_na_shell_old"


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
        new = ag.compile(ag.Variant(mask=na, name=f"na_shell_new_{len(shape)}d"))
        old = ag.compile(ag.Variant(mask=na, name=f"na_shell_old_{len(shape)}d"))
        use_rewritten(old, lambda _source, n=old.ir.name: (OLD / f"{n}.py").read_text())
        grads = [torch.autograd.grad(a(q, k, v, spatial_shape=shape), (q, k, v), do) for a in (new, old)]
        err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(*grads))
        print(f"{name}: new vs old gradients, max rel err {err:.1e}", flush=True)
        for label, attn in (("clamped rows (new)", new), ("masked loads (old)", old)):
            runs[(name, label)] = (lambda a=attn, q=q, k=k, v=v, do=do, s=shape:
                                   torch.autograd.grad(a(q, k, v, spatial_shape=s), (q, k, v), do))
    times = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            times[key].append(triton.testing.do_bench(fn, warmup=25, rep=200))
    for (name, label), t in times.items():
        print(f"{name:24s} {label:20s}: " + " ".join(f"{x:.3f}" for x in t) + f" ms (median {sorted(t)[len(t) // 2]:.3f})",
              flush=True)


if __name__ == "__main__":
    main()
