"""A/B: where the packed-document backward loses to its causal equivalent.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_documents_backward.py [--rounds N] [--edits a,b]

Packed causal documents (B=2 H=16 L=8192 D=128, 4 x 2048) do the work of causal attention on
B=8 sequences of 2048. Under ncu (session 11, ncu_dkdv.py docs|causal2k) the documents' dK/dV
pass took 946 us against 756 and executed 16% more instructions (164M against 141M); dQ 557
against 507 us, 18% more. Both take the same tiles (dK/dV: 128 keys, 64-query steps; dQ: 128
queries, 64-key steps; 8 warps) and the same number of masked steps.

The first round of this A/B (ab_documents_backward.log) found the document test in the masked
steps worth 2%. Then the SASS (dump_dkdv_asm.py, wgmma_serialization.py): ptxas serializes every
wgmma of the documents' dK/dV kernel (C7515: "non wgmma instructions defining accumulator
registers of a wgmma between start and end of the pipeline stage"), and of no other generated
kernel. The documents' dK/dV walk has three loops (partial, full, partial query tiles) where
the causal band has two (partial, full). The edits:
  causal test only   masked steps test causality only (valid for documents aligned to the tiles)
  one masked loop    the two partial ranges of each run walked by one loop, before the full
                     ones (as the 1-D neighborhood's shell): two loops, as the causal band
  masked early       masked steps issue dP before their elementwise work, as unmasked ones do
Backward alone of one retained forward, interleaved rounds, gradients compared with the
generated module's; HGMMA and wgmma waits counted in each dK/dV kernel's SASS; the causal
equivalent and Flex alongside.
"""
from __future__ import annotations

import argparse
import re

import torch
import triton

import attngen as ag
from bench_common import compiled_flex, flex_block_mask  # noqa: E402 (benchmarks/ on sys.path)
from rewritten import edit_kernel, interleaved_ms, replace_once, use_rewritten  # noqa: E402 (this folder)

H, D, DOCS, DOC_LEN = 16, 128, 4, 2048


def causal_test_only(source: str) -> str:
    """Masked steps of both backward passes test causality only (the diagonal tiles of
    documents aligned to the tiles lie inside one document)."""
    def edit(text: str) -> str:
        new, n = re.subn(r"keep = keep & \(.*\(kv_idx - q_idx <= 0\).*\n", "keep = keep & (kv_idx - q_idx <= 0)\n", text)
        assert n == 1, n
        return new

    return edit_kernel(edit_kernel(source, "_bwd_dkdv_step", edit), "_bwd_dq_step", edit)


def _loop(text: str, header: str) -> tuple[int, int]:
    """Line range [start, end) of the loop whose first line is ``header`` in ``text``."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == header]
    assert len(starts) == 1, header
    i = starts[0]
    indent = len(lines[i]) - len(lines[i].lstrip())
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
        j += 1
    return i, j


def one_masked_loop(source: str) -> str:
    """The dK/dV run walk's two partial ranges as one loop (a jump over the full tiles), ahead
    of the full tiles' loop."""
    lead = "for start_m in range(tl.load(runs) * BLOCK_M, full_lo, BLOCK_M):"
    trail = "for start_m in range(full_hi, tl.load(runs + 3) * BLOCK_M, BLOCK_M):"

    def edit(text: str) -> str:
        lines = text.split("\n")
        a, b = _loop(text, lead)
        c, d = _loop(text, trail)
        pad = lines[a][: len(lines[a]) - len(lines[a].lstrip())]
        body = [line.replace("offs_m = start_m + offs_m_tile",
                             "offs_m = lo + i + tl.where(i < n_lead, 0, full_hi - full_lo) + offs_m_tile")
                for line in lines[a + 1:b]]
        merged = [pad + "lo = tl.load(runs) * BLOCK_M", pad + "n_lead = full_lo - lo",
                  pad + "for i in range(0, n_lead + tl.load(runs + 3) * BLOCK_M - full_hi, BLOCK_M):", *body]
        return "\n".join(lines[:a] + merged + lines[b:c] + lines[d:])

    return edit_kernel(source, "_bwd_dkdv", edit)


