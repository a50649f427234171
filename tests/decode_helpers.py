"""Inputs and the oracle of the decoding tests (test_decode*.py, test_paged.py).

The oracle is SEMANTICS.md's: decoding Lq new tokens of a sequence of n tokens equals the
last Lq rows of the full self-attention over its n tokens (``ag.reference``, float64), and a
paged cache holds the same tokens as a contiguous one. ``Case`` draws the full per-sequence
queries and the cache; ``check_decode`` runs the kernel and compares row by row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from helpers import DEVICE, rel_l2, tolerance

import attngen as ag


@dataclass
class Case:
    """A batch of sequences of lengths ``lens`` (capacity ``L``) with their full queries."""

    q_full: torch.Tensor     # (B, Hq, L, D): every position's query
    k: torch.Tensor          # (B, Hkv, L, D): the contiguous cache
    v: torch.Tensor          # (B, Hkv, L, Dv)
    lens: list[int]
    Lq: int                  # new tokens per sequence

    @property
    def seq_lens(self) -> torch.Tensor:
        return torch.tensor(self.lens, dtype=torch.int32, device=self.k.device)

    @property
    def q(self) -> torch.Tensor:
        """(B, Hq, Lq, D): each sequence's last Lq queries (zeros before a short sequence's start)."""
        B, Hq, _, D = self.q_full.shape
        q = torch.zeros(B, Hq, self.Lq, D, dtype=self.q_full.dtype, device=self.q_full.device)
        for b, n in enumerate(self.lens):
            take = min(n, self.Lq)
            q[b, :, self.Lq - take:] = self.q_full[b, :, n - take:n]
        return q


def make_case(B=2, Hq=4, Hkv=2, L=96, D=32, Dv=None, Lq=1, lens=None, dtype=torch.float32) -> Case:
    def randn(*shape):
        return torch.randn(*shape, device=DEVICE).to(dtype)

    lens = [L] * B if lens is None else list(lens)
    return Case(randn(B, Hq, L, D), randn(B, Hkv, L, D), randn(B, Hkv, L, Dv or D), lens, Lq)


def per_sequence(tensors: dict[str, torch.Tensor], b: int, n: int) -> dict[str, torch.Tensor]:
    """Runtime tensors as the reference of sequence b sees them: (B, L) tensors (document ids)
    cut to row b's first n positions, others whole."""
    out = {}
    for name, t in tensors.items():
        out[name] = t[b:b + 1, :n] if t.dim() == 2 and name.startswith("doc") else t
    return out


def expected(variant, case: Case, **tensors) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, lse) in float64: the last Lq rows of each sequence's full self-attention; a
    sequence of length 0 gives out 0 and lse -inf (or the sink's logit with sinks)."""
    B, Hq, _, _ = case.q_full.shape
    Dv = case.v.shape[-1]
    sigmoid = isinstance(variant.norm, ag.Sigmoid)
    out = torch.zeros(B, Hq, case.Lq, Dv, dtype=torch.float64, device=case.k.device)
    lse = torch.full((B, Hq, case.Lq), float("-inf"), dtype=torch.float64, device=case.k.device)
    for b, n in enumerate(case.lens):
        if n == 0:
            if "sinks" in tensors:
                lse[b] = tensors["sinks"].double()[:, None]
            continue
        args = (case.q_full[b:b + 1, :, :n], case.k[b:b + 1, :, :n], case.v[b:b + 1, :, :n])
        extra = per_sequence(tensors, b, n)
        take = min(n, case.Lq)
        if sigmoid:
            out[b, :, case.Lq - take:] = ag.reference(variant)(*args, **extra)[0, :, n - take:]
        else:
            ref, ref_lse = ag.reference(variant)(*args, return_lse=True, **extra)
            out[b, :, case.Lq - take:] = ref[0, :, n - take:]
            lse[b, :, case.Lq - take:] = ref_lse[0, :, n - take:]
    return out, (None if sigmoid else lse)


def assert_matches(out: torch.Tensor, lse: torch.Tensor | None, ref_out: torch.Tensor,
                   ref_lse: torch.Tensor | None, dtype: torch.dtype) -> None:
    """The kernel's (out, lse) against ``expected``'s: -inf rows exactly, finite ones within
    the dtype's tolerance; no NaN anywhere."""
    tol = tolerance(dtype)
    assert out.dtype == dtype and torch.isfinite(out).all(), "NaN or inf in out"
    if ref_lse is not None:
        assert lse.dtype == torch.float32 and not torch.isnan(lse).any()
        empty = torch.isneginf(ref_lse)
        assert torch.equal(torch.isneginf(lse), empty), "lse is -inf on other rows than the reference's"
        assert (out[empty] == 0).all(), "rows with no attended key must be 0"
        rows = ~empty
        if rows.any():
            bound = tol * (1 + ref_lse[rows].abs())
            assert ((lse[rows].double() - ref_lse[rows]).abs() <= bound).all(), "lse differs"
    err = rel_l2(out, ref_out)
    assert err <= tol, f"out: relative L2 error {err:.3g} > {tol:g}"


def check_decode(variant_or_attn, case: Case, *, paged: int | None = None, num_splits=None, config=None,
                 **tensors):
    """Decode ``case`` (contiguous cache, or pages of ``paged`` tokens; at ``num_splits`` or
    launch ``config`` when given) and compare with the oracle; returns the output."""
    attn = variant_or_attn if isinstance(variant_or_attn, ag.CompiledAttention) else ag.compile(variant_or_attn)
    softmax = not isinstance(attn.variant.norm, ag.Sigmoid)
    if paged is None:
        k_cache, v_cache, table = case.k, case.v, None
    else:
        k_cache, v_cache, table = to_pages(case.k, case.v, case.lens, paged)
    result = attn.decode(case.q, k_cache, v_cache, case.seq_lens, table, return_lse=softmax,
                         num_splits=num_splits, config=config, **tensors)
    out, lse = result if softmax else (result, None)
    assert_matches(out, lse, *expected(attn.variant, case, **tensors), case.q.dtype)
    return out


def to_pages(k: torch.Tensor, v: torch.Tensor, lens: list[int], page_size: int, spare: int = 3):
    """The contiguous cache k, v (B, Hkv, L, D) as shuffled pages (num_pages, page_size, Hkv, D)
    and a block table (B, ceil(L / page_size)) whose entries past each sequence's pages are
    -1 (never read), with ``spare`` pages no sequence uses."""
    B, Hkv, L, D = k.shape
    per_seq = -(-L // page_size)
    used = [-(-n // page_size) for n in lens]
    num_pages = sum(used) + spare
    order = torch.randperm(num_pages).tolist()
    k_pages = torch.randn(num_pages, page_size, Hkv, D, device=k.device).to(k.dtype)
    v_pages = torch.randn(num_pages, page_size, Hkv, v.shape[-1], device=k.device).to(k.dtype)
    table = torch.full((B, per_seq), -1, dtype=torch.int32)
    for b in range(B):
        for i in range(used[b]):
            page = order.pop()
            table[b, i] = page
            n = min(page_size, lens[b] - i * page_size)
            k_pages[page, :n] = k[b, :, i * page_size:i * page_size + n].transpose(0, 1)
            v_pages[page, :n] = v[b, :, i * page_size:i * page_size + n].transpose(0, 1)
    return k_pages, v_pages, table.to(k.device)
