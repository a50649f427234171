"""A/B: attngen's sigmoid forward against attngen's softmax forward (issue 5's 1.15x target) on
B=2 H=16 L=8192 D=128 bf16, dense and causal, each at its default config, in interleaved rounds
(clocks drift 3-8% under sustained load, so ratios are taken within a round).

    PYTHONPATH=. python benchmarks/experiments/ab_sigmoid.py [ROUNDS]"""
from __future__ import annotations

import argparse
import statistics

import torch
import triton

import attngen as ag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds", nargs="?", type=int, default=6, help="interleaved rounds (default 6)")
    rounds = ap.parse_args().rounds
    B, H, L, D = 2, 16, 8192, 128
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for name, mask, density in (("dense", None, 1.0), ("causal", ag.causal(), 0.5)):
        soft = ag.compile(ag.Variant(mask=mask))
        sig = ag.compile(ag.Variant(mask=mask, norm=ag.sigmoid()))
        ref_sig = ag.reference(ag.Variant(mask=mask, norm=ag.sigmoid()))
        flops = 4 * B * H * L * L * D * density
        with torch.no_grad():
            for attn, variant in ((soft, ag.Variant(mask=mask)), (sig, ag.Variant(mask=mask, norm=ag.sigmoid()))):
                out = attn(q[:1, :1], k[:1, :1], v[:1, :1])
                ref = ag.reference(variant)(q[:1, :1], k[:1, :1], v[:1, :1])
                err = ((out.double() - ref).norm() / ref.norm()).item()
                print(f"{name} {attn.ir.norm}: rel err vs float64 {err:.1e}, config {attn.last_config}", flush=True)
            del ref_sig
            tf = {"softmax": [], "sigmoid": []}
            for _ in range(rounds):
                for label, attn in (("softmax", soft), ("sigmoid", sig)):
                    tf[label].append(flops / triton.testing.do_bench(lambda: attn(q, k, v), warmup=50, rep=300) / 1e9)
        ratios = [a / b for a, b in zip(tf["sigmoid"], tf["softmax"])]
        for label, vals in tf.items():
            print(f"{name} {label:8s} TF/s per round: {' '.join(f'{t:.0f}' for t in vals)}", flush=True)
        print(f"{name} sigmoid / softmax per round: {' '.join(f'{r:.3f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.3f}, min {min(ratios):.3f}", flush=True)


if __name__ == "__main__":
    main()
