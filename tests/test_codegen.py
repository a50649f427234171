"""Generated kernels for random score_mods and masks (hypothesis) against the oracle, printer
corner cases, and regression tests for code-generation bugs this suite found."""
from __future__ import annotations

import warnings

import pytest
import torch
import variant_strategies as vs
from helpers import DEVICE, big, check, compare, doc_ids, examples, make_qkv, tolerance
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import attngen as ag

SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def _tensors_for(v: ag.Variant, B: int, Hq: int, Lq: int, Lkv: int) -> dict:
    g = torch.Generator().manual_seed(Lq * 1000 + Lkv)
    out = {}
    for p in v.runtime_tensors():
        if p.name == "bias":
            out["bias"] = torch.randn(Hq, generator=g).to(DEVICE)
        elif p.name == "flags":
            out["flags"] = torch.randint(-3, 6, (Lkv,), generator=g).to(DEVICE)
        elif p.name == "document_ids":
            out["document_ids"] = doc_ids(B, Lq, 3) if Lq > 3 else torch.zeros(B, Lq, dtype=torch.int64,
                                                                               device=DEVICE)
        else:
            raise AssertionError(p.name)
    return out


@settings(max_examples=examples(30), **SETTINGS)
@given(tree=vs.bounded_float_exprs(), mask=st.one_of(st.none(), vs.masks(max_depth=2, safe_arith=True)),
       neg_inf_cond=st.one_of(st.none(), vs.bool_exprs(vs.safe_int_exprs(reads=False), max_leaves=2)),
       Lq=st.integers(1, 80), Lkv=st.integers(1, 80), Hkv=st.sampled_from([1, 2]))
