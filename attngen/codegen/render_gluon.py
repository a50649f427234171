"""Render a KernelIR into Gluon modules for Hopper (sm90): the forward
(templates/attention_fwd_gluon.py.j2) and the backward (templates/attention_bwd_gluon.py.j2).

The Gluon forward shares the ``tl`` forward's context (render.build_context: the score, mask
and per-row code, the band's closed-form bounds) and covers the plans whose KV walk is one
contiguous run of tiles: dense and band masks, and tile lists where the classifier finds one
run per query tile (``TileLists.runs``: packed documents, prefix-LM; the runtime checks it per
call), softmax with or without a sink. Neighborhoods and sigmoid have no Gluon kernel;
``gluon_unsupported`` says why.
The backward covers dense and band masks, from the ``tl`` backward's expressions
(render.backward_context); gradients of runtime tensors the score reads stay with the ``tl``
backward (its launcher refuses them), and ``gluon_backward_unsupported`` says why a plan has
none. The backward is not yet run on a GPU and nothing selects it: only an explicit call of its
launcher does (tests/test_gluon.py's GPU tests).
"""
from __future__ import annotations

from ..ir.expr import InNeighborhood
from ..ir.kernel import BAND, DENSE, TILES, KernelIR
from ..passes.normalization import ONLINE_SOFTMAX
from .environment import template_environment
from .render import build_context

TEMPLATE = "attention_fwd_gluon.py.j2"
BACKWARD_TEMPLATE = "attention_bwd_gluon.py.j2"


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
    return template_environment().get_template(TEMPLATE).render(**build_context(ir, ir.to_text()))


def _backward_plan_reason(ir: KernelIR) -> str | None:
    """Why ``ir``'s plan has no Gluon backward, before its derivative is printed."""
    if ir.algorithm != ONLINE_SOFTMAX:
        return f"the Gluon backward runs softmax attention only (this variant's algorithm is {ir.algorithm})"
    if ir.strategy == TILES or gluon_unsupported(ir) is not None:
        return f"the Gluon backward walks dense and band masks only (this variant's plan is {ir.strategy})"
    return None


NO_DERIVATIVE = "the score's derivative cannot be printed as kernel code (this variant has no backward)"


def gluon_backward_unsupported(ir: KernelIR) -> str | None:
    """Why ``ir`` has no Gluon backward, or None when it has one."""
    reason = _backward_plan_reason(ir)
    if reason is None and build_context(ir, ir.to_text())["bwd"] is None:
        return NO_DERIVATIVE
    return reason


def render_gluon_backward(ir: KernelIR) -> str:
    """The Gluon backward module for ``ir`` (deterministic); ValueError when the plan has none."""
    reason = _backward_plan_reason(ir)
    if reason is not None:
        raise ValueError(reason)
    ctx = build_context(ir, ir.to_text())
    if ctx["bwd"] is None:
        raise ValueError(NO_DERIVATIVE)
    return template_environment().get_template(BACKWARD_TEMPLATE).render(**ctx)
