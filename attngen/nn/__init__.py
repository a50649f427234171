"""torch.nn modules whose attention is an attngen kernel.

- ``Attention``: self-attention with a fused qkv projection, GQA and any variant (learned or
  fixed runtime tensors such as attention sinks as parameters or buffers).
- ``NeighborhoodAttention1D/2D/3D``: NATTEN's modules, (B, *spatial, dim) in and out.

``import attngen.nn`` (or ``from attngen.nn import Attention``) makes them available.
"""
from __future__ import annotations

from .attention import Attention
from .neighborhood import (NeighborhoodAttention, NeighborhoodAttention1D, NeighborhoodAttention2D,
                           NeighborhoodAttention3D)

__all__ = ["Attention", "NeighborhoodAttention", "NeighborhoodAttention1D", "NeighborhoodAttention2D",
           "NeighborhoodAttention3D"]
