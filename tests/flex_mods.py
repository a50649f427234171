"""FlexAttention's own test score_mods, exactly as written in PyTorch's
test/inductor/test_flex_attention.py (plus soft-capping), for attngen to trace."""
from __future__ import annotations

import torch

H = 4  # the head count _head_offset's captured buffer is made for


# ---- as written in test_flex_attention.py --------------------------------------------
def _identity(score, batch, head, token_q, token_kv):
    return score


def _trig(score, b, h, m, n):
    """Joint graph needed for correctness"""
    return torch.sin(torch.cos(score)) + torch.tan(b)


def _trig2(score, b, h, m, n):
    """Branching joint graph"""
    cos_score = torch.cos(score)
    sin_score = torch.sin(score)
    z = cos_score * sin_score + torch.tan(b)
    return z


def _causal(score, b, h, token_q, token_kv):
    return torch.where(token_q >= token_kv, score, float("-inf"))


def _rel_bias(score, b, h, token_q, token_kv):
    return score + (token_q - token_kv)


def _rel_causal(score, b, h, token_q, token_kv):
    return torch.where(token_q >= token_kv, score + (token_q - token_kv), float("-inf"))


def _generate_alibi_bias(num_heads: int):
    def _alibi_bias(score, b, h, token_q, token_kv):
        scale = torch.exp2(-((h + 1) * 8.0 / num_heads))
        return score + (token_kv - token_q) * scale

    return _alibi_bias


def _inverse_causal(score, b, h, m, n):
    return torch.where(m <= n, score, float("-inf"))


def _times_two(score, b, h, m, n):
    """Joint graph needed for correctness"""
    return score * 2


def _squared(score, b, h, m, n):
    """Joint graph needed for correctness"""
    return score * score


def _head_offset(dtype: torch.dtype, device: str):
    """Captured Buffer"""
    head_offset = torch.rand(H, device=device, dtype=dtype)

    def score_mod(score, b, h, m, n):
        return score * head_offset[h]

    return score_mod


def _soft_cap(cap: float):
    def soft_cap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return soft_cap


def score_mods(device: str) -> dict:
    """name -> factory(dtype) -> score_mod function."""
    return {
        "identity": lambda dtype: _identity,
        "times_two": lambda dtype: _times_two,
        "squared": lambda dtype: _squared,
        "causal": lambda dtype: _causal,
        "inverse_causal": lambda dtype: _inverse_causal,
        "rel_bias": lambda dtype: _rel_bias,
        "rel_causal": lambda dtype: _rel_causal,
        "alibi": lambda dtype: _generate_alibi_bias(H),
        "head_offset": lambda dtype: _head_offset(dtype, device),
        "trig": lambda dtype: _trig,
        "trig2": lambda dtype: _trig2,
        "soft_cap": lambda dtype: _soft_cap(2.0),
    }
