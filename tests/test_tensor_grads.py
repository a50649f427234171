"""Gradients of the tensors a score_mod reads (bias tables, ALiBi slopes, temperatures,
closure-captured parameters), against the float64 reference's autograd.

The kernels add them with fp32 atomics in the dK/dV pass; ``deterministic=True`` computes
them in torch in a fixed order instead. Both paths are checked, and the deterministic one
for bitwise reproducibility.
"""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, DTYPES, FP32_CLOSE, check_grads, doc_ids, dtype_id

import attngen as ag

SMALL = ag.KernelConfig(16, 16, 4, 1)
L = 45


@ag.score_mod
def _alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


@ag.score_mod
def _relative_bias(score, b, h, q_idx, kv_idx, bias):
    return score + bias[h, q_idx - kv_idx + 63]


@ag.score_mod
def _temperature_softcap(score, b, h, q_idx, kv_idx, temp, cap):
    return cap[h] * torch.tanh(score * temp[h] / cap[h])


@ag.score_mod
def _row_and_column_bias(score, b, h, q_idx, kv_idx, qb, kb):
    return score + qb[b, q_idx] - 0.5 * kb[kv_idx] * kb[kv_idx]


@ag.score_mod
def _difference(score, b, h, q_idx, kv_idx, pos):
    return score + pos[q_idx] - pos[kv_idx]  # one tensor read at two positions


@ag.mask_mod
def _same_doc(b, h, q_idx, kv_idx, doc):
    return doc[b, q_idx] == doc[b, kv_idx]


def _rand(*shape, dtype=torch.float32):
    return (torch.rand(*shape, device=DEVICE) + 0.5).to(dtype).requires_grad_()


CASES = {  # name: (variant, tensors(Hq))
    "alibi_causal": (ag.Variant(score=_alibi, mask=ag.causal()), lambda H: {"slopes": _rand(H)}),
    "relative_bias_window": (ag.Variant(score=_relative_bias, mask=ag.sliding_window(20, 5)),
                             lambda H: {"bias": torch.randn(H, 127, device=DEVICE).requires_grad_()}),
    "temperature_softcap": (ag.Variant(score=_temperature_softcap),
                            lambda H: {"temp": _rand(H), "cap": (4 * _rand(H)).detach().requires_grad_()}),
    "row_column_bias": (ag.Variant(score=_row_and_column_bias, mask=ag.causal()),
                        lambda H: {"qb": torch.randn(2, L, device=DEVICE).requires_grad_(),
                                   "kb": torch.randn(L, device=DEVICE).requires_grad_()}),
    "difference": (ag.Variant(score=_difference), lambda H: {"pos": torch.randn(L, device=DEVICE).requires_grad_()}),
    "relative_bias_documents": (ag.Variant(score=_relative_bias, mask=_same_doc),
                                lambda H: {"bias": torch.randn(H, 127, device=DEVICE).requires_grad_(),
                                           "doc": doc_ids(2, L, 3)}),
}


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize("name", list(CASES))
def test_score_tensor_gradients(name, deterministic):
    variant, make = CASES[name]
    check_grads(variant, 2, 4, 2, L, L, 16, 16, torch.float32, config=SMALL, deterministic=deterministic,
                **make(4))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_learnable_tensor_with_low_precision_inputs(dtype):
    variant, make = CASES["relative_bias_window"]
    check_grads(variant, 1, 2, 1, L, L, 32, 32, dtype, config=SMALL, **make(2))


def test_gradient_dtype_follows_the_tensor():
    variant = CASES["alibi_causal"][0]
    slopes = _rand(2, dtype=torch.float16)
    check_grads(variant, 1, 2, 1, L, L, 16, 16, torch.float32, tol=2e-3, slopes=slopes)


def test_neighborhood_with_learnable_bias():
    @ag.score_mod
    def column_bias(score, b, h, q_idx, kv_idx, rpb):
        return score + rpb[h, kv_idx % 9]

    variant = ag.Variant(score=column_bias, mask=ag.neighborhood((3, 5)))
    check_grads(variant, 1, 2, 1, 63, 63, 16, 16, torch.float32, config=SMALL, spatial_shape=(7, 9),
                rpb=torch.randn(2, 9, device=DEVICE).requires_grad_())


def test_closure_captured_parameter_gets_its_gradient():
    temperature = torch.nn.Parameter(torch.tensor([0.7, 1.3], device=DEVICE))

    @ag.score_mod
    def scaled(score, b, h, q_idx, kv_idx):
        return score * temperature[h]

    variant = ag.Variant(score=scaled, mask=ag.causal())
    q, k, v = (torch.randn(1, 2, 30, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    ag.compile(variant)(q, k, v).square().sum().backward()
    got = temperature.grad.clone()
    temperature.grad = None
    ag.reference(variant)(q, k, v).square().sum().backward()
    torch.testing.assert_close(got.double(), temperature.grad.double(), **FP32_CLOSE)


def test_only_the_tensor_requires_grad():
    variant, make = CASES["alibi_causal"]
    slopes = make(2)["slopes"]
    q, k, v = (torch.randn(1, 2, 30, 16, device=DEVICE) for _ in range(3))
    (grad,) = torch.autograd.grad(ag.compile(variant)(q, k, v, slopes=slopes).sum(), slopes)
    (want,) = torch.autograd.grad(ag.reference(variant)(q, k, v, slopes=slopes).sum(), slopes)
    torch.testing.assert_close(grad.double(), want.double(), **FP32_CLOSE)


def test_mask_tensor_gets_no_gradient():
    @ag.mask_mod
    def gate(b, h, q_idx, kv_idx, keep):
        return keep[kv_idx] > 0.0

    keep = torch.randn(30, device=DEVICE, requires_grad=True)
    q, k, v = (torch.randn(1, 2, 30, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    out = ag.compile(ag.Variant(mask=gate))(q, k, v, keep=keep)
    grads = torch.autograd.grad(out.sum(), (q, keep), allow_unused=True)
    assert grads[1] is None and torch.isfinite(grads[0]).all()


def test_deterministic_mode_is_bitwise_reproducible():
    variant, make = CASES["relative_bias_documents"]
    tensors = make(4)
    q, k, v = (torch.randn(2, 4, L, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    attn = ag.compile(variant)

    def bias_grad():
        out = attn(q, k, v, config=SMALL, deterministic=True, **tensors)
        return torch.autograd.grad(out.square().sum(), tensors["bias"])[0]

    first = bias_grad()
    assert torch.equal(first, bias_grad())


def test_use_deterministic_algorithms_selects_the_deterministic_path(monkeypatch):
    variant, make = CASES["alibi_causal"]
    tensors = make(2)
    q, k, v = (torch.randn(1, 2, 30, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    calls = []
    import attngen.runtime.tensor_grads as tg

    real = tg.score_tensor_grads
    monkeypatch.setattr(tg, "score_tensor_grads", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        ag.compile(variant)(q, k, v, **tensors).sum().backward()
    finally:
        torch.use_deterministic_algorithms(was)
    assert calls and torch.isfinite(tensors["slopes"].grad).all()
