"""Render a KernelIR into a Gluon module for Hopper (sm90): templates/attention_fwd_gluon.py.j2.

The Gluon forward shares the ``tl`` forward's context (render.build_context: the score, mask
and per-row code, the band's closed-form bounds) and covers the plans whose KV walk is one
contiguous run of tiles: dense and band masks, and tile lists where the classifier finds one
run per query tile (``TileLists.runs``: packed documents, prefix-LM; the runtime checks it per
call), softmax with or without a sink. Neighborhoods and sigmoid have no Gluon kernel;
``gluon_unsupported`` says why.
"""
from __future__ import annotations

from ..ir.expr import InNeighborhood
from ..ir.kernel import BAND, DENSE, TILES, KernelIR
from ..passes.normalization import ONLINE_SOFTMAX
from .environment import template_environment
from .render import build_context

TEMPLATE = "attention_fwd_gluon.py.j2"


def gluon_unsupported(ir: KernelIR) -> str | None:
    """Why ``ir`` has no Gluon forward, or None when it has one."""
    if ir.algorithm != ONLINE_SOFTMAX:
        return f"the Gluon forward runs softmax attention only (this variant's algorithm is {ir.algorithm})"
    in_mask = ir.tile_pred is not None and bool(ir.tile_pred.atoms(InNeighborhood)) or any(
        e.atoms(InNeighborhood) for _, e in ir.temps)
    if ir.strategy not in (DENSE, BAND, TILES) or ir.neighborhood is not None or in_mask:
        return (f"the Gluon forward walks dense, band and tile-list masks without neighborhoods only "
                f"(this variant's plan is {ir.strategy})")
    return None


def render_gluon(ir: KernelIR) -> str:
    """The Gluon module for ``ir`` (deterministic); ValueError when the plan has none."""
    reason = gluon_unsupported(ir)
    if reason is not None:
        raise ValueError(reason)
    ctx = build_context(ir, ir.to_text())
    if ctx["na_keep"]:  # pragma: no cover - gluon_unsupported refuses neighborhoods
        raise ValueError("the Gluon forward has no neighborhood test")
    return template_environment().get_template(TEMPLATE).render(**ctx)
