"""FlexAttention score_mod / mask_mod functions compile unchanged.

Gemma-2-style soft-capping with a sliding window, written exactly as for
torch.nn.attention.flex_attention, then compiled by attngen. The compiler recognizes the
window in the mask_mod and visits only the KV tiles inside it.
"""
from __future__ import annotations

import torch

import attngen as ag
from attngen.testing import relative_error

SOFTCAP = 50.0
WINDOW = 64


def softcap(score, b, h, q_idx, kv_idx):
    return SOFTCAP * torch.tanh(score / SOFTCAP)


def sliding_window_causal(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)


def main() -> None:
    variant = ag.Variant(score=softcap, mask=sliding_window_causal, name="gemma2_local")
    attn = ag.compile(variant)
    print(attn.ir)  # the mask became a closed-form band: 'tiles = band band(-63 <= kv_idx - q_idx <= 0)'
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = (torch.randn(1, 4, 256, 64, device=device, dtype=dtype) for _ in range(3))
    out = attn(q, k, v)
    print("relative error vs reference:", relative_error(out, ag.reference(variant)(q, k, v)))


if __name__ == "__main__":
    with torch.no_grad():
        main()
