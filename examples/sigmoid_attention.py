"""Sigmoid attention (FlashSigmoid): each entry weighs sigmoid(score + bias), with no row
softmax, so the kernel keeps no running max or row sum. Here with ALiBi and a causal mask,
the recipe of the FlashSigmoid paper, forward and backward, against the float64 reference.

GPU: bfloat16 at B=2, H=16, L=4096, D=128 and a timing next to attngen's causal softmax.
CPU: the Triton interpreter at a small size.
"""
from __future__ import annotations

import sys

import torch

import attngen as ag
from attngen.testing import relative_error


@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


variant = ag.Variant(score=alibi, mask=ag.causal(), norm=ag.sigmoid(), name="sigmoid_alibi")


def main() -> int:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    B, H, L, D = (2, 16, 4096, 128) if cuda else (1, 4, 128, 32)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    slopes = torch.exp2(-8.0 * torch.arange(1, H + 1) / H).to(device)
    attn = ag.compile(variant)
    print(f"{variant.to_text()}kernel: {attn.path}")

    out = attn(q, k, v, slopes=slopes)
    ref = ag.reference(variant)(q, k, v, slopes=slopes)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    errors = [relative_error(out, ref)] + [relative_error(a, b) for a, b in zip(grads, ref_grads)]
    print("relative errors (out, dq, dk, dv): " + ", ".join(f"{e:.1e}" for e in errors))
    if cuda:
        import triton

        softmax = ag.compile(ag.Variant(score=alibi, mask=ag.causal(), name="softmax_alibi"))
        with torch.no_grad():
            t_sig = triton.testing.do_bench(lambda: attn(q, k, v, slopes=slopes))
            t_soft = triton.testing.do_bench(lambda: softmax(q, k, v, slopes=slopes))
        print(f"forward: sigmoid {t_sig:.3f} ms, softmax {t_soft:.3f} ms ({t_soft / t_sig:.2f}x)")
    ok = all(e < tol for e in errors)
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
