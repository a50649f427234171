"""Which launch config a call uses: user record -> shipped default -> heuristic.

``ATTNGEN_DIALECT`` steers the forward's kernel language: "gluon" takes the Gluon (sm90)
forward's default config wherever the call can run it (the GPU suite runs every kernel test
that way too), "tl" never takes a Gluon config, unset follows records and shipped defaults.

Called by ``CompiledAttention`` once per problem class (device, dtype, D, Dv, Lq/Lkv
bucket, grid); the answer is memoized there, so later calls cost one dict lookup. It
never times anything: tuning happens only through ``attngen tune`` / ``autotune.tune``.
"""
from __future__ import annotations

import os

import torch

from ..ir.kernel import NEIGHBORHOOD
from ..runtime.config import DIALECTS, KernelConfig
from ..runtime.gluon import default_gluon_config
from . import device as _device
from . import records


def spatial_of(axes) -> tuple[int, ...] | None:
    """The grid as the record bucket names it (three axes, leading 1s for lower ranks)."""
    return None if axes is None else tuple(a.size for a in axes)


def strategy_class(attn, p, axes) -> str:
    """The kernel's strategy; causal-like bands and neighborhoods split as the heuristic
    splits them."""
    if attn.ir.strategy == NEIGHBORHOOD:
        return f"neighborhood_{attn.neighborhood_class(p, axes)}"
    if attn.ir.causal_like:
        return "band_causal"
    return attn.ir.strategy


def _padded_dims_bug(p) -> bool:
    # Triton 3.6 computes wrong fp16/bf16 results when both head dims are padded and
    # BLOCK_N >= 64 (benchmarks/NOTES.md): the heuristic's workaround must win over a
    # shipped default, which is keyed by D bucket and cannot see the padding.
    return p.dtype != torch.float32 and p.D % 16 != 0 and p.DV % 16 != 0


def dialect_preference() -> str | None:
    """``ATTNGEN_DIALECT`` ("tl", "gluon" or unset); ValueError naming the variable otherwise."""
    value = os.environ.get("ATTNGEN_DIALECT", "").strip().lower() or None
    if value is not None and value not in DIALECTS:
        raise ValueError(f"ATTNGEN_DIALECT must be one of {DIALECTS} or unset, got {value!r}")
    return value


def select_config(attn, p, axes, gluon_possible: bool = False) -> tuple[KernelConfig, str]:
    """(config, source) for a call of ``attn`` on problem ``p`` (runtime.validate.Problem)
    at neighborhood ``axes`` (None otherwise); source is "record", "shipped", "heuristic" or
    "ATTNGEN_DIALECT". ``gluon_possible``: the variant and device can run the Gluon forward;
    without it a Gluon record or shipped default is passed over."""
    preference = dialect_preference()
    if preference == "gluon" and gluon_possible:
        return default_gluon_config(p.D, p.DV), "ATTNGEN_DIALECT"
    gluon_ok = gluon_possible and preference != "tl"
    gpu = _device.device_name(p.device)
    bucket = records.shape_bucket(p.Lq, p.Lkv, p.D, p.DV, spatial_of(axes))
    found = records.lookup_record(gpu, attn.key, p.dtype, bucket)
    if found is not None and (found.dialect == "tl" or gluon_ok):
        return found, "record"
    # the shipped table holds softmax kernels' measurements; sigmoid has its own heuristic
    if not _padded_dims_bug(p) and attn.ir.algorithm == "online_softmax":
        table = records.shipped_table(_device.gpu_family(gpu))
        if table:
            cls = records.structure_class(strategy_class(attn, p, axes), attn.score_kind, p.dtype, p.D, p.DV)
            found = table.get(cls)
            if found is not None and (found.dialect == "tl" or gluon_ok):
                return found, "shipped"
    return attn.heuristic_config(p, axes), "heuristic"
