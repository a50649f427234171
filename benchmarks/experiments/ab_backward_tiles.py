"""A/B: the backward's tile pair for the variants that take the small backward tiles (2-D/3-D
neighborhoods, two-sided windows, tile lists), forward+backward on the H100, interleaved rounds.

A pair is (dK/dV pass: query step, KV tile own; dQ pass: query tile own, KV step), warps and
stages; the neighborhood's boxes follow from the sizes (runtime/neighborhood.plan). The
default is runtime/autograd.backward_config's small pair, (32, 64) / (64, 32), 4 warps, 3 stages.
Gradients of every pair are checked against the default pair's.

Usage: python ab_backward_tiles.py [--rounds N] [--cases na2d,na3d,window,documents,dense,causal] [--pairs w8,...]"""
from __future__ import annotations

import argparse

import torch
import triton

import attngen as ag
import attngen.runtime.autograd as ag_autograd
from attngen import KernelConfig as C

# label: ((dkdv step, dkdv own, warps, stages), (dq own, dq step, warps, stages)); None = default
PAIRS = {
    "default 32/64 + 64/32 w4 s3": None,
    "64/64 + 64/64 w4 s3": ((64, 64, 4, 3), (64, 64, 4, 3)),
    "64/64 + 64/32 w4 s3": ((64, 64, 4, 3), (64, 32, 4, 3)),
    "32/64 + 64/64 w4 s3": ((32, 64, 4, 3), (64, 64, 4, 3)),
    "32/64 + 64/32 w4 s2": ((32, 64, 4, 2), (64, 32, 4, 2)),
    "64/128 + 128/64 w8 s3": ((64, 128, 8, 3), (128, 64, 8, 3)),
    "32/128 w8 + 64/64 w4 s3": ((32, 128, 8, 3), (64, 64, 4, 3)),
    "16/64 + 64/32 w4 s3": ((16, 64, 4, 3), (64, 32, 4, 3)),
    # after the dK/dV issue order changed (2619ac9) (ab_issue_order.py): the large pair's neighbours
    "32/128 w8 + 128/64 w8 s3": ((32, 128, 8, 3), (128, 64, 8, 3)),
    "64/128 w8 s4 + 128/64 w8 s3": ((64, 128, 8, 4), (128, 64, 8, 3)),
    "64/128 w8 + 128/32 w8 s3": ((64, 128, 8, 3), (128, 32, 8, 3)),
    # the dQ pass's stages alone (1fcbf65) (2-D NA under ncu: 2 CTAs a SM, limited by shared
    # memory; with 2 stages its 160 registers would allow 3)
    "32/64 s3 + 64/32 s2 dq": ((32, 64, 4, 3), (64, 32, 4, 2)),
    "32/64 s3 + 64/32 s4 dq": ((32, 64, 4, 3), (64, 32, 4, 4)),
    "32/64 s3 + 64/16 s3 dq": ((32, 64, 4, 3), (64, 16, 4, 3)),
    # dense and causal (cabf76b): dK/dV owning 64 keys and stepping 128 queries (half the
    # accumulator registers of 128 keys), dQ stepping 128 keys, and 4-warp dK/dV CTAs two a SM
    "k64 128/64 w8 + 128/64 w8 s3": ((128, 64, 8, 3), (128, 64, 8, 3)),
    "k64 128/64 w8 s2 + 128/64 w8 s3": ((128, 64, 8, 2), (128, 64, 8, 3)),
    "k64 64/128 w8 + 128/128 w8 s2": ((64, 128, 8, 3), (128, 128, 8, 2)),
    "k64 64/64 w4 + 128/64 w8 s3": ((64, 64, 4, 3), (128, 64, 8, 3)),
}


def cases():
    torch.manual_seed(0)
    docs = torch.repeat_interleave(torch.arange(4, device="cuda"), 2048)[None].expand(2, -1).contiguous()
    return {
        # name: (variant, B, H, L, call kwargs, attended entries per (b, h))
        "na2d": (ag.Variant(mask=ag.neighborhood(31)), 1, 16, 128 * 128, {"spatial_shape": (128, 128)}),
        "na3d": (ag.Variant(mask=ag.neighborhood((7, 15, 15))), 1, 16, 16 * 32 * 32,
                 {"spatial_shape": (16, 32, 32)}),
        "window": (ag.Variant(mask=ag.sliding_window(1023)), 2, 16, 8192, {}),
        "documents": (ag.Variant(mask=ag.causal() & ag.document()), 2, 16, 8192, {"document_ids": docs}),
        "dense": (ag.Variant(), 2, 16, 8192, {}),
        "causal": (ag.Variant(mask=ag.causal()), 2, 16, 8192, {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default="na2d,na3d,window,documents")
    ap.add_argument("--pairs", default="", help="comma-separated substrings: only pairs whose label holds one "
                    "(the default pair always runs)")
    args = ap.parse_args()
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    default_fn = ag_autograd.backward_config
    all_cases = cases()
    for name in args.cases.split(","):
        variant, B, H, L, kwargs = all_cases[name]
        D = 128
        q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        attn = ag.compile(variant)

        def step():
            return torch.autograd.grad(attn(qg, kg, vg, **kwargs), (qg, kg, vg), do)

        ref = step()
        times: dict[str, list[float]] = {}
        wanted = [w for w in args.pairs.split(",") if w]
        for label, pair in PAIRS.items():
            if wanted and pair is not None and not any(w in label for w in wanted):
                continue
            ag_autograd.backward_config = default_fn if pair is None else (
                lambda device, forward, small, pair=pair: (C(pair[0][0], pair[0][1], *pair[0][2:]),
                                                           C(pair[1][0], pair[1][1], *pair[1][2:])))
            try:
                got = step()
                err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, ref))
                print(f"{name} {label}: grads vs default rel err {err:.1e}", flush=True)
                times[label] = []
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"{name} {label}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        for _ in range(args.rounds):
            for label in times:
                pair = PAIRS[label]
                ag_autograd.backward_config = default_fn if pair is None else (
                    lambda device, forward, small, pair=pair: (C(pair[0][0], pair[0][1], *pair[0][2:]),
                                                               C(pair[1][0], pair[1][1], *pair[1][2:])))
                times[label].append(triton.testing.do_bench(step, warmup=50, rep=300))
        ag_autograd.backward_config = default_fn
        base = min(times[next(iter(times))])
        for label, ms in times.items():
            print(f"{name} {label:28s} fwd+bwd ms per round: {' '.join(f'{t:.3f}' for t in ms)}  "
                  f"best x{base / min(ms):.3f} default", flush=True)


if __name__ == "__main__":
    main()
