"""Normalization benchmark: sigmoid attention and softmax with sinks against attngen's own
softmax and FlexAttention's softmax (which cannot change the normalization).

    PYTHONPATH=. python benchmarks/bench_normalizations.py [--out DIR] [--smoke]

bf16, B=2, H=16, L=8192, D=128, dense and causal (issue "Beyond softmax"), forward and
forward+backward. TFLOP/s count attended entries: 4 x B x H x entries x D forward, x3.5 for
forward+backward. Each attngen output is checked against the float64 reference on a sample
of query rows first. Writes DIR/normalizations.md (default $OUT, else benchmarks/results/normalizations/).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
import triton

import attngen as ag
from attngen.testing import relative_error

sys.path.insert(0, str(Path(__file__).parent))
from result_files import default_out, git_commit  # noqa: E402 - benchmarks/ is a folder of scripts

D = 128


def variants(mask) -> dict[str, ag.Variant]:
    return {"attngen softmax": ag.Variant(mask=mask), "attngen sigmoid": ag.Variant(mask=mask, norm=ag.sigmoid()),
            "attngen softmax+sinks": ag.Variant(mask=mask, norm=ag.softmax(sink=True))}


def check_rows(variant: ag.Variant, q, k, v, tensors, rows: int = 64) -> float:
    """Relative error of the last ``rows`` queries against the float64 reference (whose
    score matrix for the full problem would not fit)."""
    attn = ag.compile(variant)
    with torch.no_grad():
        out = attn(q, k, v, **tensors)[:, :2, -rows:]
        # queries are the last rows: a causal mask then needs the bottom-right alignment
        ref_variant = ag.Variant(mask=ag.causal(bottom_right=True), norm=variant.norm) if variant.mask else \
            ag.Variant(norm=variant.norm)
        small = {n: t[:2] if n == "sinks" else t for n, t in tensors.items()}
        ref = ag.reference(ref_variant)(q[:, :2, -rows:], k[:, :2], v[:, :2], **small)
    return relative_error(out, ref)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: $OUT, else benchmarks/results/normalizations/)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script, not the GPU)")
    args = parser.parse_args()
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, L = (1, 2, 256) if args.smoke else (2, 16, 8192)
    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    for case, mask in (("dense", None), ("causal", ag.causal())):
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
                   for _ in range(3))
        dout = torch.randn_like(q)
        sinks = torch.randn(H, device="cuda", requires_grad=True)
        attended = L * L if mask is None else L * (L + 1) // 2
        flops = 4 * B * H * attended * D
        block_mask = create_block_mask(lambda b, h, i, j: i >= j, None, None, L, L, device="cuda") if mask else None
        fns = {name: (ag.compile(var), {"sinks": sinks} if getattr(var.norm, "sink", False) else {})
               for name, var in variants(mask).items()}
        results = {}
        for name, (attn, tensors) in fns.items():
            err = check_rows(attn.variant, q, k, v, tensors)
            with torch.no_grad():
                fwd = triton.testing.do_bench(lambda: attn(q, k, v, **tensors), warmup=25, rep=100)
            step = triton.testing.do_bench(lambda: attn(q, k, v, **tensors).backward(dout), warmup=25, rep=100)
            results[name] = (fwd, step, err)
        with torch.no_grad():
            fwd = triton.testing.do_bench(lambda: flex(q, k, v, block_mask=block_mask), warmup=25, rep=100)
        step = triton.testing.do_bench(lambda: flex(q, k, v, block_mask=block_mask).backward(dout), warmup=25, rep=100)
        results["FlexAttention softmax"] = (fwd, step, None)
        base_fwd, base_step, _ = results["attngen softmax"]
        for name, (fwd, step, err) in results.items():
            rows.append(f"| {case} | {name} | {fwd:.3f} ms, {flops / fwd / 1e9:.0f} | x{base_fwd / fwd:.2f} | "
                        f"{step:.3f} ms, {3.5 * flops / step / 1e9:.0f} | x{base_step / step:.2f} | "
                        f"{'-' if err is None else f'{err:.1e}'} |")
            print(rows[-1], flush=True)
    header = [
        "# attngen normalization benchmark", "",
        f"- date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
        f"- GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, Triton {triton.__version__}, "
        f"attngen {ag.__version__} (commit {git_commit()})",
        f"- bf16, B={B} H={H} L={L} D={D}; median of do_bench(25, 100); TFLOP/s on attended entries "
        "(x3.5 for forward+backward); x = attngen softmax's time / this row's (>1: faster); err = relative L2 "
        "of 64 query rows against the float64 reference", "",
        "| mask | kernel | forward | x softmax | forward+backward | x softmax | err |",
        "|---|---|---|---|---|---|---|",
    ]
    out = args.out or default_out("normalizations")
    out.mkdir(parents=True, exist_ok=True)
    (out / "normalizations.md").write_text("\n".join(header + rows) + "\n")
    print(f"wrote {out / 'normalizations.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
