"""Document masks (tile lists): forward configs and backward tile sizes, against Flex.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_documents.py [DOCS ...]   (default 4 16 64)

H100, bf16, B=2 H=16 L=8192 D=128, causal packed documents of equal length. The backward of
tile-list masks takes the small tiles (64/32, 4 warps); causal-like bands take the large
ones (128/64, 8 warps). Packed documents are causal-like inside each document, so the large
tiles might pay when documents are long; this times both (interleaved rounds), the forward's
configs, and Flex on the same inputs.
"""
import sys

import torch
import triton

import attngen as ag
import attngen.runtime.autograd as autograd
from bench_common import compiled_flex, flex_block_mask  # noqa: E402 (benchmarks/ on sys.path)

B, H, L, D = 2, 16, 8192, 128
ROUNDS = 3
real_backward_config = autograd.backward_config


def forced_tiles(small: bool | None):
    def backward_config(device, forward, small_tiles):
        return real_backward_config(device, forward, small_tiles if small is None else small)
    return backward_config


def main() -> None:
    flex = compiled_flex()
    attn = ag.compile(ag.Variant(mask=ag.document() & ag.causal()))
    for docs in [int(a) for a in sys.argv[1:]] or (4, 16, 64):
        n = L // docs
        doc = (torch.arange(L, device="cuda") // n).expand(B, L).contiguous()
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        mask = flex_block_mask(lambda b, h, qi, ki: (qi >= ki) & (doc[b, qi] == doc[b, ki]), L, "cuda", B=B)
        fwd_flops = 4 * B * H * docs * n * (n + 1) / 2 * D
        runs = {}

        def add(name, fn, flops):
            fn()
            runs.setdefault(name, []).append(flops / triton.testing.do_bench(fn, warmup=50, rep=300) / 1e9)

        def ours(config=None):
            def fn():
                with torch.no_grad():
                    attn(q, k, v, document_ids=doc, config=config)
            return fn

        def ours_bwd():
            out = attn(q, k, v, document_ids=doc)
            torch.autograd.grad(out, (q, k, v), do)

        def flex_fwd():
            with torch.no_grad():
                flex(q, k, v, block_mask=mask)

        def flex_bwd():
            out = flex(q, k, v, block_mask=mask)
            torch.autograd.grad(out, (q, k, v), do)

        for _ in range(ROUNDS):
            add("fwd heuristic", ours(), fwd_flops)
            for cfg in (ag.KernelConfig(128, 128, 8, 3), ag.KernelConfig(128, 64, 8, 3), ag.KernelConfig(64, 64, 4, 3)):
                add(f"fwd {cfg.block_m}x{cfg.block_n} w{cfg.num_warps}", ours(cfg), fwd_flops)
            add("fwd Flex", flex_fwd, fwd_flops)
            for small in (True, False):
                autograd.backward_config = forced_tiles(small)
                add(f"fwd+bwd {'small' if small else 'large'} bwd tiles", ours_bwd, 3.5 * fwd_flops)
            autograd.backward_config = real_backward_config
            add("fwd+bwd Flex", flex_bwd, 3.5 * fwd_flops)
        print(f"--- {docs} documents x {n} (config picked: {attn.last_config})", flush=True)
        for name, r in runs.items():
            print(f"{name:28s}: " + " ".join(f"{x:.0f}" for x in r) + f"  TFLOP/s (median {sorted(r)[1]:.0f})",
                  flush=True)


if __name__ == "__main__":
    main()
