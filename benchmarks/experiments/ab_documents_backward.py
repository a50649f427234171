"""A/B: where the packed-document backward loses to its causal equivalent.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_documents_backward.py [--rounds N]

Packed causal documents (B=2 H=16 L=8192 D=128, 4 x 2048) do the work of causal attention on
B=8 sequences of 2048. Under ncu (session 11, ncu_dkdv.py docs|causal2k) the documents' dK/dV
pass took 946 us against 756 and executed 16% more instructions (164M against 141M); dQ 557
against 507 us, 18% more. Both take the same tiles (dK/dV: 128 keys, 64-query steps; dQ: 128
queries, 64-key steps; 8 warps) and the same number of masked steps. Two differences remain:
  - the masked steps' document test reads both sides' document ids in every step (the
    forward reads its rows' ids once per program);
  - the tile-run walks have three loops (partial, full, partial) where the causal band has
    two, and for documents aligned to the tiles one of them never runs.
Variants of the generated module (rewritten.py; both edits valid only for documents aligned to
the tiles, as here), backward alone of one retained forward, interleaved rounds, gradients
compared with the generated module's; the causal equivalent and Flex alongside.
"""
from __future__ import annotations

import argparse
import re

import torch
import triton

import attngen as ag
from bench_common import compiled_flex, flex_block_mask  # noqa: E402 (benchmarks/ on sys.path)
from rewritten import interleaved_ms, replace_once, use_rewritten  # noqa: E402 (this folder)

H, D, DOCS, DOC_LEN = 16, 128, 4, 2048


def causal_test_only(source: str) -> str:
    """Masked steps of both backward passes test causality only (the diagonal tiles of
    documents aligned to the tiles lie inside one document)."""
    new, n = re.subn(r"keep = keep & \(\(kv_idx - q_idx <= 0\) & .*\n", "keep = keep & (kv_idx - q_idx <= 0)\n", source)
    assert n == 2, n
    return new


def _drop_loop(source: str, header: str) -> str:
    """``source`` without the loop that starts with the line ``header`` (its body: the lines
    indented deeper than it)."""
    lines = source.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == header]
    assert len(starts) == 1, header
    i = starts[0]
    indent = len(lines[i]) - len(lines[i].lstrip())
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
        j += 1
    return "\n".join(lines[:i] + lines[j:])


def _in_kernel(source: str, suffix: str, edit) -> str:
    """``source`` with ``edit`` applied to the text of the @triton.jit function named *``suffix``."""
    start = source.index("\ndef " + re.search(rf"\ndef (\w+{suffix})\(", source).group(1) + "(")
    end = source.find("\n@triton.jit", start + 1)
    end = len(source) if end < 0 else end
    return source[:start] + edit(source[start:end]) + source[end:]


def no_empty_loops(source: str) -> str:
    """Without the run walks' loops that aligned documents never enter: the trailing partial
    query tiles of dK/dV and the leading partial KV tiles of dQ."""
    source = _in_kernel(source, "_bwd_dkdv", lambda s: _drop_loop(
        s, "for start_m in range(full_hi, tl.load(runs + 3) * BLOCK_M, BLOCK_M):"))
    return _in_kernel(source, "_bwd_dq", lambda s: _drop_loop(
        s, "for start_n in range(tl.load(runs) * BLOCK_N, full_lo, BLOCK_N):"))


EDITS = {
    "generated": None,
    "causal test only": causal_test_only,
    "no empty loops": no_empty_loops,
    "both": lambda s: no_empty_loops(causal_test_only(s)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    L = DOCS * DOC_LEN
    doc = (torch.arange(L, device="cuda") // DOC_LEN).expand(2, L).contiguous()
    q, k, v = (torch.randn(2, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    qc, kc, vc, doc_ = (t.detach().reshape(8, H, DOC_LEN, D).contiguous().requires_grad_() for t in (q, k, v, do))
    runs = {}
    ref = None
    for label, edit in EDITS.items():
        name = "docs_" + re.sub(r"\W", "_", label)
        attn = ag.compile(ag.Variant(mask=ag.causal() & ag.document(), name=name))
        if edit is not None:
            use_rewritten(attn, edit)
        out = attn(q, k, v, document_ids=doc)
        got = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        if ref is None:
            ref = got
        else:
            err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, ref))
            print(f"{label}: gradients vs generated, max rel err {err:.1e}", flush=True)
        runs[label] = lambda out=out: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    causal = ag.compile(ag.Variant(mask=ag.causal()))
    out_c = causal(qc, kc, vc)
    runs["causal B=8 L=2048"] = lambda: torch.autograd.grad(out_c, (qc, kc, vc), doc_.detach(), retain_graph=True)
    flex = compiled_flex()
    mask = flex_block_mask(lambda b, h, qi, ki: (qi >= ki) & (doc[b, qi] == doc[b, ki]), L, "cuda", B=2)
    out_f = flex(q, k, v, block_mask=mask)
    runs["Flex"] = lambda: torch.autograd.grad(out_f, (q, k, v), do, retain_graph=True)
    flops = 2.5 * 4.0 * 8 * H * D * DOC_LEN * (DOC_LEN + 1) / 2
    times = interleaved_ms(runs, args.rounds)
    for label, t in times.items():
        med = sorted(t)[len(t) // 2]
        print(f"{label:20s}: " + " ".join(f"{x:.3f}" for x in t) + f" ms (median {med:.3f}; "
              f"{flops / med / 1e9:.0f} TF/s)", flush=True)


if __name__ == "__main__":
    main()
