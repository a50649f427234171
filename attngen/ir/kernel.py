"""The kernel IR: a Variant after lowering, as the passes leave it for code generation.

``KernelIR`` starts as a direct copy of a Variant (``from_variant``); each pass returns a new
one with some fields rewritten or filled in. Its text (``str()``) is what
``attngen compile --print-after-all`` shows and, after the last pass, what the cache key
hashes and what ``attn.ir`` prints.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import sympy

from .expr import KV_IDX, Q_IDX, QK, QK_SCALE
from .nodes import AndMask, Causal, Mask, Neighborhood, NotMask, OrMask, SlidingWindow, TensorParam, Variant
from .text import _mask_to_text, _unique_mask_names, expr_to_text, norm_to_text


@dataclass(frozen=True)
class Band(Mask):
    """Lowered band geometry: ``lo <= kv_idx - q_idx <= hi``; ``None`` is unbounded.

    Bounds are integer expressions in ``Lq`` and ``Lkv`` (bottom-right causal is
    ``hi = Lkv - Lq``). Causal, sliding windows and recognised mask_mods lower to this.
    """

    lo: sympy.Expr | None = None
    hi: sympy.Expr | None = None

    def tensors(self) -> tuple[TensorParam, ...]:
        return ()

    def predicate(self) -> sympy.Basic:
        d = KV_IDX - Q_IDX
        parts = []
        if self.lo is not None:
            parts.append(sympy.Ge(d, self.lo))
        if self.hi is not None:
            parts.append(sympy.Le(d, self.hi))
        return sympy.And(*parts) if parts else sympy.true

    def text(self) -> str:
        lo = "-inf" if self.lo is None else expr_to_text(self.lo)
        hi = "inf" if self.hi is None else expr_to_text(self.hi)
        return f"band({lo} <= kv_idx - q_idx <= {hi})"


def mask_text(mask: Mask | None) -> str:
    if mask is None:
        return "none"
    names = _unique_mask_names(mask)

    def walk(m: Mask) -> str:
        if isinstance(m, Band):
            return m.text()
        if isinstance(m, AndMask):
            return f"({walk(m.a)} & {walk(m.b)})"
        if isinstance(m, OrMask):
            return f"({walk(m.a)} | {walk(m.b)})"
        if isinstance(m, NotMask):
            return f"~{walk(m.a)}"
        return _mask_to_text(m, names)

    return walk(mask)


# How the kernel finds the KV tiles of each query tile.
DENSE = "dense"   # every tile; only the ragged last tile runs mask code
BAND = "band"     # closed-form tile ranges from a Band; only the band's edge tiles run mask code
TILES = "tiles"   # a generated classifier kernel lists full and partial tiles at run time
NEIGHBORHOOD = "neighborhood"  # box tiles of the grid with closed-form per-axis KV ranges


@dataclass(frozen=True)
class KernelIR:
    """A variant being lowered. Fields marked (pass) are filled in by the pipeline."""

    name: str
    tensors: tuple[TensorParam, ...]
    norm: object
    score: sympy.Basic | None                    # score_mod over score, b, h, q_idx, kv_idx
    score_name: str | None = None
    mask: Mask | None = None
    # (pass) lower_normalization
    algorithm: str | None = None
    # (pass) fold_scale_exp2: the score in log2 units over qk, sm_scale, qk_scale and indices
    score_log2: sympy.Basic | None = None
    score_may_be_neg_inf: bool = False
    # (pass) plan_mask_tiles
    strategy: str | None = None
    band: Band | None = None
    neighborhood: Neighborhood | None = None      # its geometry; the rest of the mask is tile_pred
    tile_pred: sympy.Basic | None = None          # per-element predicate of partial tiles
    tile_depends: tuple[str, ...] = ()            # which of b, h the tile lists depend on
    # (pass) common_subexpressions: temporaries shared by score_log2 and tile_pred
    temps: tuple[tuple[sympy.Symbol, sympy.Basic], ...] = ()
    passes: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_variant(cls, v: Variant) -> "KernelIR":
        return cls(name=v.label, tensors=v.tensors(), norm=v.norm,
                   score=v.score.expr if v.score is not None else None,
                   score_name=v.score.name if v.score is not None else None, mask=v.mask)

    def replace(self, **changes) -> "KernelIR":
        return dataclasses.replace(self, **changes)

    @property
    def plain_score(self) -> bool:
        """The score is the scaled product itself (``qk * qk_scale``), with no score_mod left."""
        return self.score_log2 == QK * QK_SCALE

    @property
    def causal_like(self) -> bool:
        """A band with no lower edge (causal, bottom-right causal): later rows see more keys."""
        return self.strategy == BAND and self.band.lo is None

    def to_text(self) -> str:
        lines = [f"kernel {self.name}"]
        lines += [f"tensor {p.name}[{p.ndim}] {p.source}" for p in self.tensors]
        lines.append(f"norm = {norm_to_text(self.norm)}" + (f" -> {self.algorithm}" if self.algorithm else ""))
        if self.score_log2 is None:
            lines.append(f"score = {expr_to_text(self.score) if self.score is not None else 'score'}")
        if self.strategy is None:
            names = _unique_mask_names(self.mask)
            lines += [f"maskmod {n} = {expr_to_text(m.pred)}" for m, n in names.items()]
            lines.append(f"mask = {mask_text(self.mask)}")
        else:
            geometry = self.band.text() if self.band is not None else None
            if self.neighborhood is not None:
                geometry = _mask_to_text(self.neighborhood, {})
            lines.append(f"tiles = {self.strategy}" + (f" {geometry}" if geometry else "")
                         + (f" per {', '.join(self.tile_depends)}" if self.tile_depends else ""))
        for sym, expr in self.temps:
            lines.append(f"let {sym} = {expr_to_text(expr)}")
        if self.score_log2 is not None:
            lines.append(f"score_log2 = {expr_to_text(self.score_log2)}"
                         + ("  # may be -inf" if self.score_may_be_neg_inf else ""))
        if self.tile_pred is not None:
            lines.append(f"partial_tile_mask = {expr_to_text(self.tile_pred)}")
        return "\n".join(lines) + "\n"

    __str__ = to_text


def lower_geometry_leaf(mask: Mask) -> Mask:
    """Built-in 1-D geometry as a Band (other nodes unchanged)."""
    from .expr import LKV, LQ

    if isinstance(mask, Causal):
        return Band(None, LKV - LQ if mask.bottom_right else sympy.Integer(0))
    if isinstance(mask, SlidingWindow):
        return Band(sympy.Integer(-mask.left), sympy.Integer(mask.right))
    return mask


__all__ = ["Band", "KernelIR", "DENSE", "BAND", "TILES", "NEIGHBORHOOD", "lower_geometry_leaf", "mask_text"]
