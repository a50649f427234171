"""Where do document masks and block-sparse neighborhoods lose: the mask, or the short blocks?

    PYTHONPATH=.:benchmarks python benchmarks/experiments/diag_short_blocks.py [--rounds N] [--profile]

H100, bf16, D=128. Packed causal documents (B=2, L=8192, 4 x 2048) do the same work as causal
attention on B=8 sequences of 2048 tokens; blocked 3-D neighborhoods (16x32x32, kernel = stride
= 8x16x16, B=1) the same as dense attention on B=8 sequences of 2048. Timing each next to its
equivalent (attngen and Flex, interleaved rounds) separates what the mask costs (tile lists,
box arithmetic) from what short per-program loops cost. ``--profile`` adds CUDA time per kernel
for one forward+backward step of documents and of its causal equivalent.
"""
from __future__ import annotations

import argparse

import torch
import triton
from torch.profiler import ProfilerActivity, profile

import attngen as ag
from attngen import KernelConfig as C
from bench_common import compiled_flex, flex_block_mask  # noqa: E402 (benchmarks/ on sys.path)

H, D = 16, 128
DOCS, DOC_LEN = 4, 2048


def rand(*shape):
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    flex = compiled_flex()
    L = DOCS * DOC_LEN
    causal_flops = 4.0 * 8 * H * D * DOC_LEN * (DOC_LEN + 1) / 2  # docs on B=2 and causal on B=8 alike
    dense2k_flops = 4.0 * 8 * H * D * DOC_LEN * DOC_LEN

    # Packed documents, B=2, L=8192.
    doc = (torch.arange(L, device="cuda") // DOC_LEN).expand(2, L).contiguous()
    qd, kd, vd = rand(2, H, L, D), rand(2, H, L, D), rand(2, H, L, D)
    dod = torch.randn_like(qd)
    docs = ag.compile(ag.Variant(mask=ag.document() & ag.causal()))
    docs_mask = flex_block_mask(lambda b, h, qi, ki: (qi >= ki) & (doc[b, qi] == doc[b, ki]), L, "cuda", B=2)
    # Causal on B=8 sequences of one document's length.
    qc, kc, vc = rand(8, H, DOC_LEN, D), rand(8, H, DOC_LEN, D), rand(8, H, DOC_LEN, D)
    doc_ = torch.randn_like(qc)
    causal = ag.compile(ag.Variant(mask=ag.causal()))
    causal_mask = flex_block_mask(lambda b, h, qi, ki: qi >= ki, DOC_LEN, "cuda")
    dense = ag.compile(ag.Variant())
    # Blocked 3-D neighborhood, B=1: eight dense blocks of 2048 tokens.
    shape3, k3 = (16, 32, 32), (8, 16, 16)
    qn, kn, vn = rand(1, H, 16384, D), rand(1, H, 16384, D), rand(1, H, 16384, D)
    blocked = ag.compile(ag.Variant(mask=ag.neighborhood(k3, stride=k3)))

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    def step(fn, q, k, v, do):
        def run():
            torch.autograd.grad(fn(), (q, k, v), do)
        return run

    cases = {
        "docs fwd default": (fwd(lambda: docs(qd, kd, vd, document_ids=doc)), causal_flops),
        "docs fwd 128x128w8": (fwd(lambda: docs(qd, kd, vd, document_ids=doc, config=C(128, 128, 8, 3))),
                               causal_flops),
        "docs fwd Flex": (fwd(lambda: flex(qd, kd, vd, block_mask=docs_mask)), causal_flops),
        "causal2k fwd default": (fwd(lambda: causal(qc, kc, vc)), causal_flops),
        "causal2k fwd 128x128w8": (fwd(lambda: causal(qc, kc, vc, config=C(128, 128, 8, 3))), causal_flops),
        "causal2k fwd Flex": (fwd(lambda: flex(qc, kc, vc, block_mask=causal_mask)), causal_flops),
        "docs fwd+bwd": (step(lambda: docs(qd, kd, vd, document_ids=doc), qd, kd, vd, dod), 3.5 * causal_flops),
        "docs fwd+bwd Flex": (step(lambda: flex(qd, kd, vd, block_mask=docs_mask), qd, kd, vd, dod),
                              3.5 * causal_flops),
        "causal2k fwd+bwd": (step(lambda: causal(qc, kc, vc), qc, kc, vc, doc_), 3.5 * causal_flops),
        "causal2k fwd+bwd Flex": (step(lambda: flex(qc, kc, vc, block_mask=causal_mask), qc, kc, vc, doc_),
                                  3.5 * causal_flops),
        "dense2k fwd default": (fwd(lambda: dense(qc, kc, vc)), dense2k_flops),
        "dense2k fwd 128x128w8": (fwd(lambda: dense(qc, kc, vc, config=C(128, 128, 8, 3))), dense2k_flops),
        "dense2k fwd Flex": (fwd(lambda: flex(qc, kc, vc)), dense2k_flops),
        "blocked3d fwd default": (fwd(lambda: blocked(qn, kn, vn, spatial_shape=shape3)), dense2k_flops),
        "dense16k fwd default": (fwd(lambda: dense(qn, kn, vn)), 4.0 * H * D * 16384 * 16384),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for name, (fn, _) in cases.items():
        fn()
    torch.cuda.synchronize()
    for _ in range(args.rounds):
        for name, (fn, flops) in cases.items():
            rates[name].append(flops / triton.testing.do_bench(fn, warmup=25, rep=200) / 1e9)
    print(f"configs: docs {docs.last_config}, causal {causal.last_config}, blocked3d {blocked.last_config}")
    for name, r in rates.items():
        med = sorted(r)[len(r) // 2]
        print(f"{name:26s}: " + " ".join(f"{x:5.0f}" for x in r) + f"  TFLOP/s (median {med:.0f})", flush=True)

    if args.profile:
        for name in ("docs fwd+bwd", "causal2k fwd+bwd", "docs fwd+bwd Flex"):
            fn = cases[name][0]
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    fn()
                torch.cuda.synchronize()
            print(f"=== {name}: CUDA time per kernel, 10 steps", flush=True)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=50),
                  flush=True)


if __name__ == "__main__":
    main()
