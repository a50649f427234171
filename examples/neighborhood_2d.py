"""Neighborhood attention on images: a 2-D NA layer built on `ag.na2d`, checked against the reference.

Each pixel attends to the kernel_size x kernel_size pixels around it (NATTEN's semantics: the
window shifts inward at the borders, dilation spreads it over the same residue class). The layer
is the usual one (qkv projection, attention, output projection) and works in NATTEN's layout
(B, H, W, C), which `ag.na2d` takes and returns without copies. The check runs the same layer
with `ag.reference` through attngen's own layout (B, heads, H*W, head_dim) with
`spatial_shape=(H, W)`. GPU: bfloat16 and a timing; CPU: the Triton interpreter, float32,
tiny sizes.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

import attngen as ag
from attngen.testing import relative_error


class NeighborhoodAttention2D(nn.Module):
    """Multi-head 2-D neighborhood attention over an image-shaped tensor (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int = 1, stride: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.kernel_size, self.dilation, self.stride = kernel_size, dilation, stride
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def variant(self) -> ag.Variant:
        """The same attention as a Variant, for `ag.compile` / `ag.reference` on (B, heads, L, D)."""
        k, d, s = self.kernel_size, self.dilation, self.stride  # one value per axis, as ag.na2d compiles it
        return ag.Variant(mask=ag.neighborhood((k, k), (d, d), (s, s)), name="na2d_layer")

    def forward(self, x: torch.Tensor, oracle: bool = False) -> torch.Tensor:
        B, H, W, C = x.shape
        # (B, H, W, 3, heads, head_dim): q, k and v are views in NATTEN's layout (B, H, W, heads, head_dim)
        q, k, v = self.qkv(x).view(B, H, W, 3, self.num_heads, self.head_dim).unbind(3)
        if not oracle:
            out = ag.na2d(q, k, v, kernel_size=self.kernel_size, dilation=self.dilation, stride=self.stride)
        else:
            # attngen's layout: (B, heads, H*W, head_dim), tokens row-major over (H, W)
            def flat(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(B, H * W, self.num_heads, self.head_dim).transpose(1, 2)

            ref = ag.reference(self.variant())(flat(q), flat(k), flat(v), spatial_shape=(H, W))
            out = ref.to(x.dtype).transpose(1, 2).reshape(B, H, W, self.num_heads, self.head_dim)
        return self.proj(out.reshape(B, H, W, C))


def main() -> int:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    # batch, image height and width, channels, heads, window, dilation
    B, H, W, C, heads, kernel, dilation = (2, 64, 64, 512, 8, 13, 2) if cuda else (1, 12, 10, 64, 2, 5, 2)
    torch.manual_seed(0)
    layer = NeighborhoodAttention2D(C, heads, kernel, dilation).to(device, dtype)
    print(f"variant (what ag.na2d compiles for this layer):\n{layer.variant().to_text()}")
    x = torch.randn(B, H, W, C, device=device, dtype=dtype)

    y = layer(x)
    y_ref = layer(x, oracle=True)
    err = relative_error(y, y_ref)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    where = "GPU: " + torch.cuda.get_device_name() if cuda else "CPU, Triton interpreter"
    print(f"{where}, {dtype}, x {tuple(x.shape)} (B, H, W, C), {heads} heads of {C // heads}, "
          f"kernel {kernel}x{kernel}, dilation {dilation}")
    print(f"output shape {tuple(y.shape)}")
    print(f"relative error vs float64 reference: {err:.2e} (tolerance {tol:.0e}) -> {'OK' if err < tol else 'FAIL'}")
    if cuda:
        import triton

        ms = triton.testing.do_bench(lambda: layer(x), return_mode="median")
        print(f"layer time (projections included): {ms:.3f} ms")
    return 0 if err < tol else 1


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
