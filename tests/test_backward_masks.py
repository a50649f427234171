"""Gradients through run-time tile lists (document masks, arbitrary mask_mods) and
neighborhood boxes, against the float64 reference's autograd.

Small tiles (16 x 16) make many programs, so the transposed tile lists of the dK/dV pass
and the inverse neighborhood windows (the queries whose windows reach a KV box) are walked
across tile borders, ragged ends, dilation groups and strides.
"""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, DTYPES, GRAD_TOLERANCE, check_grads, doc_ids, dtype_id

import attngen as ag
from attngen.runtime.neighborhood import NeighborhoodPlan, plan, resolve_axes

SMALL = ag.KernelConfig(16, 16, 4, 1)


@ag.mask_mod
def _same_doc(b, h, q_idx, kv_idx, doc):
    return doc[b, q_idx] == doc[b, kv_idx]


@ag.mask_mod
def _stripes(b, h, q_idx, kv_idx):
    return ((q_idx + kv_idx + h) % 3 != 0) & (kv_idx < 30 + 5 * h)


@ag.mask_mod
def _late_rows_only(b, h, q_idx, kv_idx):
    return q_idx >= 20  # rows 0..19 attend nothing


@ag.mask_mod
def _per_head_rows_and_keys(b, h, q_idx, kv_idx, rows_on, keys_on):
    # reads of one side each: the dQ program's rows (one head) are read once per program; the
    # dK/dV program walks the query heads of its GQA group, so a head-dependent key read stays
    # in its step
    return (rows_on[h, q_idx] != 0) & (keys_on[h, kv_idx] != 0) & (q_idx >= kv_idx)


@ag.mask_mod
def _document_pairs(b, h, q_idx, kv_idx, doc, pairs):
    # a read nested in a read of both sides: doc[b, kv_idx] alone is the dK/dV program's
    return pairs[doc[b, q_idx], doc[b, kv_idx]] != 0


@ag.score_mod
def _softcap(score, b, h, q_idx, kv_idx):
    return 5.0 * torch.tanh(score / 5.0)


TILE_VARIANTS = {
    "document_causal": ag.Variant(mask=ag.causal() & _same_doc),
    "document_softcap": ag.Variant(mask=_same_doc, score=_softcap),
    "stripes_per_head": ag.Variant(mask=_stripes),
    "per_head_rows_and_keys": ag.Variant(mask=_per_head_rows_and_keys),
    "document_pairs": ag.Variant(mask=_document_pairs),
    "neighborhood_or_first_row": ag.Variant(mask=ag.neighborhood((3, 3)) | ag.sliding_window(0, 3)),
}
NA_CASES = {  # name: (variant, spatial shape)
    "1d_k5": (ag.Variant(mask=ag.neighborhood(5)), (45,)),
    "2d_3x5": (ag.Variant(mask=ag.neighborhood((3, 5))), (7, 9)),
    "2d_dilated_strided": (ag.Variant(mask=ag.neighborhood((3, 4), dilation=(2, 1), stride=(1, 2))), (7, 10)),
    "2d_causal_blocked": (ag.Variant(mask=ag.neighborhood((4, 4), stride=(4, 2), is_causal=(True, False))),
                          (8, 9)),
    "3d_softcap": (ag.Variant(mask=ag.neighborhood((2, 3, 3)), score=_softcap), (3, 5, 6)),
    "2d_and_causal": (ag.Variant(mask=ag.neighborhood((5, 5)) & ag.causal()), (6, 8)),
    "2d_axial": (ag.Variant(mask=ag.neighborhood((1, 8))), (5, 8)),
    # a window wider than the 16-token boxes: dK/dV's inner query boxes (no window test),
    # walked as row ranges (1-D, no dilation) unless dilated or on a (L, 1) grid
    "1d_k41": (ag.Variant(mask=ag.neighborhood(41)), (100,)),
    "1d_causal_strided": (ag.Variant(mask=ag.neighborhood(21, stride=3, is_causal=True)), (70,)),
    "1d_dilated": (ag.Variant(mask=ag.neighborhood(9, dilation=3)), (61,)),
    "1d_as_column": (ag.Variant(mask=ag.neighborhood((23, 1))), (57, 1)),
}
WIDE_2D_CASES = {  # windows wider than the 4x4 boxes, so inner query boxes exist
    "2d_k9": (ag.Variant(mask=ag.neighborhood((9, 9))), (12, 13)),
    "2d_k9_and_causal": (ag.Variant(mask=ag.neighborhood((9, 9)) & ag.causal()), (12, 13)),
}


def _tensors(name, B, L, H=4):
    g = torch.Generator().manual_seed(L)
    if name == "per_head_rows_and_keys":
        return {n: (torch.rand(H, L, generator=g) < 0.8).to(DEVICE, torch.int32) for n in ("rows_on", "keys_on")}
    if name == "document_pairs":
        return {"doc": doc_ids(B, L, 3), "pairs": (torch.rand(3, 3, generator=g) < 0.6).to(DEVICE, torch.int32)}
    return {"doc": doc_ids(B, L, 3)} if name.startswith("document") else {}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", list(TILE_VARIANTS))
def test_tile_list_gradients(name, dtype):
    spatial = {"spatial_shape": (7, 9)} if "neighborhood" in name else {}
    check_grads(TILE_VARIANTS[name], 2, 4, 2, 63, 63, 32, 24, dtype, config=SMALL, **spatial,
                **_tensors(name, 2, 63))


