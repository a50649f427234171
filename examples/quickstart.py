"""Quickstart: declare a variant in Python, compile it, and check it against the reference.

ALiBi scores, causal within each packed document. Runs on the GPU when there is one
(bfloat16, and a timing), else under the Triton interpreter on the CPU (float32, small).
This is the README's main job: `make demo`.
"""
from __future__ import annotations

import sys

import torch

import attngen as ag
from attngen.testing import relative_error


@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


@ag.mask_mod
def same_doc(b, h, q_idx, kv_idx, doc):
    return doc[b, q_idx] == doc[b, kv_idx]


variant = ag.Variant(score=alibi, mask=ag.causal() & same_doc, name="alibi_doc")


def main() -> int:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    B, H, L, D = (2, 16, 2048, 128) if cuda else (2, 4, 192, 64)
    print(f"variant:\n{variant.to_text()}")
    attn = ag.compile(variant)
    print(f"kernel: {attn.path} ({'loaded from cache' if attn.from_cache else 'generated'}), "
          f"KV tiles: {attn.ir.strategy}")

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(device, dtype) for _ in range(3))
    slopes = torch.exp2(-8.0 * torch.arange(1, H + 1) / H).to(device)
    doc = torch.sort(torch.randint(0, 4, (B, L), generator=g), dim=1).values.to(device)

    out = attn(q, k, v, slopes=slopes, doc=doc)
    ref = ag.reference(variant)(q, k, v, slopes=slopes, doc=doc)
    err = relative_error(out, ref)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    where = "GPU: " + torch.cuda.get_device_name() if cuda else "CPU, Triton interpreter"
    print(f"{where}, {dtype}, B={B} H={H} L={L} D={D}")
    print(f"relative error vs float64 reference: {err:.2e} (tolerance {tol:.0e}) -> {'OK' if err < tol else 'FAIL'}")
    if cuda:
        import triton

        ms = triton.testing.do_bench(lambda: attn(q, k, v, slopes=slopes, doc=doc), return_mode="median")
        print(f"time: {ms:.3f} ms")
    return 0 if err < tol else 1


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
