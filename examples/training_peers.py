"""The peers' side of the training examples: the same attngen.nn modules with their attention
core replaced by SDPA or FlexAttention, so that a run differs from attngen's only in the kernel
(same parameters, same state_dict, same initialization).

- Masks: each Flex mask_mod evaluates the attngen mask node with ``attngen.reference``'s own
  ``mask_matrix`` (SEMANTICS.md, NATTEN's neighborhood rule included), so the two backends
  cannot disagree on which keys a query sees.
- Sinks: FlexAttention has no sink term, but it returns the log-sum-exp ``lse`` of the kept
  scores, and softmax with an extra ``exp(sink)`` in the denominator is
  ``out * Z / (Z + e^sink) = out * sigmoid(lse - sink)`` with ``Z = e^lse``.
- CPU: FlexAttention has no backward there, so on the CPU the Flex core computes the same
  thing densely (materialized scores under the same mask_mod, its lse, the same sink rule).
  The CUDA runs use FlexAttention itself.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

import attngen.nn as agnn
from attngen.ir.expr import B as B_SYMBOL, H as H_SYMBOL, KV_IDX, LKV, LQ, Q_IDX
from attngen.ir.nodes import Mask
from attngen.reference import SPATIAL, mask_matrix

Tensor = torch.Tensor


def flex_mask_mod(mask: Mask, length: int, spatial_shape: tuple[int, ...] | None = None) -> Callable:
    """A FlexAttention mask_mod (b, h, q_idx, kv_idx) -> bool for attngen's ``mask`` over
    ``length`` tokens (self-attention), through the reference's evaluation of the node."""

    def mask_mod(b, h, q_idx, kv_idx):
        env = {B_SYMBOL: b, H_SYMBOL: h, Q_IDX: q_idx, KV_IDX: kv_idx, LQ: length, LKV: length,
               SPATIAL: spatial_shape}
        return mask_matrix(mask, env, {})

    return mask_mod


def with_sinks(out: Tensor, lse: Tensor, sinks: Tensor) -> Tensor:
    """Softmax output ``out`` (B, H, L, D) with its log-sum-exp ``lse`` (B, H, L) -> the output
    of softmax whose denominator also holds ``exp(sinks[h])`` (SEMANTICS.md's sinks)."""
    keep = torch.sigmoid(lse - sinks.view(1, -1, 1).to(lse.dtype))
    return (out * keep.unsqueeze(-1)).to(out.dtype)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Materialized softmax attention under the bool mask ``keep`` (L, L), GQA by repeating
    k/v heads: (out, lse). Every row must keep a key (true for the examples' masks)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2) * scale).masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.exp(scores - lse.unsqueeze(-1)) @ v.float()).to(q.dtype), lse


class FlexCore:
    """FlexAttention under one attngen mask on a fixed token count, with optional sinks.

    The BlockMask is built once here (outside any compiled region), as Flex training
    scripts do; on the CPU the dense mask instead (see the module docstring)."""

    def __init__(self, mask: Mask, length: int, device: torch.device | str,
                 spatial_shape: tuple[int, ...] | None = None) -> None:
        device = torch.device(device)
        self.length = length
        mask_mod = flex_mask_mod(mask, length, spatial_shape)
        if device.type == "cuda":
            self.block_mask, self.keep = create_block_mask(mask_mod, None, None, length, length, device=device), None
        else:
            self.block_mask = None
            self.keep = create_mask(mask_mod, None, None, length, length, device=device).view(length, length)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float, sinks: Tensor | None = None) -> Tensor:
        if q.shape[2] != self.length:
            raise ValueError(f"FlexCore was built for {self.length} tokens, got {q.shape[2]}")
        if self.block_mask is not None:
            res = flex_attention(q, k, v, block_mask=self.block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1],
                                 return_lse=sinks is not None)
            out, lse = res if sinks is not None else (res, None)
        else:
            out, lse = dense_attention(q, k, v, self.keep, scale)
        return out if sinks is None else with_sinks(out, lse, sinks)


def sdpa_causal(q: Tensor, k: Tensor, v: Tensor, scale: float, sinks: Tensor | None = None) -> Tensor:
    """SDPA's causal attention (flash / cuDNN / efficient, as torch picks); no sinks."""
    if sinks is not None:
        raise ValueError("sdpa_causal: SDPA has no sink term (use FlexCore)")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


class PeerAttention(agnn.Attention):
    """``attngen.nn.Attention`` whose core is ``core(q, k, v, scale, sinks)`` (FlexCore or
    sdpa_causal): the same parameters and state_dict as the attngen module."""

    def __init__(self, *args, core: Callable, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.core = core

    def attend(self, q: Tensor, k: Tensor, v: Tensor, tensors: dict[str, Tensor]) -> Tensor:
        return self.core(q, k, v, self.scale, tensors.get("sinks"))


class PeerNeighborhoodAttention2D(agnn.NeighborhoodAttention2D):
    """``attngen.nn.NeighborhoodAttention2D`` on FlexAttention with the same neighborhood,
    for one grid ``spatial_shape`` (its BlockMask is built here)."""

    def __init__(self, *args, spatial_shape: tuple[int, int], device: torch.device | str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spatial_shape = tuple(spatial_shape)
        self.core = FlexCore(self.variant.mask, spatial_shape[0] * spatial_shape[1], device, self.spatial_shape)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, spatial_shape: tuple[int, ...]) -> Tensor:
        if tuple(spatial_shape) != self.spatial_shape:
            raise ValueError(f"built for the grid {self.spatial_shape}, got {tuple(spatial_shape)}")
        return self.core(q, k, v, self.scale)
