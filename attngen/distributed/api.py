"""``context_parallel_attention``: one attention whose sequence is sharded over a process group.

Every rank calls it with its local shards; the result is its local shard of the output (and
of the lse). The modes (ring, allgather, ulysses for sequence layouts; halo and ulysses for
neighborhood grids) compute the partial results without sinks and merge them; sinks join
once at the end, in torch, which also gives their gradient (merge.py).
"""
from __future__ import annotations

from typing import Union

import torch
import torch.distributed as dist

from ..compiler import compile as compile_variant
from ..ir.nodes import Variant
from ..passes.tiles import split_neighborhood
from ..runtime.attention import AttentionCall, CompiledAttention
from ..runtime.config import KernelConfig
from ..runtime.linear import CompiledLinearAttention
from ..runtime.validate import Problem, check_call_options, check_qkv, check_runtime_tensors, check_scale
from .allgather import AllGatherAttention
from .chunk_kernel import OffsetKernel
from .comm import Group, Traffic
from .fast_paths import PairKernels
from .halo import GridLayout, halo_plan
from .layout import SequenceLayout
from .merge import add_sinks
from .neighborhood import HaloAttention, HaloSetup
from .pairs import Setup
from .positions import offset_variant
from .ring import RingAttention
from .ulysses import UlyssesAttention, check_heads

SEQUENCE_MODES = {"ring": RingAttention, "allgather": AllGatherAttention, "ulysses": UlyssesAttention}
GRID_MODES = ("halo", "ulysses")
_KERNELS: dict[str, PairKernels] = {}  # by the key of the user's compiled kernel


def pair_kernels(attn: CompiledAttention) -> PairKernels:
    """The kernels context-parallel calls of ``attn`` run: its offset variant (positions.py)
    and the fast paths (fast_paths.py), compiled once per process."""
    found = _KERNELS.get(attn.key)
    if found is None:
        rewrite = offset_variant(attn.variant)
        offset = OffsetKernel(compile_variant(rewrite.variant), rewrite, attn.variant)
        found = _KERNELS[attn.key] = PairKernels.build(offset)
    return found


def _compiled(attn: Union[CompiledAttention, Variant]) -> CompiledAttention:
    if isinstance(attn, Variant):
        attn = compile_variant(attn)
    if isinstance(attn, CompiledLinearAttention):
        offset_variant(attn.variant)  # raises its UnsupportedVariant, which says why
    if not isinstance(attn, CompiledAttention):
        raise TypeError(f"context_parallel_attention: attn must be what ag.compile returns (or an ag.Variant), "
                        f"got {type(attn).__name__}")
    return attn


def _check_layout(layout: object, p: Problem, group: Group, neighborhood: bool, mode: str) -> None:
    expected = GridLayout if neighborhood else SequenceLayout
    if not isinstance(layout, expected):
        what = "a GridLayout (neighborhood variants shard their grid by rows)" if neighborhood else "a SequenceLayout"
        raise TypeError(f"layout must be {what}, got {type(layout).__name__}")
    modes = GRID_MODES if neighborhood else tuple(SEQUENCE_MODES)
    if mode not in modes:
        raise ValueError(f"mode must be one of {', '.join(modes)} for this variant, got {mode!r}")
    if layout.world_size != group.size:
        raise ValueError(f"layout is for {layout.world_size} ranks but the process group has {group.size}")
    sequence = layout.sequence if neighborhood else layout
    local = sequence.local_length(group.rank)
    if p.Lq != local or p.Lkv != local:
        raise ValueError(f"rank {group.rank} holds {local} positions in this layout, but q has Lq={p.Lq} and k has "
                         f"Lkv={p.Lkv}; shard q, k, v with the layout (agd.shard(x, layout))")


