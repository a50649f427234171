"""Neighborhood attention on video: a 3-D NA layer built on `ag.na3d`, causal in time.

Each token (frame t, row y, column x) attends to a kernel_t x kernel_h x kernel_w neighborhood:
centred in space (shifted inward at the borders, NATTEN's semantics) and causal in time
(`is_causal=(True, False, False)`: frames t - kernel_t + 1 .. t only), as in autoregressive
video models. The layer works in NATTEN's layout (B, T, H, W, C). The check runs the same layer
with `ag.reference` through attngen's own layout (B, heads, T*H*W, head_dim) with
`spatial_shape=(T, H, W)`. GPU: bfloat16 and a timing; CPU: the Triton interpreter, float32,
tiny sizes.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

import attngen as ag
from attngen.testing import relative_error


class NeighborhoodAttention3D(nn.Module):
    """Multi-head 3-D neighborhood attention over a video-shaped tensor (B, T, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, kernel_size: tuple[int, int, int],
                 is_causal: tuple[bool, bool, bool] = (True, False, False)) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.kernel_size, self.is_causal = tuple(kernel_size), tuple(is_causal)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def variant(self) -> ag.Variant:
        """The same attention as a Variant, for `ag.compile` / `ag.reference` on (B, heads, L, D)."""
        return ag.Variant(mask=ag.neighborhood(self.kernel_size, is_causal=self.is_causal), name="na3d_layer")

    def forward(self, x: torch.Tensor, oracle: bool = False) -> torch.Tensor:
        B, T, H, W, C = x.shape
        # q, k and v are views in NATTEN's layout (B, T, H, W, heads, head_dim)
        q, k, v = self.qkv(x).view(B, T, H, W, 3, self.num_heads, self.head_dim).unbind(4)
        if not oracle:
            out = ag.na3d(q, k, v, kernel_size=self.kernel_size, is_causal=self.is_causal)
        else:
            # attngen's layout: (B, heads, T*H*W, head_dim), tokens row-major over (T, H, W)
            def flat(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(B, T * H * W, self.num_heads, self.head_dim).transpose(1, 2)

            ref = ag.reference(self.variant())(flat(q), flat(k), flat(v), spatial_shape=(T, H, W))
            out = ref.to(x.dtype).transpose(1, 2).reshape(B, T, H, W, self.num_heads, self.head_dim)
        return self.proj(out.reshape(B, T, H, W, C))


def main() -> int:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    # batch, frames, height, width, channels, heads, (kernel_t, kernel_h, kernel_w)
    B, T, H, W, C, heads, kernel = ((1, 8, 32, 32, 512, 8, (4, 9, 9)) if cuda
                                    else (1, 4, 6, 5, 64, 2, (2, 3, 3)))
    torch.manual_seed(0)
    layer = NeighborhoodAttention3D(C, heads, kernel).to(device, dtype)
    print(f"variant (what ag.na3d compiles for this layer):\n{layer.variant().to_text()}")
    x = torch.randn(B, T, H, W, C, device=device, dtype=dtype)

    y = layer(x)
    y_ref = layer(x, oracle=True)
    err = relative_error(y, y_ref)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    where = "GPU: " + torch.cuda.get_device_name() if cuda else "CPU, Triton interpreter"
    print(f"{where}, {dtype}, x {tuple(x.shape)} (B, T, H, W, C), {heads} heads of {C // heads}, "
          f"kernel {'x'.join(map(str, kernel))}, causal in time")
    print(f"output shape {tuple(y.shape)}")
    print(f"relative error vs float64 reference: {err:.2e} (tolerance {tol:.0e}) -> {'OK' if err < tol else 'FAIL'}")

    # causality: changing the last frame must leave every earlier frame's output unchanged
    x2 = x.clone()
    x2[:, -1] = torch.randn_like(x2[:, -1])
    leak = (layer(x2)[:, :-1] - y[:, :-1]).abs().max().item()
    causal_ok = leak <= 1e-6 * y.abs().max().item()  # masked keys contribute exactly 0
    print(f"causal in time: earlier frames unchanged when the last frame changes -> "
          f"{'OK' if causal_ok else 'FAIL'} (max change {leak:.1e})")
    if cuda:
        import triton

        ms = triton.testing.do_bench(lambda: layer(x), return_mode="median")
        print(f"layer time (projections included): {ms:.3f} ms")
    return 0 if err < tol and causal_ok else 1


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
