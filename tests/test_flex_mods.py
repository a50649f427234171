"""FlexAttention's own test score_mods (pytorch test/inductor/test_flex_attention.py),
copied unchanged into flex_mods.py, compiled by attngen and checked against the oracle."""
from __future__ import annotations

import flex_mods
import pytest
import torch
from helpers import DEVICE, DTYPES, big, check, dtype_id

import attngen as ag

B, H, L, D = 2, flex_mods.H, big(70, 256), 32
SCORE_MODS = flex_mods.score_mods(DEVICE)
_soft_cap = flex_mods._soft_cap


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", list(SCORE_MODS))
def test_flex_score_mod(name, dtype):
    fn = SCORE_MODS[name](dtype)
    variant = ag.Variant(score=fn)
    check(variant, B, H, H, L, L, D, D, dtype)


@pytest.mark.parametrize("name", ["identity", "times_two", "rel_bias", "alibi", "head_offset", "soft_cap"])
def test_decorated_and_plain_function_agree(name):
    """``@ag.score_mod`` and passing the plain function to Variant give the same variant."""
    fn = SCORE_MODS[name](torch.float32)
    assert ag.Variant(score=ag.score_mod(fn)) == ag.Variant(score=fn)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # interpreter's tanh via exp
def test_soft_cap_bounds_scores():
    """With a tiny cap every score lies in (-cap, cap): the output is close to the mean of v,
    and far from plain softmax (so the cap really is applied)."""
    cap = 0.05
    variant = ag.Variant(score=_soft_cap(cap))
    out, lse, ref_out, _ = check(variant, 1, 2, 2, 64, 64, 32, 32, torch.float32, scale=10.0)
    plain = check(ag.Variant(), 1, 2, 2, 64, 64, 32, 32, torch.float32, scale=10.0)[0]
    assert lse.min() > torch.log(torch.tensor(64.0)) - cap - 1e-4
    assert lse.max() < torch.log(torch.tensor(64.0)) + cap + 1e-4
    assert (out - plain).abs().max() > 0.1


@pytest.mark.parametrize("name,strategy", [("causal", "band"), ("inverse_causal", "band"),
                                           ("rel_causal", "band"), ("identity", "dense"),
                                           ("alibi", "dense")])
def test_flex_mods_lowering(name, strategy):
    """A FlexAttention causal written as ``where(q >= kv, score, -inf)`` skips masked tiles."""
    attn = ag.compile(ag.Variant(score=SCORE_MODS[name](torch.float32)))
    assert attn.ir.strategy == strategy
