"""The custom ops through which graphs reach linear-attention states (runtime/linear_state.py).

    attngen::linear_prefill   (out, state.kv, state.k_sum or (0,)) from a prompt and an optional state
    attngen::linear_step      out; advances (kv, k_sum) in place (declared as mutated)

Inference only: neither has autograd (the Python entry points refuse inputs that require grad).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .linear_state import LinearState, prefill_impl, step_impl
from .ops import _define, _empty, decode_config, kernel_for


def _prefill_fake(kernel, q, k, v, decay_log, kv_in, k_sum_in, config):
    B, HQ, L, D = q.shape
    DV = v.shape[3]
    normalize = kernel_for(kernel).normalize
    return (q.new_empty((B, HQ, L, DV)), q.new_empty((B, HQ, D, DV), dtype=torch.float32),
            q.new_empty((B, HQ, D) if normalize else (0,), dtype=torch.float32))


@_define("linear_prefill(str kernel, Tensor q, Tensor k, Tensor v, Tensor? decay_log, Tensor? kv_in, "
         "Tensor? k_sum_in, str config) -> (Tensor, Tensor, Tensor)", _prefill_fake)
def linear_prefill(kernel: str, q: Tensor, k: Tensor, v: Tensor, decay_log: Optional[Tensor], kv_in: Optional[Tensor],
                   k_sum_in: Optional[Tensor], config: str) -> tuple[Tensor, Tensor, Tensor]:
    attn = kernel_for(kernel)
    initial = None if kv_in is None else LinearState(kv_in, k_sum_in)
    out, state = prefill_impl(attn, q, k, v, decay_log, initial, decode_config(config, attn.config_type))
    return out, state.kv, state.k_sum if state.k_sum is not None else _empty(q)


def _step_fake(kernel, q, k, v, decay_log, kv, k_sum):
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))


@_define("linear_step(str kernel, Tensor q, Tensor k, Tensor v, Tensor? decay_log, Tensor(a!) kv, Tensor(b!)? k_sum) "
         "-> Tensor", _step_fake)
def linear_step(kernel: str, q: Tensor, k: Tensor, v: Tensor, decay_log: Optional[Tensor], kv: Tensor,
                k_sum: Optional[Tensor]) -> Tensor:
    return step_impl(kernel_for(kernel), q, k, v, decay_log, LinearState(kv, k_sum))


__all__ = ["linear_prefill", "linear_step"]
