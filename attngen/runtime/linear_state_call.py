"""The entry points of linear-attention states (``attn.prefill``, ``attn.step``): validate,
then launch directly or, under graphs, through the custom ops (runtime/linear_state_ops.py)."""
from __future__ import annotations

import torch

from . import linear_state_ops  # noqa: F401 - defines attngen::linear_prefill and attngen::linear_step
from .compiled import device_guard
from .linear_state import LinearState, check_call, check_state, prefill_impl, step_impl
from .ops import encode_config
from .validate import in_graph


def prefill(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, state: LinearState | None = None,
            config=None, **tensors: torch.Tensor) -> tuple[torch.Tensor, LinearState]:
    """The chunked forward over a prompt q (B, Hq, L, D), k (B, Hkv, L, D), v (B, Hkv, L, Dv),
    continuing ``state`` (None: from no earlier token); returns (out (B, Hq, L, Dv), the state
    after the prompt's last token, a new LinearState). ``config``: a LinearConfig, or None for
    the forward's heuristic."""
    p, decay_log = check_call(attn, q, k, v, tensors, "prefill")
    if state is not None:
        state = check_state(state, attn.normalize, p.B, p.HQ, p.D, p.DV, p.device)
    if config is not None and not isinstance(config, attn.config_type):  # LinearConfig
        raise TypeError(f"config must be an attngen LinearConfig, got {type(config).__name__}")
    if in_graph(q, k, v):
        out, kv, k_sum = torch.ops.attngen.linear_prefill(
            attn.key, q, k, v, decay_log, None if state is None else state.kv,
            None if state is None else state.k_sum, encode_config(config))
        return out, LinearState(kv, k_sum if attn.normalize else None)
    with device_guard(q.device):
        return prefill_impl(attn, q, k, v, decay_log, state, config)


def step(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LinearState,
         **tensors: torch.Tensor) -> tuple[torch.Tensor, LinearState]:
    """T >= 1 new tokens q (B, Hq, T, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv) through the
    recurrence; ``state`` is advanced in place (and returned); out is (B, Hq, T, Dv)."""
    p, decay_log = check_call(attn, q, k, v, tensors, "step")
    state = check_state(state, attn.normalize, p.B, p.HQ, p.D, p.DV, p.device)
    if in_graph(q, k, v):
        out = torch.ops.attngen.linear_step(attn.key, q, k, v, decay_log, state.kv, state.k_sum)
    else:
        with device_guard(q.device):
            out = step_impl(attn, q, k, v, decay_log, state)
    return out, state


__all__ = ["prefill", "step"]
