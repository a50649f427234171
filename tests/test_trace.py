"""Tracing FlexAttention-style functions: what is accepted, and clear TraceErrors for the rest."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import compare, make_qkv

import attngen as ag


def test_trace_error_is_a_type_error():
    assert issubclass(ag.TraceError, TypeError)


def data_dependent_if(score, b, h, q_idx, kv_idx):
    if score > 0:
        return score
    return -score


def index_dependent_if(b, h, q_idx, kv_idx):
    if q_idx >= kv_idx:
        return True
    return False


def python_and(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) and (q_idx - kv_idx < 4)


def uses_erf(score, b, h, q_idx, kv_idx):
    return torch.erf(score)


def uses_softplus(score, b, h, q_idx, kv_idx):
    return torch.nn.functional.softplus(score)


def uses_math_exp(score, b, h, q_idx, kv_idx):
    return math.exp(score)


def int_of_index(score, b, h, q_idx, kv_idx):
    return score + [0.0, 1.0][int(h)]


def list_indexed_by_head(score, b, h, q_idx, kv_idx):
    return score + [0.0, 1.0, 2.0][h]


def nan_constant(score, b, h, q_idx, kv_idx):
    return score + float("nan")


def unindexed_tensor(score, b, h, q_idx, kv_idx, bias):
    return score + bias


def slice_index(score, b, h, q_idx, kv_idx, bias):
    return score + bias[:, h]


@pytest.mark.parametrize("fn,kind,fragments", [
    (data_dependent_if, "score", ["data_dependent_if", "control flow"]),
    (index_dependent_if, "mask", ["index_dependent_if", "control flow"]),
    (python_and, "mask", ["python_and", "control flow"]),
    (uses_erf, "score", ["uses_erf", "erf"]),
    (uses_softplus, "score", ["uses_softplus", "softplus"]),
    (uses_math_exp, "score", ["uses_math_exp", "float()"]),
    (int_of_index, "score", ["int_of_index", "int()"]),
    (list_indexed_by_head, "score", ["list_indexed_by_head"]),
    (nan_constant, "score", ["nan_constant", "NaN"]),
    (unindexed_tensor, "score", ["unindexed_tensor", "bias"]),
    (slice_index, "score", ["slice_index", "bias"]),
], ids=lambda x: x.__name__ if callable(x) else None)
def test_trace_errors_name_function_and_operation(fn, kind, fragments):
    decorate = ag.score_mod if kind == "score" else ag.mask_mod
    with pytest.raises(ag.TraceError) as info:
        decorate(fn)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # passing the plain function to Variant traces it the same way
    with pytest.raises(ag.TraceError, match=fragments[0]):
        ag.Variant(**{kind: fn})


def test_unsupported_op_message_names_the_op_exactly():
    with pytest.raises(ag.TraceError, match=r"score_mod 'uses_erf'.*torch\.erf"):
        ag.score_mod(uses_erf)


def test_captured_tensor_used_as_value():
    table = torch.ones(3)

    def whole_tensor(score, b, h, q_idx, kv_idx):
        return score + table

    with pytest.raises(ag.TraceError, match="whole_tensor"):
        ag.score_mod(whole_tensor)


def test_wrong_kinds_of_functions():
    with pytest.raises(ag.TraceError, match="did you mean @ag.mask_mod"):
        ag.score_mod(lambda score, b, h, q_idx, kv_idx: q_idx >= kv_idx)
    with pytest.raises(ag.TraceError, match="must return a boolean"):
        ag.mask_mod(lambda b, h, q_idx, kv_idx: q_idx - kv_idx)
    with pytest.raises(ag.TraceError, match="parameters"):
        ag.score_mod(lambda score, b: score)
    with pytest.raises(ag.TraceError, match=r"\*args"):
        ag.score_mod(lambda score, *rest: score)
    with pytest.raises(TypeError):
        ag.score_mod(42)
    with pytest.raises(TypeError):
        ag.Variant(mask=42)
    with pytest.raises(TypeError):
        ag.Variant(norm="softmax")


def test_error_inside_user_code_is_reported_as_trace_error():
    def broken(score, b, h, q_idx, kv_idx):
        return score + undefined_name  # noqa: F821

    with pytest.raises(ag.TraceError, match="broken.*NameError"):
        ag.score_mod(broken)


def test_reserved_and_invalid_tensor_names():
    def uses_score_name(score, b, h, q_idx, kv_idx, Lq):
        return score + Lq[h]

    with pytest.raises(ag.TraceError, match="Lq"):
        ag.score_mod(uses_score_name)


def test_conflicting_tensor_declarations():
    def one_d(score, b, h, q_idx, kv_idx, t):
        return score + t[h]

    def two_d(b, h, q_idx, kv_idx, t):
        return t[b, q_idx] > 0

    with pytest.raises(ValueError, match="'t'"):
        ag.Variant(score=one_d, mask=two_d)


def test_supported_operations_trace():
    def everything(score, b, h, q_idx, kv_idx, w):
        x = torch.where(q_idx >= kv_idx, score, score * 0.5)
        x = x + torch.exp(-abs(q_idx - kv_idx) * 0.1) + torch.exp2(-h * 0.5) + torch.log(1 + w[h] * w[h])
        x = x + torch.tanh(score) + torch.sigmoid(score) + torch.sin(score) + torch.cos(score)
        x = x + torch.sqrt(1 + score * score) + torch.abs(score) + torch.minimum(score, x) + torch.maximum(score, x)
        x = x + torch.clamp(score, min=-1, max=1) + (q_idx // 4) % 3 + (-score)
        return x

    sm = ag.score_mod(everything)
    assert {p.name for p in sm.params} == {"w"}
    mm = ag.mask_mod(lambda b, h, q_idx, kv_idx: ((q_idx >= kv_idx) & ~(kv_idx == 3)) | (q_idx < 2))
    assert mm.params == ()


def test_score_mod_decorator_with_name():
    sm = ag.score_mod(name="renamed")(lambda score, b, h, q_idx, kv_idx: score * 2)
    assert sm.name == "renamed"
    assert "score renamed = 2*score" in ag.Variant(score=sm).to_text()


def test_decorated_function_stays_callable_eagerly():
    @ag.mask_mod
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    assert bool(causal(0, 0, 3, 2)) and not bool(causal(0, 0, 2, 3))


def test_closure_capture_is_named_after_the_variable():
    head_scale = torch.rand(4)

    def scaled(score, b, h, q_idx, kv_idx):
        return score * head_scale[h]

    v = ag.Variant(score=scaled)
    assert [(p.name, p.ndim, p.source) for p in v.tensors()] == [("head_scale", 1, "captured")]
    assert v.captured()["head_scale"] is head_scale
    assert v.runtime_tensors() == ()


def test_normalizations_refuse_what_they_cannot_express():
    """Every normalization compiles; linear attention refuses masks and scores its chunked
    algorithm cannot express, at compile time."""
    with pytest.raises(ag.UnsupportedVariant) as info:
        ag.compile(ag.Variant(norm=ag.linear(), mask=ag.sliding_window(4)))
    assert isinstance(info.value, NotImplementedError)


def test_compile_rejects_non_variants():
    with pytest.raises(TypeError):
        ag.compile(ag.causal())


def test_builtin_argument_validation():
    with pytest.raises(TypeError):
        ag.causal(bottom_right=1)
    with pytest.raises(ValueError):
        ag.sliding_window(-1)
    with pytest.raises(ValueError):
        ag.sliding_window(3, -2)
    with pytest.raises(ValueError):
        ag.sliding_window(2.5)
    with pytest.raises(TypeError):
        ag.softmax(sink="yes")
    with pytest.raises(ValueError):
        ag.linear(feature_map="tanh")
    with pytest.raises(ValueError):
        ag.Variant(name="not an identifier")


@pytest.mark.xfail(strict=True, raises=ag.UnsupportedVariant, reason=(
    "KNOWN LIMITATION (sympy): Relational._canonical_coeff recurses forever on "
    "Eq(Mod(q_idx, 7) - 2*h, 2*b + 3*Mod(q_idx, 5)) whenever a Piecewise holding it is rebuilt "
    "(piecewise_fold, diff in the exp2 pass); tracing and parsing survive, compile raises "
    "UnsupportedVariant naming the pass instead of a RecursionError"))
def test_where_condition_that_sympy_cannot_canonicalize():
    def odd_condition(score, b, h, q_idx, kv_idx):
        return torch.where(q_idx % 7 - 2 * h == 2 * b + 3 * (q_idx % 5), score, 0.0)

    v = ag.Variant(score=odd_condition)
    q, k, val = make_qkv(2, 2, 2, 24, 24, 16, 16, torch.float32)
    compare(v, q, k, val)
