"""GQA/MQA, strided and offset views, odd head dims, cross lengths, fully masked rows, lse."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import DEVICE, DTYPES, FP32_CLOSE, LAYOUTS, ON_GPU, big, check, compare, doc_ids, dtype_id, make_qkv

import attngen as ag

L = big(64, 256)

VARIANTS = {
    "dense": lambda: ag.Variant(),
    "causal": lambda: ag.Variant(mask=ag.causal()),
    "window": lambda: ag.Variant(mask=ag.sliding_window(6, 2)),
    "alibi_doc": lambda: ag.Variant(score=lambda s, b, h, q_idx, kv_idx: s - 0.1 * (h + 1) * abs(q_idx - kv_idx),
                                    mask=ag.document()),
}


def _tensors(name, B, L):
    return {"document_ids": doc_ids(B, L, 3)} if name == "alibi_doc" else {}


# --------------------------------------------------------------------------- heads
@pytest.mark.parametrize("Hq,Hkv", [(4, 2), (4, 1), (6, 3), (3, 1)], ids=["gqa4_2", "mqa4_1", "gqa6_3", "mqa3_1"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_gqa_mqa(name, Hq, Hkv):
    check(ag.Variant() if name == "dense" else VARIANTS[name](), 2, Hq, Hkv, L, L, 32, 32, torch.float32,
          **_tensors(name, 2, L))


def test_gqa_equals_repeated_kv_heads():
    """Independent of the reference: GQA equals MHA with k and v repeated per group."""
    attn = ag.compile(ag.Variant(mask=ag.causal()))
    q, k, v = make_qkv(1, 4, 2, 48, 48, 32, 16, torch.float32)
    gqa = attn(q, k, v)
    mha = attn(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1))
    torch.testing.assert_close(gqa, mha, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_mqa_head_dependent_score(dtype):
    """Each query head sees its own head index even though all share one KV head."""
    variant = ag.Variant(score=lambda s, b, h, q_idx, kv_idx, w: s * w[h])
    w = torch.tensor([0.0, 1.0, 3.0, -2.0], device=DEVICE)
    check(variant, 2, 4, 1, L, L, 32, 32, dtype, w=w)
    # head 0 has a constant score: uniform average of v over all keys
    q, k, v = make_qkv(1, 4, 1, 40, 40, 32, 32, torch.float32)
    out = ag.compile(variant)(q, k, v, w=w)
    torch.testing.assert_close(out[0, 0], v[0, 0].mean(0).expand(40, 32), **FP32_CLOSE)


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("layout", LAYOUTS[1:])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_strided_views(name, layout):
    check(VARIANTS[name](), 2, 4, 2, L, L, 32, 32, torch.float32, layout=layout, **_tensors(name, 2, L))


def test_mixed_layouts_and_fp16_views():
    check(ag.Variant(mask=ag.causal()), 2, 4, 2, L, L, 40, 24, torch.float16, layout=("blhd", "offset", "strided"))


def test_view_results_equal_contiguous_results():
    """The same values through a (B, L, H, D) view and through a contiguous copy agree."""
    attn = ag.compile(ag.Variant(mask=ag.sliding_window(5, 5)))
    q, k, v = make_qkv(2, 4, 2, 50, 50, 32, 32, torch.float32, layout="blhd")
    a = attn(q, k, v)
    b = attn(q.contiguous(), k.contiguous(), v.contiguous())
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_views_are_not_copied():
    """Views go to the kernel as they are: no aten copy/clone/contiguous of q, k or v."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    copies = []

    def caller() -> str:
        """The innermost frame that is neither this test nor torch: who asked for the op."""
        for frame in reversed(traceback.extract_stack()[:-2]):
            path = frame.filename.replace("\\", "/")
            if "/torch/" not in path and not path.endswith("test_shapes_layouts.py"):
                return path
        return ""

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("clone", "copy_", "_to_copy", "contiguous") and any(
                    isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() in ptrs for a in args):
                # The Triton interpreter itself moves every argument to and from the "host";
                # that is the interpreter's business, not a copy attngen makes.
                where = caller()
                if "/triton/" not in where:
                    copies.append((name, where))
            return func(*args, **(kwargs or {}))

    attn = ag.compile(ag.Variant(mask=ag.causal()))
    q, k, v = make_qkv(1, 2, 2, 32, 32, 32, 32, torch.float32, layout="blhd")
    ptrs = {t.untyped_storage().data_ptr() for t in (q, k, v)}
    attn(q, k, v)  # load the module first
    with Spy():
        attn(q, k, v)
    assert copies == [], copies


