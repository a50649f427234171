"""Check a decoding call's inputs (and a paged append's) before anything is launched.

Two kinds of checks. Shapes, dtypes, devices and strides are read on the host and always
run. What the lengths and block tables hold lives on the device: ``check_cache_contents``
reads it back in one transfer (a host sync, which waits for the work queued before it), runs
when the caller passes ``check=True`` (the default), and is skipped while a CUDA graph is
being captured, where a host read would break the capture (docs/serving.md).

Errors are ``TypeError`` (wrong kind of object, dtype) or ``ValueError`` (shapes, devices,
contents), and name the argument.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .validate import DTYPES, Problem, _tensor, check_head_dims, check_slice_offsets, in_graph, remembered


@dataclass(frozen=True)
class CacheProblem:
    """The sizes of a call on a KV cache. ``page_size`` 0: a contiguous cache (B, Hkv,
    capacity, D); else pages (num_pages, page_size, Hkv, D) and ``capacity`` = max_pages x
    page_size, the most positions one sequence's block table row can address."""

    B: int
    HQ: int
    HKV: int
    Lq: int
    D: int
    DV: int
    capacity: int
    page_size: int
    num_pages: int
    dtype: torch.dtype
    device: torch.device

    @property
    def paged(self) -> bool:
        return self.page_size > 0

    def as_problem(self) -> Problem:
        """The attention sizes a runtime tensor is checked against: queries and keys span the
        cache's positions (``document_ids`` is (B, capacity))."""
        return Problem(self.B, self.HQ, self.HKV, self.capacity, self.capacity, self.D, self.DV, self.dtype,
                       self.device)


def _index_tensor(x: object, name: str, layout: str, batch: int, device: torch.device, q_name: str) -> torch.Tensor:
    """An int32 tensor of ``layout`` ("(B,)" or "(B, max_pages)") whose first dim is ``batch``."""
    ndim = 1 if layout == "(B,)" else 2
    x = _tensor(x, name)
    if x.dtype != torch.int32:
        raise TypeError(f"{name} must be an int32 tensor, got {x.dtype}")
    if x.dim() != ndim or x.shape[0] != batch:
        raise ValueError(f"{name} must have shape {layout} with B = {batch}, got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but {q_name} is on {device}")
    return x


_CHECKED_CALLS: dict[tuple, CacheProblem] = {}  # check_cache_call's memo: layouts that passed


def _layout(x: object) -> tuple | None:
    """What check_cache_call reads of one argument; None for an argument that is not a tensor."""
    if not isinstance(x, torch.Tensor):
        return None
    return x.shape, x.stride(), x.dtype, x.device


def check_cache_call(q: object, k_cache: object, v_cache: object, seq_lens: object, block_table: object,
                     q_name: str = "q") -> CacheProblem:
    """Shapes, dtypes, devices and strides of a call on a KV cache (no device reads).
    ``q``: the new tokens' queries (B, Hq, Lq, D), or the keys ``paged_append`` writes
    (``q_name`` "k_new"). A layout that passed once is not checked again (a decoding step's
    host time is the budget)."""
    layouts = tuple(_layout(x) for x in (q, k_cache, v_cache, seq_lens, block_table))
    not_tensors = any(x is not None and layout is None
                      for x, layout in zip((q, k_cache, v_cache, seq_lens, block_table), layouts))
    # an argument of the wrong type (the full check raises), or a traced call (hashing symbolic
    # sizes would specialize them): no memo
    if not_tensors or in_graph(q, k_cache, v_cache):
        return _check_cache_call(q, k_cache, v_cache, seq_lens, block_table, q_name)
    return remembered(_CHECKED_CALLS, (layouts, q_name),
                      lambda: _check_cache_call(q, k_cache, v_cache, seq_lens, block_table, q_name))


