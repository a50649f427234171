"""The compile-time benchmark's variants, as an attngen user and as a FlexAttention user declare
them, the problem they are called on, and its inputs.

Standard library only at module level: the measured worker processes time their own imports
of torch and attngen, so those happen inside the functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

VARIANTS = ("causal", "alibi", "sliding_window", "documents", "na2d", "sigmoid", "lightning")
LIBRARIES = ("attngen", "flex")
LIBRARY_TITLES = {"attngen": "attngen", "flex": "FlexAttention", "triton": "Triton"}
FLEX_CANNOT = {"sigmoid": "FlexAttention normalizes with softmax only",
               "lightning": "FlexAttention has no linear attention"}


@dataclass(frozen=True)
class Sizes:
    """The problem every variant is called on (only compile and load time matter)."""

    B: int
    H: int
    L: int
    D: int
    dtype: str
    device: str
    grid: tuple[int, int]  # na2d's token grid; its L is the product
    kernel: int  # na2d's window per axis
    window: int  # the causal sliding window in tokens, the query's own included
    documents: int  # equal-length documents per sequence

    def seq_len(self, variant: str) -> int:
        return self.grid[0] * self.grid[1] if variant == "na2d" else self.L


GPU_SIZES = Sizes(B=1, H=8, L=4096, D=128, dtype="bfloat16", device="cuda", grid=(128, 128), kernel=31,
                  window=1024, documents=8)


# Tiny, so that the interpreter runs every kernel in seconds; float32 because the interpreter
# computes tl.dot on bfloat16 wrongly (shared/DESIGN.md).
SMOKE_SIZES = Sizes(B=1, H=2, L=128, D=32, dtype="float32", device="cpu", grid=(16, 16), kernel=5, window=32,
                    documents=4)


@dataclass
class Inputs:
    q: Any
    k: Any
    v: Any
    dout: Any
    tensors: dict[str, Any]  # the variant's runtime tensors, by name


def alibi_slopes(heads: int, device: str):
    """ALiBi's geometric head slopes 2^(-8 i / H), i = 1..H."""
    import torch

    return torch.exp2(-8.0 * torch.arange(1, heads + 1, device=device, dtype=torch.float32) / heads)


def runtime_tensors(variant: str, sizes: Sizes) -> dict[str, Any]:
    import torch

    L = sizes.seq_len(variant)
    if variant == "alibi":
        return {"slopes": alibi_slopes(sizes.H, sizes.device)}
    if variant == "documents":
        ids = (torch.arange(L, device=sizes.device) * sizes.documents // L).to(torch.int32)
        return {"document_ids": ids.expand(sizes.B, L).contiguous()}
    if variant == "lightning":  # Lightning Attention's per-head decay rates are ALiBi's slopes
        return {"decay_log": -alibi_slopes(sizes.H, sizes.device)}
    return {}


def make_inputs(variant: str, sizes: Sizes) -> Inputs:
    """Random q, k, v, an output gradient and the runtime tensors, on the device (the first
    CUDA allocation initializes the context, which is why this is timed apart)."""
    import torch

    gen = torch.Generator(device=sizes.device).manual_seed(0)
    shape = (sizes.B, sizes.H, sizes.seq_len(variant), sizes.D)
    q, k, v, dout = (torch.randn(shape, generator=gen, device=sizes.device, dtype=getattr(torch, sizes.dtype))
                     for _ in range(4))
    return Inputs(q, k, v, dout, runtime_tensors(variant, sizes))


def attngen_variant(ag, variant: str, sizes: Sizes):
    """The variant as an attngen user declares it."""
    if variant == "alibi":
        @ag.score_mod
        def alibi(score, b, h, q_idx, kv_idx, slopes):
            return score - slopes[h] * abs(q_idx - kv_idx)

        return ag.Variant(score=alibi, mask=ag.causal(), name="alibi")
    if variant == "lightning":
        from attngen.library import builtin

        return builtin("lightning")
    if variant == "sigmoid":
        return ag.Variant(mask=ag.causal(), norm=ag.sigmoid(), name="sigmoid")
    masks = {"causal": ag.causal, "sliding_window": lambda: ag.sliding_window(sizes.window - 1),
             "documents": lambda: ag.causal() & ag.document(), "na2d": lambda: ag.neighborhood(sizes.kernel)}
    return ag.Variant(mask=masks[variant](), name=variant)


def attngen_call_kwargs(variant: str, sizes: Sizes, inputs: Inputs) -> dict[str, Any]:
    return {**inputs.tensors, **({"spatial_shape": sizes.grid} if variant == "na2d" else {})}


def flex_na2d_mask(grid: tuple[int, int], kernel: int) -> Callable:
    """NATTEN's 2-D neighborhood (dilation 1, stride 1, not causal) as a FlexAttention
    mask_mod over row-major token indices: per axis the window starts at the query's
    position minus kernel // 2, shifted inward at the borders (shared/SEMANTICS.md)."""
    import torch

    rows, cols = grid

    def axis_keep(x, y, size):
        start = torch.clamp(x - kernel // 2, 0, size - kernel)
        return (y >= start) & (y < start + kernel)

    def mask_mod(b, h, q_idx, kv_idx):
        return (axis_keep(q_idx // cols, kv_idx // cols, rows)
                & axis_keep(q_idx % cols, kv_idx % cols, cols))

    return mask_mod


def flex_mods(variant: str, sizes: Sizes, tensors: dict[str, Any]) -> tuple[Callable | None, Callable]:
    """(score_mod, mask_mod) as a FlexAttention user writes them; tensors by closure."""
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    if variant == "causal":
        return None, causal
    if variant == "alibi":
        slopes = tensors["slopes"]

        def alibi(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx).abs()

        return alibi, causal
    if variant == "sliding_window":
        def window(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < sizes.window)

        return None, window
    if variant == "documents":
        doc = tensors["document_ids"]

        def causal_documents(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (doc[b, q_idx] == doc[b, kv_idx])

        return None, causal_documents
    if variant == "na2d":
        return None, flex_na2d_mask(sizes.grid, sizes.kernel)
    raise ValueError(f"FlexAttention cannot run variant '{variant}': {FLEX_CANNOT.get(variant, 'unknown')}")
