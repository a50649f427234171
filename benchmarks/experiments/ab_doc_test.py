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
from packed_documents import FLOPS, packed_documents  # noqa: E402 (this folder)
from rewritten import interleaved_ms, print_rates, replace_once, use_rewritten  # noqa: E402 (this folder)

DOC_TEST = ("((row0 == _read(document_ids_ptr + off_b * document_ids_stride0 + kv_idx * document_ids_stride1, "
            "DOCUMENT_IDS_AS_F32)) != 0) & ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    inputs = packed_documents()
    flops, doc, q, k, v, (qc, kc, vc) = FLOPS, inputs.doc, inputs.q, inputs.k, inputs.v, inputs.causal_qkv
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
        print_rates(interleaved_ms(cases, args.rounds), flops, 26)


if __name__ == "__main__":
    main()
