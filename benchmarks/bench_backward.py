"""Forward+backward benchmark: attngen's generated backward against FlexAttention.

    PYTHONPATH=. python benchmarks/bench_backward.py [--out DIR]

bf16, B=2, H=16, L=8192, D=128: dense, causal, causal sliding window of 1024 tokens (the
cases of PEERS.md). One training step is ``attn(q, k, v).backward(dout)``; TFLOP/s count
attended entries x 4 x D x 3.5 (forward + backward), as PEERS.md does. Gradients are
checked against Flex's (relative L2). Writes DIR/backward.md (default $OUT, else
benchmarks/results/latest).
"""
from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import torch
import triton

import attngen as ag
from attngen.testing import relative_error

B, H, L, D = 2, 16, 8192, 128
WINDOW = 1024


def cases():
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b, h, q, k):
        return q >= k

    def window(b, h, q, k):
        return (q >= k) & (q - k < WINDOW)

    attended_window = sum(min(i + 1, WINDOW) for i in range(L))
    yield "dense", ag.Variant(), None, L * L
    yield "causal", ag.Variant(mask=ag.causal()), create_block_mask(causal, None, None, L, L, device="cuda"), \
        L * (L + 1) // 2
    yield f"sliding window {WINDOW} causal", ag.Variant(mask=ag.sliding_window(WINDOW - 1, 0)), \
        create_block_mask(window, None, None, L, L, device="cuda"), attended_window


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results/latest"))
    args = parser.parse_args()
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    rows = []
    for name, variant, block_mask, attended in cases():
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
                   for _ in range(3))
        dout = torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        attn = ag.compile(variant)
        steps = {"attngen": lambda: attn(q, k, v).backward(dout),
                 "flex": lambda: flex(q, k, v, block_mask=block_mask).backward(dout)}
        grads = {}
        for backend, step in steps.items():
            for t in (q, k, v):
                t.grad = None
            step()
            grads[backend] = [t.grad.clone() for t in (q, k, v)]
        errors = [relative_error(a, b) for a, b in zip(grads["attngen"], grads["flex"])]
        flops = 4 * B * H * attended * D * 3.5
        ms = {backend: triton.testing.do_bench(step, warmup=25, rep=100) for backend, step in steps.items()}
        tf = {backend: flops / t / 1e9 for backend, t in ms.items()}
        rows.append(f"| {name} | {ms['attngen']:.3f} ms, {tf['attngen']:.0f} | {ms['flex']:.3f} ms, {tf['flex']:.0f} | "
                    f"x{tf['attngen'] / tf['flex']:.2f} | {max(errors):.1e} |")
        print(rows[-1], flush=True)
    header = [
        "# attngen forward+backward benchmark", "",
        f"- date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
        f"- GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, Triton {triton.__version__}",
        f"- bf16, B={B} H={H} L={L} D={D}; one step = forward + backward; median of do_bench(25, 100)",
        "- TFLOP/s = 4 x attended entries x D x 3.5; x = attngen / Flex; err = max relative L2 of dq, dk, dv "
        "against Flex's", "",
        "| case | attngen (TFLOP/s) | FlexAttention | x Flex | grad err |", "|---|---|---|---|---|",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backward.md").write_text("\n".join(header + rows) + "\n")
    print(f"wrote {out / 'backward.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
