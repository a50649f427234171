"""Attention sinks (gpt-oss): a learnable logit per head joins every row's softmax
denominator, attached to no value, so a head can attend "nowhere". Here with gpt-oss's
causal 128-token window, one training step of the sinks, checked against the reference.
"""
from __future__ import annotations

import sys

import torch

import attngen as ag
from attngen.library import builtin
from attngen.testing import relative_error

variant = builtin("sinks_sliding_window")  # ir/sinks_sliding_window.ir


def main() -> int:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    B, H, Hkv, L, D = (1, 16, 2, 2048, 64) if cuda else (1, 8, 2, 160, 32)  # the reference holds B*H*L*L floats
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, L, D, generator=g).to(device, dtype).requires_grad_()
    k, v = (torch.randn(B, Hkv, L, D, generator=g).to(device, dtype).requires_grad_() for _ in range(2))
    sinks = torch.nn.Parameter(torch.zeros(H, device=device))
    attn = ag.compile(variant)
    print(f"{variant.to_text()}kernel: {attn.path}, GQA {H} query heads over {Hkv} KV heads")

    out, lse = attn(q, k, v, sinks=sinks, return_lse=True)
    ref, ref_lse = ag.reference(variant)(q, k, v, sinks=sinks, return_lse=True)
    loss = out.float().square().sum()
    loss.backward()
    got = sinks.grad.clone()
    sinks.grad = None
    ref.square().sum().backward()
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    errors = {"out": relative_error(out, ref), "lse": relative_error(lse, ref_lse),
              "d sinks": relative_error(got, sinks.grad)}
    print("relative errors: " + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    with torch.no_grad():
        sinks -= 0.1 * got  # one SGD step on the sink logits
    print(f"sink logits after one step: {sinks[:4].tolist()} ...")
    ok = all(e < tol for e in errors.values())
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