# --------------------------------------------------------------------------- head dims, lengths
@pytest.mark.parametrize("D,Dv", [(16, 16), (24, 40), (40, 24), (72, 16), (17, 33), (64, 128), (256, 16)])
def test_head_dims(D, Dv):
    check(ag.Variant(mask=ag.causal()), 1, 2, 1, 40, 40, D, Dv, torch.float32)


# fp16/bf16 with both head dims padded (D=40/56/72 with Dv=24) were wrong on the H100 with
# Triton 3.6 for BLOCK_N >= 64; the launch heuristic picks BLOCK_N=32 there (runtime/config.py).
@pytest.mark.parametrize("D,Dv,dtype", [
    pytest.param(D, Dv, dtype, id=f"{D}-{Dv}-{dtype_id(dtype)}")
    for D, Dv in [(40, 24), (56, 24), (72, 24), (24, 72)] for dtype in DTYPES])
def test_odd_head_dims_low_precision(D, Dv, dtype):
    check(ag.Variant(mask=ag.sliding_window(8, 8)), 1, 2, 2, 33, 33, D, Dv, dtype)


@pytest.mark.parametrize("Lq,Lkv", [(33, 97), (97, 33), (130, 17), (1, 1), (1, 130), (65, 64), (16, 16)])
@pytest.mark.parametrize("name", ["dense", "causal", "window"])
def test_cross_lengths(name, Lq, Lkv):
    check(VARIANTS[name](), 1, 2, 2, Lq, Lkv, 32, 32, torch.float32)


def test_cross_lengths_mask_mod_tiles():
    def stripes(b, h, q_idx, kv_idx):
        return (q_idx * 7 + kv_idx) % 5 < 3

    check(ag.Variant(mask=stripes), 2, 2, 2, 97, 33, 24, 40, torch.float32)
    check(ag.Variant(mask=stripes), 2, 2, 2, 33, 130, 24, 40, torch.float32)


@pytest.mark.parametrize("scale", [None, 0.5, 1, 2.0, -0.3])
def test_scale(scale):
    check(ag.Variant(mask=ag.causal()), 1, 2, 2, 40, 40, 32, 32, torch.float32, scale=scale)


def test_default_scale_is_inverse_sqrt_d():
    attn = ag.compile(ag.Variant())
    q, k, v = make_qkv(1, 2, 2, 20, 20, 64, 64, torch.float32)
    torch.testing.assert_close(attn(q, k, v), attn(q, k, v, scale=1 / 8), rtol=0, atol=0)
    assert not torch.allclose(attn(q, k, v), attn(q, k, v, scale=1.0))


# --------------------------------------------------------------------------- fully masked rows
def _odd_rows_masked(b, h, q_idx, kv_idx):
    return q_idx % 2 == 0


def _drop_rows_over_20(b, h, q_idx, kv_idx):
    return q_idx < 20


def _far_future(b, h, q_idx, kv_idx):
    return kv_idx > q_idx + 1000


def _odd_rows_score(score, b, h, q_idx, kv_idx):
    return torch.where(q_idx % 2 == 0, score, float("-inf"))


