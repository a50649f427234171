"""Tensors past 2**31 elements, on the GPU (skipped on the CPU except the layout check).

Every kernel family adds each (batch, head) slice's base offset in 64-bit integers and
indexes inside a slice with 32-bit products (attngen/runtime/validate.py, MAX_OFFSET). Here
each tensor has more than 2**31 elements, so the slices at the end of the batch start past
2**31: a 32-bit base offset would wrap around and read or write another slice. Each test
runs the kernel on the whole tensor and compares the last slices (where the wrap would land)
with ``ag.reference`` run on just those slices (the last batch's last heads). ``(B*H) <= 65535``: the grid's second axis.

A layout whose offsets inside one slice pass 2**31 (a (B, L, H, D) buffer with
L*H*D >= 2**31) is refused with a ValueError naming the tensor; the CPU test checks that on
a strided view of an untouched (lazily allocated) buffer.

GPU: ATTNGEN_TEST_DEVICE=cuda python -m pytest -q tests/test_large_tensors.py   (about 40 GB of
GPU memory at the peak, a minute or two on an H100)
"""
from __future__ import annotations

import gc

import pytest
import torch
from helpers import DEVICE, ON_GPU, rel_l2

import attngen as ag

gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs > 2**31-element tensors on a GPU")
BIG = 2 ** 31
DT = torch.bfloat16
TOL = 2e-2  # bf16 relative L2 error, as tests/helpers.py


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    gc.collect()
    if ON_GPU:
        torch.cuda.empty_cache()


def _big(B, H, L, D, blhd=False):
    """A random (B, H, L, D) bf16 tensor of more than 2**31 elements (a (B, L, H, D) buffer
    seen through transpose(1, 2) when ``blhd``)."""
    shape = (B, L, H, D) if blhd else (B, H, L, D)
    x = torch.empty(shape, device=DEVICE, dtype=DT).normal_()
    return x.transpose(1, 2) if blhd else x


def _check_tail(attn, q, k, v, heads=8, grads=False, ref_kw=None, **kw):
    """Run on the whole tensors; compare the last batch's last ``heads`` query heads (and
    their KV heads), whose offsets are past 2**31, with the reference on just those."""
    assert max(q.numel(), k.numel(), v.numel()) > BIG
    group = q.shape[1] // k.shape[1]
    assert heads % group == 0
    if grads:
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = attn(q, k, v, **kw)
    hq, hkv = slice(q.shape[1] - heads, None), slice(k.shape[1] - heads // group, None)
    qs = q.detach()[-1:, hq].clone().requires_grad_(grads)
    ks, vs = (t.detach()[-1:, hkv].clone().requires_grad_(grads) for t in (k, v))
    ref = ag.reference(attn.variant)(qs, ks, vs, **(ref_kw if ref_kw is not None else kw))
    assert rel_l2(out[-1:, hq].detach(), ref) < TOL
    assert torch.isfinite(out.detach()[:, :, :4]).all()
    if grads:
        dout = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), dout)
        want = torch.autograd.grad(ref, (qs, ks, vs), dout[-1:, hq].double())
        for name, a, b, h in zip("qkv", got, want, (hq, hkv, hkv)):
            assert rel_l2(a[-1:, h], b) < 5e-2, f"d{name} of the last slices"


@gpu_only
@pytest.mark.parametrize("mask", [None, ag.causal(), ag.sliding_window(100)], ids=["dense", "causal", "window"])
def test_forward_past_2_31(mask):
    # 16384 (b, h) slices of 1040 x 128: 2.18e9 elements per tensor
    q, k, v = (_big(16, 1024, 1040, 128) for _ in range(3))
    _check_tail(ag.compile(ag.Variant(mask=mask)), q, k, v)


