"""SOFT's Gaussian-kernel attention, reached through a score_mod: softmax over
-|q - k|^2 / 2 equals softmax over q.k - |k|^2 / 2 (|q|^2 / 2 is the same for every key of a
row), so the built-in `gaussian_kernel` subtracts a runtime tensor of half squared key
norms from the plain dot product (scale=1). Checked against a direct computation of the
Gaussian kernel, which shares no code with attngen.
"""
from __future__ import annotations

import sys

import torch

import attngen as ag
from attngen.library import builtin
from attngen.testing import relative_error

variant = builtin("gaussian_kernel")  # ir/gaussian_kernel.ir


def main() -> int:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    B, H, L, D = (2, 8, 2048, 64) if cuda else (1, 2, 96, 16)
    g = torch.Generator().manual_seed(0)
    q, k, v = (0.3 * torch.randn(B, H, L, D, generator=g).to(device, dtype) for _ in range(3))
    half_sq_norm = 0.5 * k.float().square().sum(-1)  # (B, H, L): |k_j|^2 / 2
    out = ag.compile(variant)(q, k, v, scale=1.0, half_sq_norm=half_sq_norm)

    distances = torch.cdist(q.double(), k.double()).square()  # |q_i - k_j|^2
    expected = torch.softmax(-distances / 2, dim=-1) @ v.double()
    err = relative_error(out, expected)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    print(f"{variant.to_text()}relative error vs softmax(-|q-k|^2/2) @ v: {err:.1e} -> {'OK' if err < tol else 'FAIL'}")
    return 0 if err < tol else 1


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
