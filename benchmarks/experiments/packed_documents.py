"""The inputs of the session-8 document experiments: packed causal documents (B=2 H=16 L=8192
D=128, 4 x 2048, bf16) and the causal equivalent of the same work (B=8 sequences of 2048)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

B, H, D, DOCS, DOC_LEN = 2, 16, 128, 4, 2048
L = DOCS * DOC_LEN
FLOPS = 4.0 * B * H * D * DOCS * DOC_LEN * (DOC_LEN + 1) / 2  # forward, attended entries; docs and causal alike


@dataclass
class PackedDocuments:
    doc: torch.Tensor             # (B, L) document ids
    q: torch.Tensor               # (B, H, L, D) each of q, k, v
    k: torch.Tensor
    v: torch.Tensor
    causal_qkv: tuple             # (8, H, DOC_LEN, D) q, k, v of the causal equivalent


def packed_documents(requires_grad: bool = False) -> PackedDocuments:
    def rand(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, requires_grad=requires_grad)

    doc = (torch.arange(L, device="cuda") // DOC_LEN).expand(B, L).contiguous()
    return PackedDocuments(doc, rand(B, H, L, D), rand(B, H, L, D), rand(B, H, L, D),
                           tuple(rand(8, H, DOC_LEN, D) for _ in range(3)))
