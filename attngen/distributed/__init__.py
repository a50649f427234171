"""Context parallelism: one attention over a sequence sharded across a torch.distributed group.

    import attngen.distributed as agd
    layout = agd.layout_for(variant, seq_len, world_size)      # balanced for causal-like masks
    out = agd.context_parallel_attention(attn, agd.shard(q, layout), agd.shard(k, layout),
                                         agd.shard(v, layout), layout=layout, mode="ring")

Modes: ring (P2P key/value exchange overlapped with compute), allgather, ulysses (all-to-all
between sequence and heads); neighborhood variants shard their grid by rows (GridLayout)
and exchange only the halo their windows reach. docs/distributed.md has the details.
"""
from __future__ import annotations

from .api import context_parallel_attention, pair_kernels
from .comm import Traffic
from .halo import GridLayout
from .layout import SequenceLayout, layout_for
from .merge import add_sinks, merge_lse
from .positions import offset_variant
from .sharding import shard, unshard

__all__ = ["GridLayout", "SequenceLayout", "Traffic", "add_sinks", "context_parallel_attention", "layout_for",
           "merge_lse", "pair_kernels", "offset_variant", "shard", "unshard"]
