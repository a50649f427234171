"""Experiment: what is left between packed documents walked as runs and causal attention on the
same work, in the forward?

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_tile_order.py [--rounds N]

After the runs change, packed causal documents (B=2 H=16 L=8192 D=128, 4 x 2048) ran 346-360
TFLOP/s forward against 379-385 for causal attention on B=8 sequences of 2048 (the band kernel,
same 64x64 tiles). Two differences remain, each tried here as a text rewrite of the generated
forward (the module is otherwise the generated one):
  reversed   programs in reverse order, as the band kernel runs causal-like masks (the last
             query tiles of a band see the most keys, so they start first)
  longest    programs in order of decreasing run length (longest-processing-time first): a
             permutation computed on the host from the runs, read by each program at its start
  two_loops  the band kernel's loop shape: full tiles, then the partial ones after them (valid
             for causal documents, whose runs have no partial tile before the full ones)
Interleaved rounds, forward only, against the generated kernel and the causal equivalent.
"""
from __future__ import annotations

import argparse

import torch
import triton

import attngen as ag
from packed_documents import FLOPS, packed_documents  # noqa: E402 (this folder)
from rewritten import interleaved_ms, print_rates, use_rewritten  # noqa: E402 (this folder)

PID = "    pid_m = tl.program_id(0)\n"
FIRST_LOOP = "        for start_n in range(tl.load(runs) * BLOCK_N, full_lo, BLOCK_N):\n"


def forward_slice(source: str, name: str) -> tuple[int, int]:
    start = source.index(f"def {name}_fwd(")
    return start, source.index("@triton.jit", start)


def rewrite(source: str, name: str, kind: str) -> str:
    start, end = forward_slice(source, name)
    body = source[start:end]
    assert body.count(PID) == 1 and body.count(FIRST_LOOP) == 1, "generated forward changed: update the experiment"
    if kind == "reversed":
        body = body.replace(PID, "    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)\n")
    elif kind == "longest":
        # the order lies in partial_index[b, h, 0, :] (the runs walk never reads the lists)
        body = body.replace(PID, "    pid_m = tl.load(partial_index + (tl.program_id(1) // HQ) * stride_ib"
                                 " + tl.program_id(0))\n")
    elif kind == "two_loops":
        # drop the (empty, for causal documents) loop over partial tiles before the full ones
        i = body.index(FIRST_LOOP)
        j = body.index("        for start_n in range(full_lo, full_hi, BLOCK_N):\n")
        body = body[:i] + body[j:]
    return source[:start] + body + source[end:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    inputs = packed_documents()
    flops, doc, q, k, v, (qc, kc, vc) = FLOPS, inputs.doc, inputs.q, inputs.k, inputs.v, inputs.causal_qkv
    mask = ag.document() & ag.causal()
    variants = {}
    for kind in ("generated", "reversed", "longest", "two_loops"):
        attn = ag.compile(ag.Variant(mask=mask, name=f"docs_{kind}"))
        if kind != "generated":
            use_rewritten(attn, lambda source, a=attn, k=kind: rewrite(source, a.ir.name, k))
        variants[kind] = attn
    causal = ag.compile(ag.Variant(mask=ag.causal()))
    with torch.no_grad():
        ref = variants["generated"](q, k, v, document_ids=doc).float()
        for kind, attn in variants.items():
            attn(q, k, v, document_ids=doc)
            (_, lists), = attn._tiles._entries.values()
            assert lists.runs is not None
            if kind == "longest":
                runs = lists.runs  # (B, 1, rows, 4)
                length = runs[..., 3] - runs[..., 0]
                order = torch.sort(length, dim=-1, descending=True, stable=True).indices.to(torch.int32)
                rows = order.shape[-1]
                assert lists.partial_index.shape[-1] >= rows
                lists.partial_index[:, :, 0, :rows] = order
            err = ((attn(q, k, v, document_ids=doc).float() - ref).norm() / ref.norm()).item()
            print(f"{kind}: rel err vs generated {err:.2e}", flush=True)
        cases = {f"docs {kind}": (lambda a=attn: a(q, k, v, document_ids=doc)) for kind, attn in variants.items()}
        cases["causal B=8 L=2048"] = lambda: causal(qc, kc, vc)
        print_rates(interleaved_ms(cases, args.rounds), flops, 24)


if __name__ == "__main__":
    main()
