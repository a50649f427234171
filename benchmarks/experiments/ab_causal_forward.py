"""A/B: causal forward configs against SDPA's cuDNN kernel in the same interleaved rounds.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_causal_forward.py [--rounds N]

Issue 6 asks the causal forward (B=2 H=16 L=8192 D=128, bf16) for 0.85x cuDNN; the comparison
runs measured 0.80-0.83x with the shipped 64x64, 4 warps. Earlier config rounds disagreed:
128x128 with 8 warps won 3 of 4 rounds at bb8b5b0 and ac91873 and lost 2 of 3 at 987419b
(ab_halves.py and an earlier script). The result, at d7f4df4: 128x128 on 8 warps, shipped as the
`band_causal` class. Here every config and cuDNN are timed round after round, and
each round's ratio to cuDNN printed, so that clock drift hits them alike.
"""
from __future__ import annotations

import argparse

import torch
import triton

import attngen as ag
from bench_common import sdpa_fn  # noqa: E402 (benchmarks/ on the path)
from rewritten import interleaved_ms  # noqa: E402 (this folder)

CONFIGS = {
    "64x64 w4 s3 (shipped)": ag.KernelConfig(64, 64, 4, 3),
    "128x128 w8 s3": ag.KernelConfig(128, 128, 8, 3),
    "128x128 w8 s2": ag.KernelConfig(128, 128, 8, 2),
    "128x64 w8 s3": ag.KernelConfig(128, 64, 8, 3),
    "128x64 w4 s3": ag.KernelConfig(128, 64, 4, 3),
    "halves 256x64 w8 s3": ag.KernelConfig(256, 64, 8, 3, halves=True),
    "halves 128x64 w4 s3": ag.KernelConfig(128, 64, 4, 3, halves=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--head-dim", type=int, default=128)
    args = ap.parse_args()
    D = args.head_dim
    B, H, L = (2, 16, 8192) if D == 128 else (4, 16, 4096)
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__,
          f"B={B} H={H} L={L} D={D}", flush=True)
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    attn = ag.compile(ag.Variant(mask=ag.causal()))
    cudnn = sdpa_fn("sdpa_cudnn", q, k, v, causal=True)
    ref = cudnn().float()
    runs = {"cudnn": cudnn}
    for label, cfg in CONFIGS.items():
        try:
            with torch.no_grad():
                err = (attn(q, k, v, config=cfg).float() - ref).abs().max().item()
            print(f"{label}: max abs err against cuDNN {err:.1e}", flush=True)
            runs[label] = (lambda c=cfg: _no_grad(attn, q, k, v, config=c))
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"{label}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    times = interleaved_ms(runs, args.rounds)
    flops = 4 * B * H * L * L * D * 0.5
    for label, t in times.items():
        rates = [flops / ms / 1e9 for ms in t]
        ratios = [c / ms for c, ms in zip(times["cudnn"], t)]
        print(f"{label:24s}: " + " ".join(f"{x:4.0f}" for x in rates)
              + f" TF/s (median {sorted(rates)[len(rates) // 2]:.0f}); x cuDNN per round "
              + " ".join(f"{r:.3f}" for r in ratios), flush=True)


def _no_grad(attn, *args, **kwargs):
    with torch.no_grad():
        return attn(*args, **kwargs)


if __name__ == "__main__":
    main()
