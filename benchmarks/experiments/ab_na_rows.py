"""Experiment: does the neighborhood dK/dV pass lose to the band's because its query rows are
computed, not a contiguous range?

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_rows.py [--rounds N]

ncu (ncu_dkdv_*.txt): the 1-D neighborhood's dK/dV pass (B=1 H=16 L=32768, kernel 2047) executes
62% more instructions than causal attention's (B=2 H=16 L=8192, the same attended entries and
about as many query steps) and takes 3.57 against 2.66 ms. Its loop computes each step's rows
from the loop index per axis (divisions, then row-major positions from runtime grid sizes),
where the band's rows are start + arange. The generated module is rewritten as text so that
the inner loop of the 1-D case takes offs_m = first + i * BLOCK_M + arange (valid for a 1-D grid
without dilation), everything else generated; fwd+bwd timed interleaved with the generated one.
"""
from __future__ import annotations

import argparse

import torch
import triton

import attngen as ag
from rewritten import replace_once, use_rewritten  # noqa: E402 (this folder)

H, D, L, K = 16, 128, 32768, 2047
GENERAL = """            x0 = xa0 + (fa0 + i // (m1 * m2)) * TM0 + row0
            x1 = xa1 + (fa1 + (i // m2) % m1) * TM1 + row1
            x2 = xa2 + (fa2 + i % m2) * TM2 + row2
            offs_m = ((x0 * DIL0 + g0) * S1 + x1 * DIL1 + g1) * S2 + x2 * DIL2 + g2
"""
RANGE = """            offs_m = xa2 + (fa2 + i) * BLOCK_M + tl.arange(0, BLOCK_M)
            x0 = offs_m
            x1 = offs_m
            x2 = offs_m
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    q, k, v = (torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    na = ag.neighborhood(K)
    generated = ag.compile(ag.Variant(mask=na, name="na1d_generated"))
    ranged = ag.compile(ag.Variant(mask=na, name="na1d_ranged"))
    use_rewritten(ranged, lambda source: replace_once(source, GENERAL, RANGE))
    shape = (L,)
    grads = [torch.autograd.grad(a(q, k, v, spatial_shape=shape), (q, k, v), do) for a in (generated, ranged)]
    err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(*grads))
    print(f"ranged vs generated gradients: max rel err {err:.1e}", flush=True)
    runs = {name: (lambda a=a: torch.autograd.grad(a(q, k, v, spatial_shape=shape), (q, k, v), do))
            for name, a in (("generated", generated), ("ranged rows", ranged))}
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            times[name].append(triton.testing.do_bench(fn, warmup=25, rep=200))
    for name, t in times.items():
        print(f"fwd+bwd {name:12s}: " + " ".join(f"{x:.3f}" for x in t) + f" ms (median {sorted(t)[len(t) // 2]:.3f})",
              flush=True)


if __name__ == "__main__":
    main()
