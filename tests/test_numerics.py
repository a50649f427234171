"""Numerics at the edges: NaN and inf in the inputs, scores of magnitude 1e4 in half
precision, and queries whose keys are all masked in every kernel family, forward and
backward.

NaN/inf contract (the kernels agree with ``ag.reference`` on which outputs are not finite):
- a non-finite q[b, h, i] makes row i of head h non-finite and nothing else;
- a non-finite k[b, h_kv, j] makes exactly the rows that attend key j non-finite (a masked
  score is replaced, not multiplied, so the NaN never reaches other rows);
- a non-finite v[b, h_kv, j] reaches the rows that attend key j, and also rows that only
  share a tile with it: P @ V multiplies that row's masked weight 0 by NaN. The float64
  reference computes P @ V the same way and agrees; isolating it would cost a select on
  every V tile of every kernel, which the common case would pay for.
- no other batch or head is touched, and nothing crashes.
"""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, DTYPES, ON_GPU, check, check_grads, compare, dtype_id, make_qkv, rel_l2, tolerance

import attngen as ag

NAN, INF = float("nan"), float("inf")


@ag.mask_mod
def _late_rows(b, h, q_idx, kv_idx):
    return (q_idx >= 11) & (kv_idx <= q_idx + 3)


MASKS = {
    "none": None,
    "causal": ag.causal(),
    "window": ag.sliding_window(5, 2),
    "tiles": _late_rows,
}


def _poisoned(tensor_name: str, row: int, value: float, mask):
    q, k, v = make_qkv(2, 2, 1, 40, 40, 16, 16, torch.float32)
    {"q": q, "k": k, "v": v}[tensor_name][1, 0, row, 3] = value
    attn = ag.compile(ag.Variant(mask=mask))
    out = attn(q, k, v)
    ref = ag.reference(attn.variant)(q, k, v)
    return out, ref


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("where", [("q", 7, NAN), ("q", 30, INF), ("k", 20, NAN), ("k", 33, -INF),
                                   ("v", 20, NAN), ("v", 12, INF)], ids=lambda w: f"{w[0]}{w[1]}={w[2]}")
def test_non_finite_inputs_propagate_as_in_the_reference(mask, where):
    out, ref = _poisoned(*where, MASKS[mask])
    bad, ref_bad = ~torch.isfinite(out).all(-1), ~torch.isfinite(ref).all(-1)
    assert torch.equal(bad, ref_bad), (f"non-finite rows: kernel {bad.nonzero().tolist()[:8]}, "
                                       f"reference {ref_bad.nonzero().tolist()[:8]}")
    assert not bad[0].any(), "another batch was touched"
    if where[0] == "q":  # one row of one head at most (none when that row attends nothing)
        assert bad[1, 0].sum() <= 1 and not bad[1, 1].any()
    ok = ~bad
    assert rel_l2(out[ok], ref[ok]) <= tolerance(torch.float32)


def test_non_finite_runtime_tensor_reaches_only_its_entries():
    def biased(score, b, h, q_idx, kv_idx, bias):
        return score + bias[h, q_idx]

    bias = torch.randn(2, 24, device=DEVICE)
    bias[1, 5] = NAN
    bias[0, 9] = -INF  # a whole row at -inf: masked, output 0 in both
    q, k, v = make_qkv(1, 2, 2, 24, 24, 16, 16, torch.float32)
    attn = ag.compile(ag.Variant(score=biased, mask=ag.causal()))
    out, lse = attn(q, k, v, bias=bias, return_lse=True)
    ref, ref_lse = ag.reference(attn.variant)(q, k, v, bias=bias, return_lse=True)
    bad = ~torch.isfinite(out).all(-1)
    assert torch.equal(bad, ~torch.isfinite(ref).all(-1)) and bad.sum() == 1 and bad[0, 1, 5]
    assert (out[0, 0, 9] == 0).all() and torch.isneginf(lse[0, 0, 9]) and torch.isneginf(ref_lse[0, 0, 9])


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=dtype_id)
@pytest.mark.parametrize("mask", ["none", "causal", "tiles"])
def test_scores_of_magnitude_1e4_in_half_precision(dtype, mask):
    """q.k of about 1e4 (and a score_mod adding 2e4): the online softmax subtracts the row
    max before exp2, so nothing overflows, though exp(1e4) does in every dtype."""
    def shifted(score, b, h, q_idx, kv_idx):
        return score + 2e4 * (kv_idx % 2)

    q, k, v = make_qkv(1, 2, 2, 48, 48, 16, 16, dtype)
    q = (q.float() * 60).to(dtype)  # |q| up to ~250, |q.k| * scale ~ 1e4
    k = (k.float() * 40).to(dtype)
    for variant in (ag.Variant(mask=MASKS[mask]), ag.Variant(score=shifted, mask=MASKS[mask])):
        out, lse, _, ref_lse = compare(variant, q, k, v, scale=1.0)
        finite = torch.isfinite(ref_lse)
        assert ref_lse[finite].abs().max() > 5e3, "the test should reach scores of 1e4"


# --------------------------------------------------------------------------- empty rows
@ag.mask_mod
def _first_rows_empty(b, h, q_idx, kv_idx):
    return q_idx >= 6 + h


EMPTY_ROWS = {
    "band": dict(mask=ag.causal(bottom_right=True), Lq=40, Lkv=24),  # rows 0..15 see no key
    "tiles": dict(mask=_first_rows_empty, Lq=40, Lkv=40),
    "tiles_and_band": dict(mask=_first_rows_empty & ag.sliding_window(3), Lq=40, Lkv=40),
    "neighborhood": dict(mask=ag.neighborhood(3) & _first_rows_empty, Lq=36, Lkv=36, spatial_shape=(6, 6)),
}


@pytest.mark.parametrize("norm", ["softmax", "sigmoid", "sinks"])
@pytest.mark.parametrize("case", list(EMPTY_ROWS))
def test_fully_masked_rows_forward_and_backward(case, norm):
    """Output 0 (softmax: lse -inf; with sinks, lse is the sink's logit), and gradients
    without NaN that agree with the reference (zero for the empty rows' queries)."""
    spec = dict(EMPTY_ROWS[case])
    mask, Lq, Lkv = spec.pop("mask"), spec.pop("Lq"), spec.pop("Lkv")
    norms = {"softmax": ag.softmax(), "sigmoid": ag.sigmoid(), "sinks": ag.softmax(sink=True)}
    attn = ag.compile(ag.Variant(mask=mask, norm=norms[norm]))
    tensors = {"sinks": torch.randn(2, device=DEVICE, requires_grad=True)} if norm == "sinks" else {}
    q, k, v = make_qkv(1, 2, 1, Lq, Lkv, 16, 16, torch.float32)
    out = attn(q, k, v, **spec, **tensors)
    ref = ag.reference(attn.variant)(q, k, v, **spec, **tensors)
    empty = (ref == 0).all(-1)
    assert empty.any() and (out[empty] == 0).all() and torch.isfinite(out).all()
    grads = check_grads(attn, 1, 2, 1, Lq, Lkv, 16, 16, torch.float32, **spec, **tensors)
    dq = grads[0]
    assert torch.isfinite(dq).all() and (dq[empty] == 0).all()


@pytest.mark.skipif(not ON_GPU, reason="bfloat16 needs the GPU (the interpreter's bf16 tl.dot is wrong)")
def test_fully_masked_rows_bf16():
    check(ag.Variant(mask=ag.causal(bottom_right=True)), 1, 2, 2, 300, 100, 64, 64, torch.bfloat16)
