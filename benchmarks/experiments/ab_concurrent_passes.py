"""A/B: the backward's dQ pass on a side stream beside dK/dV, or after it (H100, bf16).

    PYTHONPATH=. python benchmarks/experiments/ab_concurrent_passes.py [--rounds N] [--cases dense,causal] [--flag NAME]

CONCURRENT_PASSES is the generated module's constant. Prediction: each pass's last wave
leaves SMs idle for a few percent of its time; side by side, the other pass fills them, so
forward+backward gains 2-4% where both passes are long, less on small problems.
Forward+backward TFLOP/s (3.5x the forward's attended-entry FLOPs), interleaved rounds.
"""
import argparse

import torch
import triton

import attngen as ag

B, H, L, D = 2, 16, 8192, 128


def cases():
    doc4 = (torch.arange(L, device="cuda") // (L // 4)).expand(B, L).contiguous()
    doc16 = (torch.arange(L, device="cuda") // (L // 16)).expand(B, L).contiguous()
    causal = L * (L + 1) / 2
    yield "dense", ag.Variant(), (B, H, L, D), L * L, {}
    yield "causal", ag.Variant(mask=ag.causal()), (B, H, L, D), causal, {}
    yield "window 1024", ag.Variant(mask=ag.sliding_window(1023, 0)), (B, H, L, D), \
        sum(min(i + 1, 1024) for i in range(L)), {}
    yield "documents 4x2048", ag.Variant(mask=ag.document() & ag.causal()), (B, H, L, D), \
        4 * 2048 * 2049 / 2, {"document_ids": doc4}
    yield "documents 16x512", ag.Variant(mask=ag.document() & ag.causal()), (B, H, L, D), \
        16 * 512 * 513 / 2, {"document_ids": doc16}
    na = ag.Variant(mask=ag.neighborhood((31, 31)))
    yield "NA 2-D 128x128 k31", na, (1, 16, 128 * 128, 128), None, {"spatial_shape": (128, 128)}
    na1 = ag.Variant(mask=ag.neighborhood(2047))
    yield "NA 1-D 32768 k2047", na1, (1, 16, 32768, 128), None, {"spatial_shape": (32768,)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--cases", default="", help="comma-separated prefixes of the case names (default: all)")
    # CONTIGUOUS_RUNS existed at 244a5d8 (measured and removed)
    ap.add_argument("--flag", default="CONCURRENT_PASSES", help="the generated module's constant to switch")
    args = ap.parse_args()
    ONLY, ROUNDS, FLAG = [c for c in args.cases.split(",") if c], args.rounds, args.flag
    for name, variant, (b, h, l, d), entries, kwargs in cases():
        if ONLY and not any(name.startswith(c) for c in ONLY):
            continue
        attn = ag.compile(variant)
        q, k, v = (torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        module = attn.module(q.device)

        def step():
            out = attn(q, k, v, **kwargs)
            torch.autograd.grad(out, (q, k, v), do)

        res = {True: [], False: []}
        for _ in range(ROUNDS):
            for concurrent in (True, False):
                setattr(module, FLAG, concurrent)
                step()
                res[concurrent].append(triton.testing.do_bench(step, warmup=50, rep=300))
        setattr(module, FLAG, True)
        for concurrent, ms in res.items():
            med = sorted(ms)[len(ms) // 2]
            rate = f"{3.5 * 4 * b * h * entries * d / med / 1e9:.0f} TFLOP/s" if entries else ""
            print(f"{name:20s} {FLAG}={concurrent!s:5s}: " + " ".join(f"{x:.3f}" for x in ms)
                  + f" ms (median {med:.3f}) {rate}", flush=True)


if __name__ == "__main__":
    main()
