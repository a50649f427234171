"""Render a chunked-linear-attention KernelIR (``algorithm == "chunked_linear"``) into a
Triton module through templates/linear_attention.py.j2.

The template holds the whole algorithm; this module only reads the four facts that shape the
generated code from the IR (feature map, decay, normalizer, causal or not), so each module
contains its variant's code and nothing else.
"""
from __future__ import annotations

from .._version import __version__
from ..ir.kernel import BAND, DENSE, KernelIR
from ..ir.nodes import Linear
from .environment import template_environment

TEMPLATE = "linear_attention.py.j2"
EPS = "1e-6"  # SEMANTICS.md: sum_j w_ij phi(q_i).phi(k_j) + 1e-6


def build_context(ir: KernelIR, ir_text: str) -> dict:
    """Everything the template needs, as plain strings and flags."""
    norm = ir.norm
    if not isinstance(norm, Linear):
        raise TypeError(f"render_linear: variant '{ir.name}' is not linear attention ({norm!r})")
    # after recognize_geometry and plan_mask_tiles, ag.causal() is the band kv_idx - q_idx <= 0
    # (the runtime requires Lq == Lkv, where both corners coincide); no mask is dense
    if ir.strategy not in (DENSE, BAND):
        raise ValueError(f"render_linear: variant '{ir.name}' has a '{ir.strategy}' tile plan; linear attention "
                         "takes no mask or ag.causal()")
    return {
        "version": __version__,
        "name": ir.name,
        "ir_lines": ir_text.rstrip("\n").splitlines(),
        "feature_map": norm.feature_map,
        "decay": norm.decay,
        "normalize": norm.normalize,
        "causal": ir.strategy == BAND,
        "eps": EPS,
    }


def render(ir: KernelIR) -> str:
    """The Triton module for ``ir`` (deterministic: same IR, same bytes)."""
    return template_environment().get_template(TEMPLATE).render(**build_context(ir, ir.to_text()))