def _check_cache_call(q: object, k_cache: object, v_cache: object, seq_lens: object, block_table: object,
                      q_name: str) -> CacheProblem:
    q, k_cache, v_cache = _tensor(q, q_name), _tensor(k_cache, "k_cache"), _tensor(v_cache, "v_cache")
    paged = block_table is not None
    layout = "(num_pages, page_size, Hkv, {})" if paged else "(B, Hkv, Lmax, {})"
    q_layout = "(B, Hkv, L_new, D)" if q_name == "k_new" else "(B, Hq, Lq, D)"
    for name, t, dims in ((q_name, q, q_layout), ("k_cache", k_cache, layout.format("D")),
                          ("v_cache", v_cache, layout.format("Dv"))):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D {dims}, got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but {q_name} is on {q.device}; put them on one device")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise TypeError(f"{q_name}, k_cache and v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, "
                        f"{v_cache.dtype}")
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"{q_name} is on {q.device}; attngen runs on CUDA, or on the CPU under the Triton "
                         "interpreter")
    B, HQ, Lq, D = q.shape
    if paged:
        num_pages, page_size, HKV = k_cache.shape[:3]
        if tuple(v_cache.shape[:3]) != (num_pages, page_size, HKV):
            raise ValueError(f"v_cache's pages {tuple(v_cache.shape[:3])} differ from k_cache's "
                             f"{(num_pages, page_size, HKV)} (num_pages, page_size, Hkv)")
        block_table = _index_tensor(block_table, "block_table", "(B, max_pages)", B, q.device, q_name)
        if block_table.shape[1] == 0:
            raise ValueError("block_table has no columns: each sequence needs at least one page entry")
        capacity = block_table.shape[1] * page_size
        if seq_lens is None:
            raise TypeError("seq_lens is required with block_table: the (B,) int32 number of tokens of each sequence")
        for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
            check_slice_offsets(t, name, range(1, 4), "one page")
    else:
        num_pages, page_size = 0, 0
        HKV, capacity = k_cache.shape[1], k_cache.shape[2]
        if k_cache.shape[0] != B or v_cache.shape[0] != B:
            raise ValueError(f"batch sizes differ: {q_name} has {B}, k_cache has {k_cache.shape[0]}, "
                             f"v_cache has {v_cache.shape[0]} (a paged cache needs block_table=)")
        if tuple(v_cache.shape[1:3]) != (HKV, capacity):
            raise ValueError(f"v_cache's (Hkv, Lmax) {tuple(v_cache.shape[1:3])} differ from k_cache's {(HKV, capacity)}")
        for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
            check_slice_offsets(t, name, range(2, 4), "one (batch, head) slice")
    if seq_lens is not None:
        _index_tensor(seq_lens, "seq_lens", "(B,)", B, q.device, q_name)
    if q_name == "k_new" and HQ != HKV:
        raise ValueError(f"k_new has {HQ} heads but the cache has {HKV}")
    if HQ % HKV:
        raise ValueError(f"q's head count ({HQ}) must be a multiple of the cache's ({HKV}) for GQA/MQA")
    if k_cache.shape[3] != D:
        raise ValueError(f"k_cache's head dim ({k_cache.shape[3]}) must equal {q_name}'s ({D})")
    DV = v_cache.shape[3]
    check_head_dims(D, DV)
    check_slice_offsets(q, q_name, range(1, 4), "one batch entry")
    return CacheProblem(B, HQ, HKV, Lq, D, DV, capacity, page_size, num_pages, q.dtype, q.device)


def cache_sizes(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                block_table: torch.Tensor | None) -> CacheProblem:
    """The sizes of a call ``check_cache_call`` accepted before, without checking again
    (the custom ops' implementations, whose calls were checked when traced)."""
    B, HQ, Lq, D = q.shape
    if block_table is None:
        HKV, capacity, page_size, num_pages = k_cache.shape[1], k_cache.shape[2], 0, 0
    else:
        num_pages, page_size, HKV = k_cache.shape[:3]
        capacity = block_table.shape[1] * page_size
    return CacheProblem(B, HQ, HKV, Lq, D, v_cache.shape[3], capacity, page_size, num_pages, q.dtype, q.device)


def device_reads_allowed(device: torch.device) -> bool:
    """False while a CUDA graph is being captured on the current stream (a host read would
    end the capture with an error)."""
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def check_cache_contents(p: CacheProblem, seq_lens: torch.Tensor | None, block_table: torch.Tensor | None, *,
                         new_tokens: int = 0, min_nonempty: int = 0, variant: str = "") -> None:
    """What ``seq_lens`` and ``block_table`` hold, in one device-to-host read:

    - 0 <= seq_lens[b] and seq_lens[b] + ``new_tokens`` <= the cache's positions;
    - no sequence with 0 < seq_lens[b] < ``min_nonempty`` (the new tokens must fit in the
      sequence when the variant reads query positions);
    - every block table entry a sequence uses (its first ceil((seq_len + new_tokens) /
      page_size) pages) names a page of the cache."""
    if seq_lens is None:
        return
    lens = seq_lens.to(torch.int64)
    after = lens + new_tokens
    stats = [lens.min(), after.max(), ((lens > 0) & (lens < min_nonempty)).sum()]
    bad_pages = None
    if block_table is not None:
        used = torch.arange(block_table.shape[1], device=lens.device) < (after + p.page_size - 1)[:, None] // p.page_size
        bad_pages = used & ((block_table < 0) | (block_table >= p.num_pages))
        stats.append(bad_pages.sum())
    found = torch.stack(stats).tolist()  # the one host read
    if found[0] < 0:
        b = int(torch.nonzero(lens < 0)[0, 0])
        raise ValueError(f"seq_lens[{b}] is {int(lens[b])}; sequence lengths must be >= 0")
    if found[1] > p.capacity:
        b = int(torch.nonzero(after > p.capacity)[0, 0])
        where = (f"its block_table row ({p.capacity // p.page_size} pages x page_size {p.page_size})" if p.paged
                 else "k_cache (Lmax)")
        grown = f" + {new_tokens} new tokens" if new_tokens else ""
        raise ValueError(f"seq_lens[{b}] is {int(lens[b])}{grown}, beyond the {p.capacity} positions of {where}")
    if found[2]:
        b = int(torch.nonzero((lens > 0) & (lens < min_nonempty))[0, 0])
        raise ValueError(f"seq_lens[{b}] is {int(lens[b])} but q has Lq={min_nonempty} new tokens, the last ones of "
                         f"each sequence: variant '{variant}' reads query positions (mask or score), which would be "
                         f"negative (sequences of length 0 are allowed: their output is 0)")
    if bad_pages is not None and found[3]:
        b, i = (int(x) for x in torch.nonzero(bad_pages)[0])
        raise ValueError(f"block_table[{b}, {i}] is {int(block_table[b, i])}, outside the cache's {p.num_pages} pages "
                         f"(k_cache.shape[0]); sequence {b} uses its first "
                         f"{(int(after[b]) + p.page_size - 1) // p.page_size} entries")