@torch.compiler.disable  # collectives and host-side plans: a graph breaks here and runs it eagerly
def context_parallel_attention(attn: Union[CompiledAttention, Variant], q: torch.Tensor, k: torch.Tensor,
                               v: torch.Tensor, *, layout: Union[SequenceLayout, GridLayout],
                               group: dist.ProcessGroup | None = None, mode: str | None = None,
                               scale: float | None = None, return_lse: bool = False,
                               config: KernelConfig | None = None, deterministic: bool | None = None,
                               traffic: Traffic | None = None, **tensors: torch.Tensor):
    """Self-attention over a sequence sharded across ``group`` (default: the whole world).

    q (B, Hq, Lr, D), k (B, Hkv, Lr, D), v (B, Hkv, Lr, Dv): this rank's positions as
    ``layout`` assigns them (``layout.shard``). ``mode``: "ring" (default), "allgather" or
    "ulysses" for a SequenceLayout; "halo" (default) or "ulysses" for neighborhood variants,
    whose layout is a GridLayout. Runtime tensors by keyword as for ``attn(q, k, v)``:
    ``document_ids`` is this rank's shard (B, Lr); sinks (Hq,) and tensors a mod indexes by
    position or head are whole (every rank passes the same). Returns this rank's out (B, Hq,
    Lr, Dv) and, with ``return_lse=True``, its lse (B, Hq, Lr).

    Gradients reach q, k, v (this rank's shards) and runtime tensors that require grad; a
    tensor every rank passes whole (sinks, slopes) gets this rank's contribution, to be
    summed over the group as data-parallel gradients are. ``traffic``: a comm.Traffic that
    counts the bytes this rank sends (``agd.Traffic()``).
    """
    attn = _compiled(attn)
    group_info = Group.of(group)
    p = check_qkv(q, k, v)
    check_scale(scale, p.D)
    deterministic = check_call_options(return_lse, config, deterministic, attn.ir.algorithm, attn.ir.name,
                                       KernelConfig)
    if p.Lq != p.Lkv:
        raise ValueError(f"context_parallel_attention is self-attention: q and k must hold the same positions, got "
                         f"Lq={p.Lq}, Lkv={p.Lkv}")
    kernels = pair_kernels(attn)
    kernel = kernels.offset
    rewrite = kernel.rewrite
    neighborhood = rewrite.neighborhood is not None
    mode = mode or ("halo" if neighborhood else "ring")
    _check_layout(layout, p, group_info, neighborhood, mode)
    bound = check_runtime_tensors(attn._params, tensors, attn.captured_tensors(), p, attn.ir.name)
    sinks = bound.pop("sinks") if rewrite.sink else None
    user = [bound[n] for n in kernel.user_names]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *user))
    if needs_grad and not kernel._has_backward:
        raise NotImplementedError(f"variant '{attn.ir.name}': no backward kernel could be generated for its "
                                  "score_mod's derivative; run under torch.no_grad() or detach the inputs")
    if mode == "ulysses":
        check_heads(p.HQ, p.HKV, group_info.size)
    if neighborhood:
        out, lse = _grid_call(kernels, attn, layout, group_info, mode, scale, config, deterministic, traffic,
                              q, k, v, user)
    else:
        head_offset = group_info.rank * (p.HQ // group_info.size) if mode == "ulysses" else 0
        setup = Setup(kernels, AttentionCall(scale, None, config, True, True, deterministic), layout, group_info,
                      traffic, head_offset)
        out, lse = SEQUENCE_MODES[mode].apply(setup, q, k, v, *user)
    if sinks is not None:
        out, lse = add_sinks(out, lse, sinks)
        out = out.to(q.dtype)
    return (out, lse) if return_lse else out


def _grid_call(kernels: PairKernels, attn: CompiledAttention, grid: GridLayout, group: Group, mode: str, scale,
               config, deterministic: bool, traffic: Traffic | None, q, k, v, user: list[torch.Tensor]):
    """Neighborhood variants: the halo exchange, or Ulysses over the whole grid."""
    kernel = kernels.offset
    na = kernel.rewrite.neighborhood
    if mode == "ulysses":
        call = AttentionCall(scale, grid.spatial_shape, config, True, True, deterministic)
        setup = Setup(kernels, call, grid.sequence, group, traffic, group.rank * (q.shape[1] // group.size))
        return UlyssesAttention.apply(setup, q, k, v, *user)
    split = split_neighborhood(attn.variant.mask)
    if split is None or not split[2]:
        raise ValueError(f"variant '{attn.ir.name}': halo mode needs the neighborhood under '&' only (a '|' or '~' "
                         "reaches keys outside the windows); use mode='ulysses'")
    plan = halo_plan(na, grid, group.rank)
    call = AttentionCall(scale, plan.slab_shape[-len(grid.spatial_shape):], config, True, True, deterministic)
    return HaloAttention.apply(HaloSetup(kernel, call, grid, plan, group, traffic), q, k, v, *user)


__all__ = ["GRID_MODES", "SEQUENCE_MODES", "context_parallel_attention", "pair_kernels"]
