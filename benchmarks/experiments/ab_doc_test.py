"""Experiment: what does the document test cost in the partial tiles of packed causal documents?

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_doc_test.py [--rounds N]

With documents aligned to the 64-token tiles (B=2 H=16 L=8192 D=128, 4 x 2048) every partial
tile is a diagonal tile, cut by the causal part only, so the document test there (a gather of
64 ids and a compare per element) changes nothing. The generated forward is rewritten as text
without it (valid for this layout only) and timed against the generated one and the causal
equivalent (B=8 L=2048), interleaved, forward only.
"""
from __future__ import annotations

import argparse

import torch
import triton

import attngen as ag
from rewritten import replace_once, use_rewritten  # noqa: E402 (this folder)

B, H, D, DOCS, DOC_LEN = 2, 16, 128, 4, 2048
DOC_TEST = ("((row0 == _read(document_ids_ptr + off_b * document_ids_stride0 + kv_idx * document_ids_stride1, "
            "DOCUMENT_IDS_AS_F32)) != 0) & ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    L = DOCS * DOC_LEN
    flops = 4.0 * B * H * D * DOCS * DOC_LEN * (DOC_LEN + 1) / 2
    doc = (torch.arange(L, device="cuda") // DOC_LEN).expand(B, L).contiguous()
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qc, kc, vc = (torch.randn(8, H, DOC_LEN, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    mask = ag.document() & ag.causal()
    generated = ag.compile(ag.Variant(mask=mask, name="docs_generated"))
    no_test = ag.compile(ag.Variant(mask=mask, name="docs_no_test"))

    def without_doc_test(source: str) -> str:
        start = source.index(f"def _{no_test.ir.name}_weights(")
        end = source.index("@triton.jit", start)
        return source[:start] + replace_once(source[start:end], DOC_TEST, "") + source[end:]

    use_rewritten(no_test, without_doc_test)
    causal = ag.compile(ag.Variant(mask=ag.causal()))
    with torch.no_grad():
        ref = generated(q, k, v, document_ids=doc).float()
        err = ((no_test(q, k, v, document_ids=doc).float() - ref).norm() / ref.norm()).item()
        print(f"without the document test: rel err vs generated {err:.2e}", flush=True)
        cases = {"docs generated": lambda: generated(q, k, v, document_ids=doc),
                 "docs without the doc test": lambda: no_test(q, k, v, document_ids=doc),
                 "causal B=8 L=2048": lambda: causal(qc, kc, vc)}
        rates = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                rates[name].append(flops / triton.testing.do_bench(fn, warmup=25, rep=200) / 1e9)
    for name, r in rates.items():
        med = sorted(r)[len(r) // 2]
        print(f"{name:26s}: " + " ".join(f"{x:5.0f}" for x in r) + f"  TFLOP/s (median {med:.0f})", flush=True)


if __name__ == "__main__":
    main()
