"""``attngen.nn.Attention``: multi-head self-attention whose core is a compiled attngen variant."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..compiler import compile as compile_variant
from ..ir.nodes import Linear, Neighborhood, Variant
from . import checks
from .variant_tensors import TensorRoles, initial_values, register


def variant_summary(variant: Variant) -> str:
    """One line for ``repr``: the variant's name and its IR body (score, mask, norm)."""
    body = [line.strip() for line in variant.to_text().splitlines()
            if line.strip() and not line.startswith(("attngen ", "variant ", "tensor "))]
    return f"{variant.label}: {'; '.join(body)}"


def _needs_spatial_shape(variant: Variant) -> bool:
    return variant.mask is not None and any(isinstance(leaf, Neighborhood) for leaf in variant.mask.leaves())


class Attention(nn.Module):
    """Multi-head self-attention: fused qkv projection, GQA, an attngen variant, output projection.

    ``x`` (B, L, dim) -> (B, L, dim). One ``nn.Linear`` (``qkv``) produces the queries
    (``num_heads`` heads) and the keys and values (``num_kv_heads`` heads each) of width
    ``head_dim = dim // num_heads``; q, k and v reach the kernel as views of its output (no
    copies); ``proj`` maps the heads back to ``dim``.

    Args:
        dim: model width; divisible by ``num_heads``.
        num_heads: query heads.
        num_kv_heads: key/value heads (GQA; MQA at 1). Default ``num_heads``; must divide it.
        variant: an ``ag.Variant`` (default ``ag.Variant()``: dense softmax attention). Any
            score_mod, mask and normalization, linear attention included (then no scale).
            Neighborhood masks need a grid: use ``NeighborhoodAttention1D/2D/3D``.
        bias: bias in the qkv and output projections.
        qk_scale: the scale of q.k (default ``head_dim ** -0.5``); must be None for linear
            attention, which has none.
        tensors: the variant's runtime tensors that this module owns, by name. An
            ``nn.Parameter`` is learned (a parameter of the module), any other tensor is
            fixed (a buffer); both are saved in ``state_dict`` and registered under their
            own names (``module.sinks``). Defaults when the variant reads them and
            ``tensors`` does not name them: ``sinks`` learned zeros (num_heads,),
            ``decay_log`` RetNet's fixed decays (num_heads,). Any other runtime tensor
            (``document_ids``, say) is per call: pass it to ``forward`` by keyword.
        proj_drop: dropout after the output projection.

    The kernel is compiled once, here (``ag.compile``, cached on disk). ``forward`` does no
    Python work that depends on tensor values, so ``torch.compile`` can trace it.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, variant: Variant | None = None,
                 bias: bool = True, *, qk_scale: float | None = None,
                 tensors: Mapping[str, torch.Tensor] | None = None, proj_drop: float = 0.0) -> None:
        super().__init__()
        owner = type(self).__name__
        self.head_dim = checks.head_dim(owner, dim, num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else checks.positive_int(owner, "num_kv_heads", num_kv_heads)
        if num_heads % num_kv_heads:
            raise ValueError(f"{owner}: num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        variant = Variant() if variant is None else variant
        if not isinstance(variant, Variant):
            raise TypeError(f"{owner}: variant must be an ag.Variant, got {type(variant).__name__}")
        if _needs_spatial_shape(variant):
            raise ValueError(f"{owner}: variant '{variant.label}' has a neighborhood mask, which needs a grid "
                             "(spatial_shape); use attngen.nn.NeighborhoodAttention1D/2D/3D")
        linear = isinstance(variant.norm, Linear)
        if linear and qk_scale is not None:
            raise ValueError(f"{owner}: qk_scale must be None for linear attention (variant '{variant.label}' "
                             "computes phi(q).phi(k) unscaled)")
        self.dim, self.num_heads, self.num_kv_heads, self.variant = dim, num_heads, num_kv_heads, variant
        self.scale = None if linear else checks.qk_scale(owner, qk_scale, self.head_dim)
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=bias)
        self.proj = nn.Linear(num_heads * self.head_dim, dim, bias=bias)
        self.proj_drop = nn.Dropout(checks.dropout_rate(owner, proj_drop))
        self.kernel = compile_variant(variant)
        # set first, so that a variant tensor named like one of them is refused as a shadow
        self.roles, self.owned_tensors = TensorRoles((), (), ()), ()
        self.roles = register(owner, self, variant, initial_values(owner, variant, num_heads, tensors))
        self.owned_tensors = self.roles.owned  # the names forward reads off the module

    def forward(self, x: torch.Tensor, **call_tensors: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, dim) -> (B, L, dim); ``call_tensors``: the variant's per-call tensors."""
        checks.token_input(type(self).__name__, x, "(B, L, dim)", 3, self.dim)
        for name in call_tensors:
            if name in self.owned_tensors:
                raise TypeError(f"{type(self).__name__}: {name} is owned by the module (module.{name}); "
                                "do not pass it to forward")
        B, L, _ = x.shape
        hq, hkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split((hq * hd, hkv * hd, hkv * hd), dim=-1)
        # (B, L, heads * hd) column blocks -> (B, heads, L, hd) views; the kernel takes any strides
        q, k, v = (t.view(B, L, h, hd).transpose(1, 2) for t, h in ((q, hq), (k, hkv), (v, hkv)))
        tensors = {name: getattr(self, name) for name in self.owned_tensors}
        tensors.update(call_tensors)
        out = self.attend(q, k, v, tensors)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, hq * hd)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The attention core on q (B, Hq, L, hd), k and v (B, Hkv, L, hd) -> (B, Hq, L, hd).

        A subclass may replace it to run the same module (same parameters, same
        ``state_dict``) on another kernel; the training examples do so for their SDPA and
        FlexAttention runs."""
        return self.kernel(q, k, v, scale=self.scale, **tensors)

    def extra_repr(self) -> str:
        roles = self.roles
        parts = [f"dim={self.dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                 f"head_dim={self.head_dim}, scale={self.scale}",
                 f"variant={variant_summary(self.variant)}"]
        for label, names in (("learned", roles.learned), ("fixed", roles.fixed), ("per_call", roles.per_call)):
            if names:
                parts.append(f"{label}=({', '.join(names)})")
        return ", ".join(parts)
