"""What the decoding kernels (templates/decode.py.j2) need beyond the forward's context.

Decoding runs the forward's score, mask and normalization code (the same ``_weights`` and
``_row_values`` functions of the generated module) in another loop skeleton: a few new
queries per sequence against a long KV cache, split across programs. The template needs
only the band's bounds as kernel code, since a decoding program computes them per sequence
(the mask sees ``Lq = Lkv = seq_len``), where the forward computes them once on the host.
"""
from __future__ import annotations

from ..ir.kernel import BAND, NEIGHBORHOOD, KernelIR
from ..passes.normalization import ONLINE_SOFTMAX, SIGMOID
from .printer import TritonPrinter


def decode_unsupported(ir: KernelIR) -> str | None:
    """Why ``ir`` has no decoding kernels, or None when it has them."""
    if ir.algorithm not in (ONLINE_SOFTMAX, SIGMOID):
        return f"{ir.algorithm} normalization decodes through its own recurrence, not a KV cache"
    if ir.strategy == NEIGHBORHOOD or ir.neighborhood is not None:
        return "neighborhood masks are defined on a grid of Lq == Lkv tokens, not on a growing KV cache"
    return None


def decode_context(ir: KernelIR, printer: TritonPrinter) -> dict | None:
    """The decoding kernels' extra context; None for variants that cannot decode.

    ``band_lo`` / ``band_hi``: the band's bounds on ``kv_idx - q_idx`` as kernel code over
    ``Lq`` and ``Lkv`` (None: unbounded on that side). ``mask_every_tile``: the mask has no
    closed-form tile ranges (a tile-list plan), so every visited tile applies it."""
    if decode_unsupported(ir) is not None:
        return None
    band = ir.band if ir.strategy == BAND else None
    return {
        "band_lo": printer.code(band.lo) if band is not None and band.lo is not None else None,
        "band_hi": printer.code(band.hi) if band is not None and band.hi is not None else None,
        "mask_every_tile": ir.tile_pred is not None and band is None,
    }
