"""Argument checks of varlen calls (runtime/varlen.py).

Shapes, dtypes and devices are checked on the host for free. What ``cu_seqlens`` hold
(starting at 0, non-decreasing, ending at the token count, no sequence longer than
``max_seqlen``) lives on the device: ``check_cu_seqlens_values`` computes every condition of
both tensors in a few small elementwise ops and reads them back in ONE host sync (a few
microseconds of device work, but the sync waits for the work queued before it). It runs once
per batch: ``VarlenKernel.check_offsets`` remembers the offsets tensors it passed (by identity
and version, so an in-place update is checked again), so the layers of a model that share one
batch's ``cu_seqlens`` pay one sync, not one per layer.
``check=False`` skips it: required while a CUDA graph is captured (no sync is allowed there),
and the caller's promise otherwise; malformed values then give wrong numbers, never reads
outside the tensors (sequence ids are clamped, runtime/varlen_plan.py).
"""
from __future__ import annotations

import torch


def check_packed(q: object, k: object, v: object) -> None:
    """q (total_q, Hq, D), k (total_k, Hkv, D), v (total_k, Hkv, Dv): the layout only (dtypes,
    heads and head dims are checked with the packed views, runtime/validate.py)."""
    for name, t, dims in (("q", q, "(total_q, Hq, D)"), ("k", k, "(total_k, Hkv, D)"), ("v", v, "(total_k, Hkv, Dv)")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D {dims} (packed varlen layout), got shape {tuple(t.shape)}")
    if v.shape[0] != k.shape[0]:
        raise ValueError(f"v has {v.shape[0]} tokens but k has {k.shape[0]}")


def check_cu_seqlens(cu_q: object, cu_k: object, device: torch.device) -> int:
    """dtype, rank and device of both offsets tensors; returns the batch size B."""
    for name, t in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32 (FlashAttention's varlen convention), got {t.dtype}")
        if t.dim() != 1 or t.shape[0] < 2:
            raise ValueError(f"{name} must have shape (B + 1,) with B >= 1, got {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but q is on {device}")
    if cu_q.shape[0] != cu_k.shape[0]:
        raise ValueError(f"cu_seqlens_q has {cu_q.shape[0]} entries and cu_seqlens_k {cu_k.shape[0]}: both are "
                         "(B + 1,) for the same B sequences")
    return cu_q.shape[0] - 1


def check_max_seqlen(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_document_ids(doc: object, batch: int, max_q: int, max_k: int) -> None:
    """ag.document()'s ids in a varlen call: (B, >= max_seqlen) integers, [sequence, position]."""
    if not isinstance(doc, torch.Tensor):
        raise TypeError(f"document_ids must be a torch.Tensor, got {type(doc).__name__}")
    if doc.dtype.is_floating_point or doc.dtype.is_complex:
        raise TypeError(f"document_ids must be an integer tensor, got {doc.dtype}")
    longest = max(max_q, max_k)
    if doc.dim() != 2 or doc.shape[0] != batch or doc.shape[1] < longest:
        raise ValueError(f"document_ids must have shape (B, L) with B = {batch} sequences and L >= "
                         f"max(max_seqlen_q, max_seqlen_k) = {longest} (indexed [sequence, position]), "
                         f"got {tuple(doc.shape)}")


def check_cu_seqlens_values(cu_q: torch.Tensor, cu_k: torch.Tensor, total_q: int, total_k: int,
                            max_q: int, max_k: int) -> None:
    """The device-side conditions of both tensors, read back in one sync (see the module)."""
    if cu_q.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("varlen attention: checking cu_seqlens reads them on the host, which a CUDA graph "
                           "capture does not allow; pass check=False while capturing")
    flags = []
    for cu, total, longest in ((cu_q, total_q, max_q), (cu_k, total_k, max_k)):
        lengths = cu[1:] - cu[:-1]
        flags += [cu[0] != 0, (lengths < 0).any(), cu[-1] != total, lengths.max() > longest]
    found = torch.stack(flags).tolist()
    for side, (starts, decreasing, ends, longer), total, longest in (
            ("q", found[:4], total_q, max_q), ("k", found[4:], total_k, max_k)):
        name = f"cu_seqlens_{side}"
        if starts:
            raise ValueError(f"{name} must start at 0, got {int(cu_q[0] if side == 'q' else cu_k[0])}")
        if decreasing:
            raise ValueError(f"{name} must be non-decreasing (sequence lengths >= 0)")
        if ends:
            raise ValueError(f"{name} must end at the number of packed tokens of {side} ({total}), got "
                             f"{int(cu_q[-1] if side == 'q' else cu_k[-1])}")
        if longer:
            raise ValueError(f"max_seqlen_{side} ({longest}) is smaller than the longest sequence in {name}")


__all__ = ["check_cu_seqlens", "check_cu_seqlens_values", "check_document_ids", "check_max_seqlen",
           "check_packed"]