@pytest.mark.parametrize("name", ["document_causal", "neighborhood_or_first_row"])
def test_tile_list_gradients_eight_warps(name):
    """8-warp kernels run masked dK/dV steps in the former issue order (test_backward.py)."""
    spatial = {"spatial_shape": (7, 9)} if "neighborhood" in name else {}
    check_grads(TILE_VARIANTS[name], 1, 2, 1, 63, 63, 32, 24, torch.float32, config=ag.KernelConfig(16, 16, 8, 1),
                **spatial, **_tensors(name, 1, 63))


@pytest.mark.parametrize("name", ["document_causal", "stripes_per_head"])
def test_tile_list_gradients_default_tiles(name):
    check_grads(TILE_VARIANTS[name], 1, 2, 1, 70, 70, 16, 16, torch.float32, **_tensors(name, 1, 70))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name", list(NA_CASES))
def test_neighborhood_gradients(name, dtype):
    variant, shape = NA_CASES[name]
    L = int(torch.tensor(shape).prod())
    check_grads(variant, 1, 4, 2, L, L, 32, 16, dtype, config=SMALL, spatial_shape=shape)


@pytest.mark.parametrize("name", ["1d_k41", "2d_3x5"])
def test_neighborhood_gradients_eight_warps(name):
    """8-warp kernels run masked dK/dV steps in the former issue order (test_backward.py)."""
    variant, shape = NA_CASES[name]
    L = int(torch.tensor(shape).prod())
    check_grads(variant, 1, 2, 1, L, L, 32, 16, torch.float32, config=ag.KernelConfig(16, 16, 8, 1),
                spatial_shape=shape)


def test_row_range_walk_is_taken_on_1d_grids_without_dilation():
    """The cases above cover both dK/dV walks of 1-D grids: row ranges and boxes."""
    def ranges(name):
        variant, shape = NA_CASES[name]
        axes = resolve_axes(variant.mask, shape, int(torch.tensor(shape).prod()))
        return plan(axes, SMALL.block_m, SMALL.block_n).query_rows_are_ranges

    plain = [n for n in NA_CASES if isinstance(NA_CASES[n][0].mask, ag.Neighborhood)]
    assert [n for n in plain if ranges(n)] == ["1d_k5", "1d_k41", "1d_causal_strided"]


@pytest.mark.parametrize("name", list(WIDE_2D_CASES))
def test_neighborhood_gradients_with_inner_boxes_forced(name, monkeypatch):
    """dK/dV's inner query boxes (walked without the window test; the launcher takes them on
    1-D grids, where they pay) are exact on 2-D grids too."""
    monkeypatch.setattr(NeighborhoodPlan, "inner_query_boxes", property(lambda self: True))
    variant, shape = WIDE_2D_CASES[name]
    L = int(torch.tensor(shape).prod())
    check_grads(variant, 1, 2, 1, L, L, 32, 16, torch.float32, config=SMALL, spatial_shape=shape)


@pytest.mark.parametrize("name", ["2d_3x5", "3d_softcap", "2d_and_causal"])
def test_neighborhood_gradients_with_full_boxes_first_forced(name, monkeypatch):
    """dQ's split walk (full KV boxes without the window test, then the shell; the launcher
    takes it on 1-D grids and block-sparse plans) is exact on 2-D/3-D windows too."""
    monkeypatch.setattr(NeighborhoodPlan, "full_boxes_first", property(lambda self: True))
    variant, shape = NA_CASES[name]
    L = int(torch.tensor(shape).prod())
    check_grads(variant, 1, 2, 1, L, L, 32, 16, torch.float32, config=SMALL, spatial_shape=shape)


@pytest.mark.parametrize("name", ["2d_3x5", "2d_dilated_strided"])
def test_neighborhood_gradients_default_tiles(name):
    variant, shape = NA_CASES[name]
    L = int(torch.tensor(shape).prod())
    check_grads(variant, 2, 2, 1, L, L, 16, 16, torch.float32, spatial_shape=shape)


def test_neighborhood_gradients_through_natten_layout():
    """ag.na2d (NATTEN's (B, X, Y, H, D) layout, views into it) is differentiable."""
    q, k, v = (torch.randn(1, 6, 7, 2, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    out = ag.na2d(q, k, v, kernel_size=3)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    variant = ag.Variant(mask=ag.neighborhood(3))

    def as_bhld(x):
        return x.flatten(1, 2).transpose(1, 2)

    ref = ag.reference(variant)(as_bhld(q), as_bhld(k), as_bhld(v), spatial_shape=(6, 7))
    want = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(grads, want):
        assert (a.double() - b).norm() / b.norm() < GRAD_TOLERANCE[torch.float32]


def test_fully_masked_rows_have_zero_gradients_in_tile_lists():
    variant = ag.Variant(mask=_late_rows_only & ag.causal())
    q = torch.randn(1, 2, 40, 16, device=DEVICE, requires_grad=True)
    k = torch.randn(1, 2, 40, 16, device=DEVICE, requires_grad=True)
    v = torch.randn(1, 2, 40, 16, device=DEVICE, requires_grad=True)
    out = ag.compile(variant)(q, k, v, config=SMALL)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :, :20] == 0).all()
    check_grads(variant, 1, 2, 2, 40, 40, 16, 16, torch.float32, config=SMALL)


def test_document_gradients_follow_in_place_id_changes():
    """The transposed lists come from the same cached classification, which an in-place
    update of document ids invalidates."""
    attn = ag.compile(TILE_VARIANTS["document_causal"])
    doc = doc_ids(1, 50, 3)
    check_grads(attn, 1, 2, 1, 50, 50, 16, 16, torch.float32, config=SMALL, doc=doc)
    doc.copy_(doc_ids(1, 50, 5))
    check_grads(attn, 1, 2, 1, 50, 50, 16, 16, torch.float32, config=SMALL, doc=doc)