def reads_as_vectors(source: str) -> str:
    """The masked steps' per-step document-id read as a vector over the step's rows (dK/dV:
    queries; dQ: keys), broadcast as lse and delta are, instead of a gather through one pointer
    per element of the tile's broadcast layout."""
    read = "_read(document_ids_ptr + off_b * document_ids_stride0 + {} * document_ids_stride1, DOCUMENT_IDS_AS_F32)"
    source = edit_kernel(source, "_bwd_dkdv_step", lambda s: replace_once(
        s, read.format("q_idx"), read.format("tl.minimum(offs_m, Lq - 1)") + "[None, :]"))
    return edit_kernel(source, "_bwd_dq_step", lambda s: replace_once(
        s, read.format("kv_idx"), read.format("tl.minimum(offs_n, Lkv - 1)") + "[None, :]"))


def ids_as_int32(source: str) -> str:
    """Document ids held as int32 in the backward passes (the experiment's ids are small; the
    int64 ids take two registers per element of the broadcast tiles)."""
    read = "_read(document_ids_ptr + off_b * document_ids_stride0 + {} * document_ids_stride1, DOCUMENT_IDS_AS_F32)"
    for kernel in ("_bwd_dkdv_step", "_bwd_dq_step", "_bwd_dkdv", "_bwd_dq"):
        def edit(text: str) -> str:
            for idx in ("q_idx", "kv_idx"):
                text = text.replace(read.format(idx), read.format(idx) + ".to(tl.int32)")
            return text
        source = edit_kernel(source, kernel, edit)
    return source


def masked_early(source: str) -> str:
    return replace_once(source, "masked_issue_early = kv_cfg.num_warps < 8", "masked_issue_early = True")


EDITS = {
    "generated": None,
    "causal test only": causal_test_only,
    "one masked loop": one_masked_loop,
    "masked early": masked_early,
    "one loop + causal test": lambda s: one_masked_loop(causal_test_only(s)),
    # after the two-loop walk and the per-program reads landed (9a9eacd)
    "reads as vectors": reads_as_vectors,
    "ids as int32": ids_as_int32,
}


def wgmma_counts(attn) -> str:
    """HGMMA instructions and wgmma waits in the SASS of ``attn``'s compiled dK/dV kernel."""
    import shutil
    import subprocess
    import tempfile

    for name in dir(attn._module):
        fn = getattr(attn._module, name)
        if not name.endswith("_bwd_dkdv") or not hasattr(fn, "device_caches"):
            continue
        for caches in fn.device_caches.values():
            for kernel in caches[0].values():
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(kernel.asm["cubin"])
                    f.flush()
                    exe = shutil.which("cuobjdump") or "/usr/local/cuda/bin/cuobjdump"
                    sass = subprocess.run([exe, "-sass", f.name], capture_output=True, text=True).stdout
                return (f"HGMMA {len(re.findall(r'HGMMA[.]', sass))}, waits {len(re.findall(r'WARPGROUP[.]DEPBAR', sass))}, "
                        f"{kernel.n_regs} registers, {kernel.n_spills} spills")
    return "no dK/dV kernel"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--edits", default=",".join(EDITS))
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    L = DOCS * DOC_LEN
    doc = (torch.arange(L, device="cuda") // DOC_LEN).expand(2, L).contiguous()
    q, k, v = (torch.randn(2, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    qc, kc, vc, doc_ = (t.detach().reshape(8, H, DOC_LEN, D).contiguous().requires_grad_() for t in (q, k, v, do))
    runs = {}
    ref = None
    for label in args.edits.split(","):
        edit = EDITS[label]
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
        print(f"{label}: dK/dV {wgmma_counts(attn)}", flush=True)
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
