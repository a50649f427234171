"""Writing new tokens' keys and values into a paged KV cache.

The layout is vLLM's and FlashInfer's: ``k_cache``, ``v_cache`` (num_pages, page_size, Hkv,
D); row b of ``block_table`` (B, max_pages) int32 lists the pages of sequence b in order, so
its position t lives in page ``block_table[b, t // page_size]`` at slot ``t % page_size``;
``seq_lens`` (B,) int32 counts each sequence's tokens. ``paged_append`` is a scatter in torch
(one gather of page numbers, one index_put per cache): no host read, so CUDA graphs capture
it and torch.compile traces it through the ``attngen::paged_append`` op.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .validate import in_graph
from .decode_checks import CacheProblem, cache_sizes, check_cache_call, check_cache_contents, device_reads_allowed
from .ops import _define
from .validate import _tensor


def _append(k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor, k_new: Tensor,
            v_new: Tensor) -> Tensor:
    """Scatter k_new, v_new (B, Hkv, L_new, D) to positions seq_lens[b] + t; the new lengths."""
    page_size = k_cache.shape[1]
    positions = seq_lens.to(torch.int64)[:, None] + torch.arange(k_new.shape[2], device=seq_lens.device)
    pages = block_table.to(torch.int64).gather(1, positions // page_size)  # (B, L_new)
    slots = positions % page_size
    # k_cache[pages, slots] is (B, L_new, Hkv, D): the new tokens in (batch, position) order
    k_cache.index_put_((pages, slots), k_new.transpose(1, 2))
    v_cache.index_put_((pages, slots), v_new.transpose(1, 2))
    return seq_lens + k_new.shape[2]


def _check_new(p: CacheProblem, k_new: object, v_new: object) -> None:
    for name, t, dv in (("k_new", k_new, p.D), ("v_new", v_new, p.DV)):
        t = _tensor(t, name)
        if t.dim() != 4 or tuple(t.shape[:2]) != (p.B, p.HKV) or t.shape[3] != dv:
            raise ValueError(f"{name} must have shape (B, Hkv, L_new, {'Dv' if name == 'v_new' else 'D'}) = "
                             f"({p.B}, {p.HKV}, L_new, {dv}), got {tuple(t.shape)}")
        if t.dtype != p.dtype or t.device != p.device:
            raise TypeError(f"{name} must be {p.dtype} on {p.device} like the cache, got {t.dtype} on {t.device}")
    if k_new.shape[2] != v_new.shape[2]:
        raise ValueError(f"k_new has {k_new.shape[2]} new tokens but v_new has {v_new.shape[2]}")


def paged_append(k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor, k_new: Tensor,
                 v_new: Tensor, *, check: bool = True) -> Tensor:
    """Write the keys and values of L_new new tokens per sequence, ``k_new``, ``v_new`` (B,
    Hkv, L_new, D) with any strides, into a paged cache (in place) at positions
    ``seq_lens[b] .. seq_lens[b] + L_new - 1`` of each sequence; returns the new lengths
    ``seq_lens + L_new`` (a new int32 tensor; ``seq_lens`` is not modified).

    The pages those positions fall in must already be in ``block_table``. ``check=True``
    reads ``seq_lens`` and ``block_table`` back (one host sync) to refuse positions past the
    table's pages and entries outside the cache; skipped while a CUDA graph is captured, and
    with ``check=False``."""
    if not isinstance(check, bool):
        raise TypeError(f"check must be a bool, got {check!r}")
    if block_table is None:
        raise TypeError("paged_append: block_table is required (B, max_pages) int32")
    # the cache's checks, with k_new in the place of q (they share B, the layout and D)
    p = check_cache_call(k_new, k_cache, v_cache, seq_lens, block_table, q_name="k_new")
    _check_new(p, k_new, v_new)
    if in_graph(k_cache, v_cache, k_new):
        return torch.ops.attngen.paged_append(k_cache, v_cache, block_table, seq_lens, k_new, v_new, check)
    if check and device_reads_allowed(p.device):
        check_cache_contents(p, seq_lens, block_table, new_tokens=k_new.shape[2])
    return _append(k_cache, v_cache, block_table, seq_lens, k_new, v_new)


def _paged_append_fake(k_cache, v_cache, block_table, seq_lens, k_new, v_new, check):
    return torch.empty_like(seq_lens)


@_define("paged_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor block_table, Tensor seq_lens, Tensor k_new, "
         "Tensor v_new, bool check) -> Tensor", _paged_append_fake)
def _paged_append_op(k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor, k_new: Tensor,
                     v_new: Tensor, check: bool) -> Tensor:
    """``paged_append`` as a graph sees it: mutates the caches, returns the new lengths."""
    if check and device_reads_allowed(k_cache.device):
        p = cache_sizes(k_new, k_cache, v_cache, block_table)
        check_cache_contents(p, seq_lens, block_table, new_tokens=k_new.shape[2])
    return _append(k_cache, v_cache, block_table, seq_lens, k_new, v_new)