@gpu_only
def test_forward_gqa_blhd_layout_past_2_31():
    """A (B, L, H, D) buffer: stride_b * b passes 2**31 (the (L, D) slices span 8199 * 4096)."""
    q = _big(64, 32, 8200, 128, blhd=True)  # 2.15e9 elements
    k, v = (_big(64, 4, 8200, 128, blhd=True) for _ in range(2))
    _check_tail(ag.compile(ag.Variant(mask=ag.causal())), q, k, v)


@gpu_only
def test_tile_lists_and_score_reads_past_2_31():
    @ag.mask_mod
    def same_doc(b, h, q_idx, kv_idx, doc):
        return doc[b, q_idx] == doc[b, kv_idx]

    def biased(score, b, h, q_idx, kv_idx, slopes):
        return score - slopes[h] * abs(q_idx - kv_idx)

    B, H, L = 16, 1024, 1040
    q, k, v = (_big(B, H, L, 128) for _ in range(3))
    doc = (torch.arange(L, device=DEVICE) // 300).repeat(B, 1)
    slopes = torch.rand(H, device=DEVICE)
    attn = ag.compile(ag.Variant(score=biased, mask=same_doc))
    _check_tail(attn, q, k, v, doc=doc, slopes=slopes, ref_kw=dict(doc=doc[-1:], slopes=slopes[-8:]))


@gpu_only
def test_neighborhood_past_2_31():
    q, k, v = (_big(16, 1024, 32 * 34, 128) for _ in range(3))
    attn = ag.compile(ag.Variant(mask=ag.neighborhood((7, 9))))
    _check_tail(attn, q, k, v, spatial_shape=(32, 34))


@gpu_only
@pytest.mark.parametrize("mask", [None, ag.causal()], ids=["dense", "causal"])
def test_backward_past_2_31(mask):
    q, k, v = (_big(16, 1024, 1040, 128) for _ in range(3))
    _check_tail(ag.compile(ag.Variant(mask=mask)), q, k, v, grads=True)


@gpu_only
def test_linear_attention_forward_and_backward_past_2_31():
    q, k, v = (_big(16, 1024, 1040, 128) for _ in range(3))
    attn = ag.compile(ag.Variant(mask=ag.causal(), norm=ag.linear("elu1", decay=True)))
    decay_log = -torch.rand(1024, device=DEVICE) * 0.1
    _check_tail(attn, q, k, v, grads=True, decay_log=decay_log, ref_kw=dict(decay_log=decay_log[-8:]))


# --------------------------------------------------------------------------- refused layouts
def _lazy(numel: int, dtype=torch.float16) -> torch.Tensor:
    """A buffer the OS does not back until it is written (nothing here writes it)."""
    return torch.empty(numel, dtype=dtype, device=DEVICE)


def test_slice_offsets_past_2_31_are_refused_before_anything_runs():
    """A (1, H, L, D) view of a (1, L, H, D) buffer with L*H*D > 2**31: position * stride
    inside the slice would wrap; the call refuses it, naming the tensor (checked on a strided
    view, so no memory is touched)."""
    L, H, D = 2 ** 16 + 1, 256, 128  # stride over L is H*D = 2**15; (L-1) * 2**15 = 2**31
    buf = _lazy(L * H * D)
    q = buf.as_strided((1, H, L, D), (L * H * D, D, H * D, 1))
    small = torch.randn(1, H, 4, D, device=DEVICE, dtype=torch.float16)
    attn = ag.compile(ag.Variant())
    with pytest.raises(ValueError, match=r"^q: offsets inside one \(batch, head\) slice reach"):
        attn(q, small, small)
    with pytest.raises(ValueError, match=r"^k: offsets inside"):
        attn(small[:, :, :1], q, q)
    table = buf.as_strided((L, 2 ** 15), (2 ** 15, 1))  # a bias table of 2**31 + 2**15 elements

    def biased(score, b, h, q_idx, kv_idx, table):
        return score + table[q_idx, kv_idx]

    with pytest.raises(ValueError, match="^table: its offsets reach"):
        ag.compile(ag.Variant(score=biased))(small, small, small, table=table)
