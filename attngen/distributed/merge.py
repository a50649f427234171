"""Combining partial attention results over disjoint sets of keys.

A softmax partial over keys S is (o_S, lse_S) with o_S normalized over S. Over S u T:

    lse = logaddexp(lse_S, lse_T)
    o   = exp(lse_S - lse) * o_S + exp(lse_T - lse) * o_T

computed in fp32. A partial that attended nothing has lse -inf and weight 0; when both do,
lse stays -inf and o stays 0 (SEMANTICS.md: a row with no key has output 0, lse -inf) and
no NaN appears (``exp(-inf - -inf)`` is never formed). Sinks join the denominator once,
after every key chunk has been merged (``add_sinks``), which is why the chunks' kernels are
compiled without them. Sigmoid weights are not normalized: its partials add up.
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def merge_lse(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
              lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of two softmax partials: out (..., L, Dv), lse (..., L); fp32 results."""
    lse = torch.logaddexp(lse_a, lse_b)
    reference = torch.where(lse == NEG_INF, 0.0, lse)  # where both are -inf, both weights are exp(-inf) = 0
    w_a = torch.exp(lse_a - reference).unsqueeze(-1)
    w_b = torch.exp(lse_b - reference).unsqueeze(-1)
    return w_a * out_a.float() + w_b * out_b.float(), lse


class SoftmaxAccumulator:
    """Running fp32 merge of a query chunk's partials, one key chunk at a time."""

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.out = torch.zeros(shape, dtype=torch.float32, device=device)
        self.lse = torch.full(shape[:-1], NEG_INF, dtype=torch.float32, device=device)

    def add(self, out: torch.Tensor, lse: torch.Tensor | None) -> None:
        self.out, self.lse = merge_lse(self.out, self.lse, out, lse)


class SumAccumulator:
    """Running fp32 sum of sigmoid partials (no log-sum-exp)."""

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.out = torch.zeros(shape, dtype=torch.float32, device=device)
        self.lse = None

    def add(self, out: torch.Tensor, lse: torch.Tensor | None) -> None:
        self.out += out.float()


def accumulator(softmax: bool, shape: tuple[int, ...], device: torch.device) -> SoftmaxAccumulator | SumAccumulator:
    return SoftmaxAccumulator(shape, device) if softmax else SumAccumulator(shape, device)


def add_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of merged partials (B, H, L, Dv) / (B, H, L) with the sink logits ``sinks``
    (H,) added to every row's denominator, once. Plain torch, so autograd gives the sinks'
    gradient and carries the rest to the partials' (out, lse)."""
    total = torch.logaddexp(lse, sinks.float().view(1, -1, 1).expand_as(lse))
    reference = torch.where(total == NEG_INF, 0.0, total)  # a -inf sink on a row with no key
    return out * torch.exp(lse - reference).unsqueeze(-1).to(out.dtype), total


__all__ = ["SoftmaxAccumulator", "SumAccumulator", "accumulator", "add_sinks", "merge_lse"]
