"""Linear attention as a recurrence: an explicit state for serving.

For a causal linear variant (SEMANTICS.md ``linear``) every query reads its earlier keys
through a fixed-size state, so serving needs no KV cache:

    S_t = g * S_{t-1} + phi(k_t) v_t^T      (B, Hq, D, Dv)   g = exp(decay_log[h]), 1 without decay
    z_t = g * z_{t-1} + phi(k_t)            (B, Hq, D)       only with normalize=True
    out_t = phi(q_t) S_t  (/ (phi(q_t) . z_t + 1e-6) with normalize=True)

``LinearState`` holds (S, z) after some tokens, in float32, every earlier key decayed to
the last token. ``prefill`` runs the chunked forward kernel over a prompt (optionally
continuing a state) and returns the state after its last token (the kernel's STORE_STATE /
LOAD_STATE flags, templates/linear_attention.py.j2; the ordinary forward compiles them out);
``step`` runs T >= 1 new tokens through the recurrence (templates/linear_step.j2: O(D x Dv)
work and state traffic per token) and updates the state in place. States are per query
head: with decay each head of a GQA group decays its keys at its own rate.

Both are inference paths: no autograd (training uses ``attn(q, k, v)``, whose backward is
the chunked one), and a call whose inputs require grad is refused rather than silently cut
from the graph. Under graphs they are the custom ops of runtime/linear_state_ops.py.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from .fast_launch import launch_wrap


class LinearState(NamedTuple):
    """A linear-attention state after some tokens: ``kv`` (B, Hq, D, Dv) float32 and, for
    variants with ``normalize=True``, ``k_sum`` (B, Hq, D) float32 (else None)."""

    kv: torch.Tensor
    k_sum: torch.Tensor | None = None

    @classmethod
    def zeros(cls, batch: int, heads: int, dim: int, value_dim: int, normalize: bool,
              device: torch.device | str = "cpu") -> "LinearState":
        """The state before any token (what a prefill without ``state`` starts from)."""
        kv = torch.zeros((batch, heads, dim, value_dim), dtype=torch.float32, device=device)
        k_sum = torch.zeros((batch, heads, dim), dtype=torch.float32, device=device) if normalize else None
        return cls(kv, k_sum)


def check_state(state: object, normalize: bool, B: int, HQ: int, D: int, DV: int, device: torch.device) -> LinearState:
    """A state for these sizes: float32, contiguous, on q's device."""
    if not isinstance(state, tuple) or len(state) != 2:
        raise TypeError(f"state must be an ag.LinearState (kv, k_sum), got {type(state).__name__}")
    kv, k_sum = state
    for name, t, shape in (("state.kv", kv, (B, HQ, D, DV)), ("state.k_sum", k_sum, (B, HQ, D))):
        if name == "state.k_sum" and not normalize:
            if t is not None:
                raise ValueError("state.k_sum must be None: this variant has no normalizer (normalize=False)")
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (normalize=True needs the normalizer's state), "
                            f"got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but q is on {device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the kernels index it densely); pass .contiguous()")
    return LinearState(kv, k_sum)


def check_call(attn, q, k, v, tensors: dict, what: str):
    """Sizes and decay_log of a prefill or step call (``attn`` a CompiledLinearAttention)."""
    if not attn.causal:
        raise ValueError(f"{what}: variant '{attn.ir.name}' is not causal; a state carries earlier keys to later "
                         "queries, which a non-causal variant's queries do not read alone (compile it with "
                         "mask=ag.causal())")
    p, decay_log = attn.prepare(q, k, v, None, **tensors)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v) + ((decay_log,) if decay_log is not None
                                                                             else ())):
        raise ValueError(f"{what} is an inference path without autograd; run it under torch.no_grad() (training "
                         "uses attn(q, k, v), whose backward is the chunked one)")
    return p, decay_log


def prefill_impl(attn, q, k, v, decay_log, initial: LinearState | None, config=None):
    """(out (B, Hq, L, Dv), LinearState after the last token) of validated inputs."""
    B, HQ, L, D = q.shape
    DV = v.shape[3]
    module = attn.module(q.device)
    out = torch.empty((B, HQ, L, DV), dtype=q.dtype, device=q.device)
    den = torch.empty((B, HQ, L), dtype=torch.float32, device=q.device) if attn.normalize else None
    final = LinearState.zeros(B, HQ, D, DV, attn.normalize, q.device)
    initial_args = None if initial is None else (initial.kv, initial.k_sum)
    config = config or attn.config_for(q.device, q.dtype, D, DV)
    while True:  # step down while the GPU refuses the config, as the forward does
        try:
            module.launch_forward(q, k, v, out, den, decay_log, config, (final.kv, final.k_sum), initial_args,
                                  wrap=launch_wrap(q.device))
            break
        except triton.runtime.errors.OutOfResources:
            config = config.smaller()
            if config is None:
                raise
    return out, final


def step_block_v(device: torch.device, programs_per_block: int, DV: int) -> int:
    """State columns per step program: whole rows under the interpreter (each program costs
    Python time there); on the GPU 64, or 32 where 64 leaves fewer than two programs per SM
    (a step is bandwidth-bound: it reads and writes the whole state once)."""
    if device.type != "cuda":
        return max(16, triton.next_power_of_2(DV))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return 64 if programs_per_block * triton.cdiv(DV, 64) >= 2 * sms else 32


def step_impl(attn, q, k, v, decay_log, state: LinearState) -> torch.Tensor:
    """out (B, Hq, T, Dv) of validated inputs; ``state`` is advanced by T tokens in place."""
    B, HQ, T, _ = q.shape
    DV = v.shape[3]
    out = torch.empty((B, HQ, T, DV), dtype=q.dtype, device=q.device)
    norm_out = torch.empty_like(state.k_sum) if state.k_sum is not None else None
    attn.module(q.device).launch_step(q, k, v, out, state.kv, state.k_sum, norm_out, decay_log,
                                      step_block_v(q.device, B * HQ, DV), wrap=launch_wrap(q.device))
    if norm_out is not None:
        state.k_sum.copy_(norm_out)
    return out


__all__ = ["LinearState", "check_call", "check_state", "prefill_impl", "step_block_v", "step_impl"]
