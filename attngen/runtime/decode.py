"""Decoding: the new query tokens of each sequence against its KV cache, contiguous or paged.

``decode(attn, q, k_cache, v_cache, ...)`` (``attn.decode(...)``) validates the call and runs
``decode_impl``: directly in eager mode, through the custom op ``attngen::decode`` when a
graph is traced (torch.compile, torch.export), so that a decode step traces with no graph
break. The kernels are the compiled variant's own (templates/decode.py.j2, in the same
generated module as its forward): split-KV programs in one launch, the last split of each row
tile merging them. The launch makes no host
read (the split count comes from shapes and the SM count), so a CUDA graph can capture it;
only the optional content checks (``check=True``, decode_checks.py) read the device.
"""
from __future__ import annotations

import functools
from typing import Optional

import sympy
import torch
from torch import Tensor

from ..codegen.render_decode import decode_unsupported
from ..ir.expr import Q_IDX
from ..ir.kernel import DENSE, KernelIR
from ..passes.normalization import ONLINE_SOFTMAX
from .compiled import device_guard
from .decode_checks import cache_sizes, check_cache_call, check_cache_contents, device_reads_allowed
from .decode_config import DecodeConfig, check_num_splits, choose_decode_config
from .fast_launch import launch_wrap
from .ops import _define, decode_config as parse_config, encode_config, kernel_for
from .validate import check_runtime_tensors, check_scale, in_graph


_READS_QUERY_POSITIONS: dict[str, bool] = {}  # by kernel key: a sympy walk is too slow for every step


def reads_query_positions(attn) -> bool:
    """Whether the variant's mask or score depends on q_idx (then the new tokens' positions
    must exist: a sequence may not be shorter than the new tokens)."""
    found = _READS_QUERY_POSITIONS.get(attn.key)
    if found is None:
        ir: KernelIR = attn.ir
        expr = ir.score_log2
        for sym, value in reversed(ir.temps):  # temporaries are in dependency order
            expr = expr.xreplace({sym: value})
        found = ir.strategy != DENSE or Q_IDX in expr.free_symbols or any(
            Q_IDX in r.free_symbols for r in expr.atoms(sympy.Indexed))
        _READS_QUERY_POSITIONS[attn.key] = found
    return found


@functools.lru_cache(maxsize=256)
def _config(device: torch.device, dtype: torch.dtype, d: int, dv: int, rows: int, sequence_heads: int,
            capacity: int, paged: bool, num_splits: int | None) -> DecodeConfig:
    return choose_decode_config(device, dtype, d, dv, rows, sequence_heads, capacity, paged, num_splits)


def decode_impl(attn, q: Tensor, k_cache: Tensor, v_cache: Tensor, seq_lens: Optional[Tensor],
                block_table: Optional[Tensor], bound: dict[str, Tensor], scale: Optional[float],
                config: DecodeConfig | None, num_splits: int | None, return_lse: bool,
                check: bool) -> tuple[Tensor, Optional[Tensor]]:
    """Launch the decoding kernels on inputs whose shapes were validated; (out, lse or None)."""
    p = cache_sizes(q, k_cache, v_cache, block_table)
    if check and device_reads_allowed(p.device):
        check_cache_contents(p, seq_lens, block_table, variant=attn.ir.name,
                             min_nonempty=p.Lq if reads_query_positions(attn) else 0)
    if config is None:
        config = _config(p.device, p.dtype, p.D, p.DV, p.HQ // p.HKV * p.Lq, p.B * p.HKV, p.capacity, p.paged,
                         num_splits)
    sm_scale = p.D ** -0.5 if scale is None else scale
    softmax = attn.ir.algorithm == ONLINE_SOFTMAX
    out = torch.empty((p.B, p.HQ, p.Lq, p.DV), dtype=p.dtype, device=p.device)
    lse = torch.empty((p.B, p.HQ, p.Lq), dtype=torch.float32, device=p.device) if return_lse else None
    part = part_lse = None
    if config.num_splits > 1:
        # fp32 scratch for the splits' partial outputs (and log-sum-exps), merged into out by
        # the split of each row tile that finishes last
        part = torch.empty((p.B, p.HQ, p.Lq, config.num_splits, p.DV), dtype=torch.float32, device=p.device)
        part_lse = torch.empty(part.shape[:4], dtype=torch.float32, device=p.device) if softmax else None
    attn.poison(out, lse, part, part_lse)
    with device_guard(p.device):
        attn.module(p.device).launch_decode(q, k_cache, v_cache, out, lse, part, part_lse, seq_lens, block_table,
                                            sm_scale, bound, config, wrap=launch_wrap(p.device))
    return out, lse


