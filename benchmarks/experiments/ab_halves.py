"""A/B: attngen's generated forward at its default config against the two-halves kernel
(KernelConfig.halves) at several tile shapes, per family, interleaved over ROUNDS rounds.

Usage: python ab_halves.py [--rounds N] [--cases dense,causal,...]
Prints one line per (case, config) with the median TFLOP/s of each round and the ratio of the
best round to the default's best round."""
from __future__ import annotations

import argparse
import time

import torch
import triton

import attngen as ag
from attngen import KernelConfig as C


@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


@ag.score_mod
def softcap(score, b, h, q_idx, kv_idx):
    return 30.0 * torch.tanh(score / 30.0)


D128 = [C(256, 64, 8, 3, halves=True), C(256, 64, 8, 4, halves=True), C(256, 32, 8, 3, halves=True),
        C(128, 128, 8, 3), C(128, 128, 8, 2), C(128, 64, 8, 3), C(64, 64, 4, 3)]
D64 = [C(256, 64, 8, 3, halves=True), C(256, 128, 8, 2, halves=True), C(128, 64, 4, 3, halves=True),
       C(256, 32, 8, 3, halves=True), C(128, 128, 8, 3), C(128, 64, 4, 3), C(64, 64, 4, 3), C(128, 64, 8, 4)]

# name: (variant, B, H, L, D, density, extra tensors builder, candidate configs)
CASES = {
    "dense": (ag.Variant(), 2, 16, 8192, 128, 1.0, None, D128),
    "causal": (ag.Variant(mask=ag.causal()), 2, 16, 8192, 128, 0.5, None, D128),
    "window": (ag.Variant(mask=ag.sliding_window(1023)), 2, 16, 8192, 128, 1024 / 8192, None, D128),
    "alibi": (ag.Variant(score=alibi, mask=ag.causal()), 2, 16, 8192, 128, 0.5,
              lambda: {"slopes": torch.rand(16, device="cuda")}, D128),
    "softcap": (ag.Variant(score=softcap), 2, 16, 8192, 128, 1.0, None, D128),
    "sigmoid": (ag.Variant(norm=ag.sigmoid()), 2, 16, 8192, 128, 1.0, None, D128),
    "sigmoid_causal": (ag.Variant(mask=ag.causal(), norm=ag.sigmoid()), 2, 16, 8192, 128, 0.5, None, D128),
    "dense64": (ag.Variant(), 4, 16, 4096, 64, 1.0, None, D64),
    "causal64": (ag.Variant(mask=ag.causal()), 4, 16, 4096, 64, 0.5, None, D64),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--budget", type=float, default=500, help="seconds; stop starting new cases after it")
    args = ap.parse_args()
    stop = time.time() + args.budget
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    for name in args.cases.split(","):
        if time.time() > stop:
            print("budget spent", flush=True)
            break
        variant, B, H, L, D, density, extra, configs = CASES[name]
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        tensors = extra() if extra else {}
        attn = ag.compile(variant)
        flops = 4 * B * H * L * L * D * density
        with torch.no_grad():
            ref = attn(q, k, v, **tensors)
            default = attn.last_config
            runs = {"default": None, **{f"{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}"
                                        f"{' halves' if c.halves else ''}": c for c in configs if c != default}}
            results: dict[str, list[float]] = {label: [] for label in runs}
            for label, c in list(runs.items()):
                try:
                    out = attn(q, k, v, config=c, **tensors)
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    if err > 2e-2:
                        print(f"{name}: {label}: WRONG (rel err {err:.2e})", flush=True)
                        del runs[label]
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"{name}: {label}: FAILED {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                    del runs[label]
            for _ in range(args.rounds):
                for label, c in runs.items():
                    ms = triton.testing.do_bench(lambda: attn(q, k, v, config=c, **tensors))
                    results[label].append(flops / ms / 1e9)
        base = max(results["default"])
        for label in runs:
            tf = results[label]
            shown = f"default ({default.block_m}x{default.block_n} w{default.num_warps} s{default.num_stages})" \
                if label == "default" else label
            print(f"{name}: {shown}: {' '.join(f'{x:.0f}' for x in tf)} TF/s  x{max(tf) / base:.3f}", flush=True)


if __name__ == "__main__":
    main()
