"""Experiment: do tile-list masks lose to bands because of the index loads in their loops?

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_tile_runs.py [--rounds N]

Packed causal documents (B=2 H=16 L=8192 D=128, 4 x 2048) ran 313 TFLOP/s forward where causal
attention on the same work (B=8 sequences of 2048) ran 387 with the same 64x64 tiles
(diag_short_blocks.log); the backward's dQ pass took 629 us against 411. The generated module
for documents is rewritten as text so that each loop over full tiles walks a range, from the
first listed tile for as many tiles as are listed, instead of loading each tile's index (valid
here: every query tile's full tiles are contiguous, and so is every KV tile's), in the
forward, the dQ pass and the dK/dV pass. Everything else stays generated code. Interleaved rounds
against the generated module, Flex and the causal equivalent; backward with the small (default for
tile lists) and the large (default for causal) tiles.

Run against the source generated at commit 4bef216 (log: results/2026-11-24-h100-session8/
experiments/ab_tile_runs.log). The templates now walk runs themselves (TileLists.runs), so the
rewrites no longer match and the script stops at its first assert.
"""
from __future__ import annotations

import argparse

import torch
import triton

import attngen as ag
from packed_documents import B, FLOPS, L, packed_documents  # noqa: E402 (this folder)
import attngen.runtime.autograd as autograd
from bench_common import compiled_flex, flex_block_mask  # noqa: E402 (benchmarks/ on sys.path)
from rewritten import interleaved_ms, print_rates, replace_once, use_rewritten  # noqa: E402 (this folder)

REWRITES = [
    # forward
    ("    for i in range(0, n_full):\n        start_n = tl.load(full_index + index_off + i) * BLOCK_N\n",
     "    first_full = tl.load(full_index + index_off)\n"
     "    for start_n in range(first_full * BLOCK_N, (first_full + n_full) * BLOCK_N, BLOCK_N):\n"),
    # dK/dV
    ("        for i in range(0, tl.load(full_count + count_off)):\n"
     "            offs_m = tl.load(full_index + index_off + i) * BLOCK_M + offs_m_tile\n",
     "        first_full = tl.load(full_index + index_off)\n"
     "        for i in range(first_full, first_full + tl.load(full_count + count_off)):\n"
     "            offs_m = i * BLOCK_M + offs_m_tile\n"),
    # dQ
    ("    for i in range(0, tl.load(full_count + count_off)):\n"
     "        start_n = tl.load(full_index + index_off + i) * BLOCK_N\n",
     "    first_full = tl.load(full_index + index_off)\n"
     "    for start_n in range(first_full * BLOCK_N, (first_full + tl.load(full_count + count_off)) * BLOCK_N,"
     " BLOCK_N):\n"),
]


def rewritten(source: str) -> str:
    for old, new in REWRITES:
        source = replace_once(source, old, new)
    return source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    inputs = packed_documents(requires_grad=True)
    flops, doc, q, k, v = FLOPS, inputs.doc, inputs.q, inputs.k, inputs.v
    do = torch.randn_like(q)
    mask = ag.document() & ag.causal()
    generated = ag.compile(ag.Variant(mask=mask, name="docs_generated"))
    runs = ag.compile(ag.Variant(mask=mask, name="docs_runs"))
    use_rewritten(runs, rewritten)
    flex = compiled_flex()
    flex_mask = flex_block_mask(lambda b, h, qi, ki: (qi >= ki) & (doc[b, qi] == doc[b, ki]), L, "cuda", B=B)
    qc, kc, vc = inputs.causal_qkv
    doc_ = torch.randn_like(qc)
    causal = ag.compile(ag.Variant(mask=ag.causal()))

    with torch.no_grad():
        ref = generated(q, k, v, document_ids=doc).float()
        err = ((runs(q, k, v, document_ids=doc).float() - ref).norm() / ref.norm()).item()
    print(f"rewritten forward vs generated: rel err {err:.2e}", flush=True)
    grads = [torch.autograd.grad(a(q, k, v, document_ids=doc), (q, k, v), do) for a in (generated, runs)]
    for name, a, b in zip("qkv", *grads):
        print(f"rewritten d{name} vs generated: rel err {((a.float() - b.float()).norm() / b.float().norm()).item():.2e}")

    real = autograd.backward_config

    def tiles(small):
        def cfg(device, forward, small_tiles):
            return real(device, forward, small)
        return cfg

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    def step(fn, small=None, inputs=(q, k, v), dout=do):
        def run():
            autograd.backward_config = real if small is None else tiles(small)
            torch.autograd.grad(fn(), inputs, dout)
            autograd.backward_config = real
        return run

    cases = {
        "fwd generated": (fwd(lambda: generated(q, k, v, document_ids=doc)), flops),
        "fwd runs": (fwd(lambda: runs(q, k, v, document_ids=doc)), flops),
        "fwd Flex": (fwd(lambda: flex(q, k, v, block_mask=flex_mask)), flops),
        "fwd causal B=8 L=2048": (fwd(lambda: causal(qc, kc, vc)), flops),
        "fwd+bwd generated (small bwd tiles)": (step(lambda: generated(q, k, v, document_ids=doc)), 3.5 * flops),
        "fwd+bwd runs, small bwd tiles": (step(lambda: runs(q, k, v, document_ids=doc), True), 3.5 * flops),
        "fwd+bwd runs, large bwd tiles": (step(lambda: runs(q, k, v, document_ids=doc), False), 3.5 * flops),
        "fwd+bwd Flex": (step(lambda: flex(q, k, v, block_mask=flex_mask)), 3.5 * flops),
        "fwd+bwd causal B=8 L=2048": (step(lambda: causal(qc, kc, vc), None, (qc, kc, vc), doc_), 3.5 * flops),
    }
    for fn, _ in cases.values():
        fn()
    times = interleaved_ms({name: fn for name, (fn, _) in cases.items()}, args.rounds)
    print_rates(times, {name: f for name, (_, f) in cases.items()}, 36)


if __name__ == "__main__":
    main()