def decode(attn, q: Tensor, k_cache: Tensor, v_cache: Tensor, seq_lens: Optional[Tensor] = None,
           block_table: Optional[Tensor] = None, *, scale: float | None = None, return_lse: bool = False,
           num_splits: int | None = None, config: DecodeConfig | None = None, check: bool = True,
           **tensors: Tensor):
    """Attention of q's new tokens against a KV cache (docs/serving.md); see
    ``CompiledAttention.decode``."""
    reason = decode_unsupported(attn.ir)
    if reason is not None:
        raise ValueError(f"variant '{attn.ir.name}' cannot decode: {reason}")
    p = check_cache_call(q, k_cache, v_cache, seq_lens, block_table)
    check_scale(scale, p.D)
    bound = check_runtime_tensors(attn._params, tensors, attn.captured_tensors(), p.as_problem(), attn.ir.name)
    for name, flag in (("return_lse", return_lse), ("check", check)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if return_lse and attn.ir.algorithm != ONLINE_SOFTMAX:
        raise ValueError(f"return_lse: variant '{attn.ir.name}' uses {attn.ir.algorithm} normalization, which has "
                         "no log-sum-exp")
    if num_splits is not None:
        check_num_splits(num_splits)
    if config is not None and not isinstance(config, DecodeConfig):
        raise TypeError(f"config must be an attngen DecodeConfig, got {type(config).__name__}")
    if config is not None and num_splits is not None and config.num_splits != num_splits:
        raise ValueError(f"num_splits={num_splits} disagrees with config.num_splits={config.num_splits}; pass one")
    if seq_lens is None and p.Lq > p.capacity and reads_query_positions(attn):
        raise ValueError(f"q has Lq={p.Lq} new tokens but k_cache holds {p.capacity} positions: variant "
                         f"'{attn.ir.name}' reads query positions, which would be negative")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_cache, v_cache, *bound.values())):
        raise ValueError("decode has no backward (it serves inference): call it under torch.no_grad() or "
                         "torch.inference_mode(), or detach the inputs")
    if in_graph(q, k_cache, v_cache):
        out, lse = torch.ops.attngen.decode(attn.key, q, k_cache, v_cache, seq_lens, block_table,
                                            list(bound.values()), scale, encode_config(config), num_splits or 0,
                                            return_lse, check)
    else:
        out, lse = decode_impl(attn, q, k_cache, v_cache, seq_lens, block_table, bound, scale, config, num_splits,
                               return_lse, check)
    return (out, lse) if return_lse else out


def _decode_fake(kernel, q, k_cache, v_cache, seq_lens, block_table, tensors, scale, config, num_splits,
                 return_lse, check):
    out = q.new_empty((q.shape[0], q.shape[1], q.shape[2], v_cache.shape[3]))
    lse_shape = (q.shape[0], q.shape[1], q.shape[2]) if return_lse else (0,)
    return out, q.new_empty(lse_shape, dtype=torch.float32)


@_define("decode(str kernel, Tensor q, Tensor k_cache, Tensor v_cache, Tensor? seq_lens, Tensor? block_table, "
         "Tensor[] tensors, float? scale, str config, int num_splits, bool return_lse, bool check) "
         "-> (Tensor, Tensor)", _decode_fake)
def _decode_op(kernel: str, q: Tensor, k_cache: Tensor, v_cache: Tensor, seq_lens: Optional[Tensor],
               block_table: Optional[Tensor], tensors: list[Tensor], scale: Optional[float], config: str,
               num_splits: int, return_lse: bool, check: bool) -> tuple[Tensor, Tensor]:
    """``decode`` as a graph sees it: (out, lse); lse is (0,) unless ``return_lse``. No
    autograd (decoding serves inference). ``num_splits`` 0: chosen from the shapes."""
    attn = kernel_for(kernel)
    out, lse = decode_impl(attn, q, k_cache, v_cache, seq_lens, block_table, attn.bind(tensors), scale,
                           parse_config(config, DecodeConfig), num_splits or None, return_lse, check)
    return out, (lse if lse is not None else q.new_empty((0,), dtype=torch.float32))