def test_random_score_mods_match_reference(tree, mask, neg_inf_cond, Lq, Lkv, Hkv):
    score = ("bin", "+", ("var", "score"), tree)
    if neg_inf_cond is not None:  # where(cond, ..., -inf): a mask hidden in the score
        score = ("where", neg_inf_cond, score, ("const", float("-inf")))
    v = vs.variant(score=vs.score_fn(score), mask=mask)
    try:
        attn = ag.compile(v)
    except ag.UnsupportedVariant as exc:  # sympy limitation: test_trace.py::test_where_condition_that_...
        if "endless recursion" in str(exc):
            reject()
        raise
    if any(p.name == "document_ids" for p in v.runtime_tensors()):
        Lkv = Lq
    q, k, val = make_qkv(2, 2, Hkv, Lq, Lkv, 16, 24, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow inside tanh/sigmoid: harmless
        compare(attn, q, k, val, tol=max(1e-4, tolerance(torch.float32)), **_tensors_for(v, 2, 2, Lq, Lkv))


@settings(max_examples=examples(40), **SETTINGS)
@given(mask=vs.masks(max_depth=3, safe_arith=True), Lq=st.integers(1, 150), Lkv=st.integers(1, 150),
       B=st.integers(1, 2))
def test_random_masks_match_reference(mask, Lq, Lkv, B):
    v = ag.Variant(mask=mask)
    if any(p.name == "document_ids" for p in v.runtime_tensors()):
        Lkv = Lq
    q, k, val = make_qkv(B, 2, 1, Lq, Lkv, 16, 16, torch.float32)
    compare(v, q, k, val, **_tensors_for(v, B, 2, Lq, Lkv))


@settings(max_examples=examples(30), **SETTINGS)
@given(left=st.integers(0, 70), right=st.integers(0, 70), bottom_right=st.booleans(),
       combine=st.sampled_from(["window", "and", "or", "not_and"]),
       Lq=st.integers(1, 140), Lkv=st.integers(1, 140))
def test_random_band_geometry(left, right, bottom_right, combine, Lq, Lkv):
    """Causal/window combinations at ragged, unequal lengths: the closed-form tile ranges."""
    w, c = ag.sliding_window(left, right), ag.causal(bottom_right=bottom_right)
    mask = {"window": w, "and": w & c, "or": w | c, "not_and": ~w & c}[combine]
    attn = ag.compile(ag.Variant(mask=mask))
    if combine in ("window", "and"):
        assert attn.ir.strategy == "band"
    check(attn, 1, 2, 2, Lq, Lkv, 16, 16, torch.float32)


# --------------------------------------------------------------------------- printer corner cases
SCORE_FORMS = {
    "neg_score": lambda s, b, h, q_idx, kv_idx: -s,
    "score_minus_rel": lambda s, b, h, q_idx, kv_idx: s - (q_idx - kv_idx) * 0.05,
    "division": lambda s, b, h, q_idx, kv_idx: s / (1 + abs(q_idx - kv_idx)),
    "pow": lambda s, b, h, q_idx, kv_idx: s ** 3 / 4,
    "neg_pow": lambda s, b, h, q_idx, kv_idx: s * (1 + kv_idx) ** -1,
    "sqrt": lambda s, b, h, q_idx, kv_idx: s * torch.sqrt(1.0 + kv_idx),
    "rsqrt": lambda s, b, h, q_idx, kv_idx: s * torch.rsqrt(1.0 + q_idx),
    "log": lambda s, b, h, q_idx, kv_idx: s - torch.log(1.0 + abs(q_idx - kv_idx)),
    "log2": lambda s, b, h, q_idx, kv_idx: s - torch.log2(1.0 + kv_idx),
    "sigmoid": lambda s, b, h, q_idx, kv_idx: 4 * torch.sigmoid(s),
    "min_max": lambda s, b, h, q_idx, kv_idx: torch.minimum(torch.maximum(s, s * 0.5), s * 0.9 + 0.1),
    "clamp": lambda s, b, h, q_idx, kv_idx: torch.clamp(s, min=-0.5, max=0.75),
    "nested_where": lambda s, b, h, q_idx, kv_idx: torch.where(q_idx > kv_idx, torch.where(s > 0, s, 2 * s),
                                                               s + 1),
    "where_on_score": lambda s, b, h, q_idx, kv_idx: torch.where(s > 0.1, s * 2, s * 0.5),
    "bool_arith": lambda s, b, h, q_idx, kv_idx: s + (q_idx >= kv_idx) * 0.5,
    "int_pow": lambda s, b, h, q_idx, kv_idx: s - ((q_idx - kv_idx) ** 2) * 1e-3,
    "tensor_methods": lambda s, b, h, q_idx, kv_idx: s.tanh().abs() + s.sigmoid() + s.clamp(min=0),
    "neg_floordiv_mod": lambda s, b, h, q_idx, kv_idx: torch.where(((kv_idx - q_idx) // 3) % 2 == 0, s, s - 1),
    "floordiv_in_fn": lambda s, b, h, q_idx, kv_idx: s + torch.cos(kv_idx // 5),
}


@pytest.mark.parametrize("name", list(SCORE_FORMS))
def test_score_expression_forms(name):
    check(ag.Variant(score=SCORE_FORMS[name]), 1, 2, 2, 40, 40, 16, 16, torch.float32)


def test_integer_runtime_tensor_in_score():
    def bucket_bias(score, b, h, q_idx, kv_idx, buckets, table):
        return score + table[h, buckets[kv_idx]]

    buckets = torch.randint(0, 5, (50,), device=DEVICE, dtype=torch.int32)
    table = torch.randn(2, 5, device=DEVICE, dtype=torch.float16)
    check(ag.Variant(score=bucket_bias), 1, 2, 2, 50, 50, 16, 16, torch.float32, buckets=buckets, table=table)


# --------------------------------------------------------------------------- regressions
# printer.py printed a Mod/FloorDiv factor without parentheses: 1/ln2 * (kv_idx % 8) became
# '1.4426950408889634 * kv_idx % 8', i.e. (c * kv_idx) % 8.
PRECEDENCE = {
    "kv_floordiv": (lambda score, b, h, q_idx, kv_idx: score + kv_idx // 16, None),
    "kv_mod_scaled": (lambda score, b, h, q_idx, kv_idx: score + (kv_idx % 8) * 0.5, None),
    "minus_mod": (lambda score, b, h, q_idx, kv_idx: score - kv_idx % 3, None),
    "mask_scaled_floordiv": (None, lambda b, h, q_idx, kv_idx: 2 * (q_idx // 16) == kv_idx // 8),
}


@pytest.mark.parametrize("name", list(PRECEDENCE))
def test_floordiv_mod_under_product(name):
    score, mask = PRECEDENCE[name]
    check(ag.Variant(score=score, mask=mask), 1, 2, 2, 40, 40, 16, 16, torch.float32)


# A score constant along the KV axis was a scalar or (BLOCK_M, 1) block in the kernel and broke
# tl.max(s, 1) / tl.dot on unmasked KV tiles.
NO_KV_DEPENDENCE = {
    "constant": lambda score, b, h, q_idx, kv_idx: 0.0 * score,
    "per_query": lambda score, b, h, q_idx, kv_idx: q_idx * 0.1,
    "per_head": lambda score, b, h, q_idx, kv_idx, w: w[h],
    "neg_inf": lambda score, b, h, q_idx, kv_idx: float("-inf"),
}


@pytest.mark.parametrize("name", list(NO_KV_DEPENDENCE))
def test_score_without_kv_dependence(name):
    L = big(100, 300)  # several KV tiles, so that some are full (unmasked)
    tensors = {"w": torch.randn(2, device=DEVICE)} if name == "per_head" else {}
    check(ag.Variant(score=NO_KV_DEPENDENCE[name]), 1, 2, 2, L, L, 16, 16, torch.float32, **tensors)


# CSE temporaries lost their integer type, so tl.sin(cse0) got an int32 argument.
CSE_INT = {
    "sin_cos_floordiv": lambda score, b, h, q_idx, kv_idx: score + torch.sin(kv_idx // 4) + torch.cos(kv_idx // 4),
    "exp_tanh_distance": lambda score, b, h, q_idx, kv_idx: (score + torch.exp(-abs(q_idx - kv_idx))
                                                             + torch.tanh(abs(q_idx - kv_idx))),
}


@pytest.mark.parametrize("name", list(CSE_INT))
def test_shared_integer_subexpression_in_transcendental(name):
    check(ag.Variant(score=CSE_INT[name]), 1, 2, 2, 40, 40, 16, 16, torch.float32)


def _bias_and_kv(score, b, h, q_idx, kv_idx, bias):
    return score + torch.where((bias[h] <= 0.5) & (kv_idx > 3), 1.0, 0.0)


# Under the Triton interpreter a scalar comparison involving a float, combined with & / | with a
# block condition, raised "ufunc 'bitwise_and' not supported".
SCALAR_CONDITIONS = {
    "float_read_and_kv": (ag.Variant(score=_bias_and_kv), {"bias": [0.1, 0.9]}),
    "half_head_or_window": (ag.Variant(mask=ag.mask_mod(lambda b, h, q_idx, kv_idx: 2 * h >= 1)
                                       | ag.sliding_window(2, 1)), {}),
}


@pytest.mark.parametrize("name", list(SCALAR_CONDITIONS))
def test_scalar_condition_combined_with_block_condition(name):
    variant, raw = SCALAR_CONDITIONS[name]
    tensors = {k: torch.tensor(x, device=DEVICE) for k, x in raw.items()}
    check(variant, 1, 2, 2, 40, 40, 16, 16, torch.float32, **tensors)