EMPTY_ROWS = {
    "far_future": (ag.Variant(mask=_far_future), lambda i, Lq, Lkv: True),
    "window_and_row_drop": (ag.Variant(mask=ag.sliding_window(3) & _drop_rows_over_20),
                            lambda i, Lq, Lkv: i >= 20),
    "odd_rows": (ag.Variant(mask=_odd_rows_masked), lambda i, Lq, Lkv: i % 2 == 1),
    "odd_rows_score": (ag.Variant(score=_odd_rows_score), lambda i, Lq, Lkv: i % 2 == 1),
    "not_causal_last_row": (ag.Variant(mask=~ag.causal()), lambda i, Lq, Lkv: i >= Lkv - 1),
    "bottom_right_lq_gt_lkv": (ag.Variant(mask=ag.causal(bottom_right=True)),
                               lambda i, Lq, Lkv: i < Lq - Lkv),
    "window_past_end": (ag.Variant(mask=ag.sliding_window(0, 5) & ~ag.sliding_window(0, 5)),
                        lambda i, Lq, Lkv: True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", list(EMPTY_ROWS))
def test_fully_masked_rows(name, dtype):
    variant, is_empty = EMPTY_ROWS[name]
    Lq, Lkv = (80, 50) if name == "bottom_right_lq_gt_lkv" else (70, 70)
    out, lse, *_ = check(variant, 2, 2, 2, Lq, Lkv, 32, 24, dtype)
    expected = torch.tensor([is_empty(i, Lq, Lkv) for i in range(Lq)], device=DEVICE)
    assert expected.any()
    assert torch.equal(torch.isneginf(lse), expected.expand_as(lse))
    assert (out[:, :, expected] == 0).all()
    if (~expected).any():
        assert (out[:, :, ~expected].abs().amax(-1) > 0).all()


def test_fully_masked_document_rows_with_padding():
    """A padding 'document' that masks itself away via a mask_mod gives zeros, not NaN."""

    def not_pad(b, h, q_idx, kv_idx, document_ids):
        return document_ids[b, kv_idx] >= 0

    docs = doc_ids(2, 60, 3)
    docs[:, 45:] = -1
    out, lse, *_ = check(ag.Variant(mask=ag.document() & not_pad), 2, 2, 2, 60, 60, 32, 32, torch.float32,
                         document_ids=docs)
    assert torch.isneginf(lse[:, :, 45:]).all() and (out[:, :, 45:] == 0).all()
    assert torch.isfinite(lse[:, :, :45]).all()


# --------------------------------------------------------------------------- lse
def test_lse_values_dense():
    """lse is the natural-log logsumexp of the scaled scores (checked without the reference)."""
    attn = ag.compile(ag.Variant())
    q, k, v = make_qkv(2, 2, 2, 30, 45, 32, 32, torch.float32)
    out, lse = attn(q, k, v, return_lse=True)
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(32)
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1), **FP32_CLOSE)
    # and out is softmax(s) @ v
    torch.testing.assert_close(out.double(), torch.softmax(s, -1) @ v.double(), **FP32_CLOSE)


def test_lse_constant_score():
    """With a constant score every row's lse is exactly log(number of attended keys)."""
    variant = ag.Variant(score=lambda s, b, h, q_idx, kv_idx: 0.0 * s, mask=ag.causal())
    q, k, v = make_qkv(1, 1, 1, 50, 50, 16, 16, torch.float32)
    _, lse = ag.compile(variant)(q, k, v, return_lse=True)
    expected = torch.log(torch.arange(1, 51, dtype=torch.float64, device=DEVICE))
    torch.testing.assert_close(lse[0, 0].double(), expected, **FP32_CLOSE)


def test_return_lse_false_returns_only_out():
    attn = ag.compile(ag.Variant())
    q, k, v = make_qkv(1, 1, 1, 20, 20, 16, 16, torch.float32)
    out = attn(q, k, v)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1, 20, 16)
    out2, lse = attn(q, k, v, return_lse=True)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)


def test_large_scores_are_stable():
    """Scores in the thousands: the running max keeps exp from overflowing."""
    variant = ag.Variant(mask=ag.causal())
    q, k, v = make_qkv(1, 2, 2, 64, 64, 32, 32, torch.float32)
    compare(variant, q * 30, k * 30, v, tol=5e-2 if ON_GPU else None)  # tf32 q.k error grows with |score|


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_batch_and_heads_independent(dtype):
    """Each (b, h) slice computed alone equals its slice of the batched call."""
    attn = ag.compile(ag.Variant(mask=ag.sliding_window(4, 1)))
    q, k, v = make_qkv(3, 4, 2, 33, 33, 24, 24, dtype)
    full = attn(q, k, v)
    one = attn(q[2:3, 3:4], k[2:3, 1:2], v[2:3, 1:2])
    torch.testing.assert_close(full[2:3, 3:4], one, rtol=0, atol=0)
