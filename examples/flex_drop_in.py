"""Moving a FlexAttention model onto attngen: one import line.

The block below is a FlexAttention layer as it is usually written (a mask built with
create_block_mask outside the model, a soft-capping score_mod, torch.compile with
fullgraph=True). Only the import of ``flex_attention`` changes:

    from torch.nn.attention.flex_attention import flex_attention   # before
    from attngen import flex_attention                              # after

attngen traces the score_mod and the block mask's mask_mod once, compiles them into its
own kernels, and reuses them for every later block mask built from the same mask_mod (here,
one per batch of documents).
"""
from __future__ import annotations

import warnings

import torch
from torch.nn.attention.flex_attention import create_block_mask
from torch.nn.attention.flex_attention import flex_attention as torch_flex_attention

from attngen import flex_attention  # the one changed line
from attngen.testing import relative_error

SOFTCAP = 30.0


def softcap(score, b, h, q_idx, kv_idx):
    return SOFTCAP * torch.tanh(score / SOFTCAP)


def document_causal(documents: torch.Tensor):
    def mask_mod(b, h, q_idx, kv_idx):
        return (documents[b, q_idx] == documents[b, kv_idx]) & (q_idx >= kv_idx)
    return mask_mod


class SelfAttention(torch.nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, block_mask) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = flex_attention(q, k, v, score_mod=softcap, block_mask=block_mask)
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


def main() -> None:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    B, L, dim, heads = 2, 256 if cuda else 128, 128, 4
    torch.manual_seed(0)
    model = SelfAttention(dim, heads).to(device)
    # Inductor on the GPU; on the CPU the kernels run under Triton's interpreter, which a
    # graph reaches through AOT autograd alone
    compiled = torch.compile(model, fullgraph=True, backend="inductor" if cuda else "aot_eager")
    for step in range(3):  # a new document layout every batch: no recompilation, no new kernel
        documents = (torch.arange(L, device=device) >= (step + 1) * L // 4).int().expand(B, L)
        block_mask = create_block_mask(document_causal(documents), B, None, L, L, device=device)
        x = torch.randn(B, L, dim, device=device)
        out = compiled(x, block_mask)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's unfused CPU path says it is unfused
            q, k, v = model.qkv(x).view(B, L, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            y = torch_flex_attention(q, k, v, score_mod=softcap, block_mask=block_mask)
            expected = model.proj(y.transpose(1, 2).reshape(B, L, dim))
        print(f"batch {step}: relative error vs FlexAttention {relative_error(out, expected):.2e}")


if __name__ == "__main__":
    main()
