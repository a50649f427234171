"""attngen.nn: the modules against the same computation built from ag.reference (float64) or
plain torch, their shapes (GQA), state_dict round trips, repr and argument errors.

Tiny shapes (L <= 64, dim <= 64, 2 heads of 32 or 4 of 16) keep the interpreter fast."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

import attngen as ag
import attngen.nn as agnn
from attngen.testing import relative_error
from helpers import DEVICE, tolerance
import neighborhood_oracle


@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


SWA_SINKS = ag.Variant(mask=ag.sliding_window(7), norm=ag.softmax(sink=True), name="nn_swa_sinks")
ALIBI_CAUSAL = ag.Variant(score=alibi, mask=ag.causal(), name="nn_alibi")
DOCUMENTS = ag.Variant(mask=ag.causal() & ag.document(), name="nn_documents")
LINEAR_DECAY = ag.Variant(mask=ag.causal(), norm=ag.linear("elu1", decay=True), name="nn_linear_decay")


def _reference_attention(m: agnn.Attention, x: torch.Tensor, **call_tensors: torch.Tensor) -> torch.Tensor:
    """The module's computation in float64: the same weights, ag.reference as the core."""
    B, L, _ = x.shape
    hq, hkv, hd = m.num_heads, m.num_kv_heads, m.head_dim
    qkv = F.linear(x.double(), m.qkv.weight.double(), m.qkv.bias.double())
    q, k, v = qkv.split((hq * hd, hkv * hd, hkv * hd), dim=-1)
    q, k, v = (t.reshape(B, L, h, hd).transpose(1, 2) for t, h in ((q, hq), (k, hkv), (v, hkv)))
    owned = {name: getattr(m, name) for name in m.owned_tensors}
    out = ag.reference(m.variant)(q, k, v, scale=m.scale, **owned, **call_tensors)
    return F.linear(out.transpose(1, 2).reshape(B, L, hq * hd), m.proj.weight.double(), m.proj.bias.double())


def _document_ids(B: int, L: int) -> torch.Tensor:
    return torch.sort(torch.randint(0, 3, (B, L)), dim=1).values


@pytest.mark.parametrize("variant, heads, kv_heads, call", [
    (None, 2, 2, False),             # dense softmax (the default)
    (ag.Variant(mask=ag.causal(), name="nn_causal"), 4, 1, False),  # MQA
    (SWA_SINKS, 4, 2, False),        # learned sinks, GQA
    (ALIBI_CAUSAL, 2, 1, False),     # fixed slopes (a buffer)
    (DOCUMENTS, 2, 2, True),         # per-call document_ids
    (LINEAR_DECAY, 2, 2, False),     # linear attention, RetNet decays by default
], ids=["dense", "causal_mqa", "swa_sinks_gqa", "alibi", "documents", "linear_decay"])
def test_attention_matches_reference(variant, heads, kv_heads, call, device):
    tensors = {"slopes": torch.exp2(-torch.arange(1.0, heads + 1))} if variant is ALIBI_CAUSAL else None
    m = agnn.Attention(64, heads, kv_heads, variant=variant, tensors=tensors).to(device)
    if variant is SWA_SINKS:
        with torch.no_grad():
            m.sinks.normal_()  # nonzero sinks, so a wrong sink term shows
    x = torch.randn(2, 40, 64, device=device)
    call_tensors = {"document_ids": _document_ids(2, 40).to(device)} if call else {}
    with torch.no_grad():
        out = m(x, **call_tensors)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert relative_error(out, _reference_attention(m, x, **call_tensors)) < tolerance(torch.float32)


def test_attention_gradients_match_reference(device):
    """Training goes through the module: weights and learned sinks get the reference's gradients."""
    m = agnn.Attention(64, 4, 2, variant=SWA_SINKS).to(device)
    with torch.no_grad():
        m.sinks.normal_()
    x = torch.randn(2, 32, 64, device=device)
    w = torch.randn(2, 32, 64, device=device)
    (m(x) * w).sum().backward()
    got = {name: p.grad.clone() for name, p in m.named_parameters()}
    m.zero_grad()
    (_reference_attention(m, x) * w.double()).sum().backward()
    assert set(got) == {"sinks", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    # fp32 inputs: exact on the CPU; the GPU kernels' dots run in tf32 (about 1e-3 relative)
    bound = 1e-4 if torch.device(device).type == "cpu" else 3e-3
    for name, p in m.named_parameters():
        assert relative_error(got[name], p.grad) < bound, name


def test_attention_gqa_shapes_and_views():
    """One projection makes (Hq + 2 Hkv) heads; the kernel gets views of its output."""
    seen = {}

    class Recording(agnn.Attention):
        def attend(self, q, k, v, tensors):
            seen.update(q=q, k=k, v=v)
            return super().attend(q, k, v, tensors)

    m = Recording(64, 4, 1, variant=ag.Variant(mask=ag.causal(), name="nn_causal"), bias=False).to(DEVICE)
    assert m.qkv.weight.shape == ((4 + 2 * 1) * 16, 64) and m.qkv.bias is None and m.proj.bias is None
    with torch.no_grad():
        out = m(torch.randn(3, 16, 64, device=DEVICE))
    assert out.shape == (3, 16, 64)
    assert seen["q"].shape == (3, 4, 16, 16) and seen["k"].shape == seen["v"].shape == (3, 1, 16, 16)
    storage = {t.untyped_storage().data_ptr() for t in seen.values()}
    assert len(storage) == 1, "q, k and v should be views of the qkv projection's output"


def _neighborhood_reference(m: agnn.NeighborhoodAttention, x: torch.Tensor) -> torch.Tensor:
    """Plain torch in float64: softmax attention under the brute-force neighborhood mask."""
    B, *spatial, C = x.shape
    L, H, hd = math.prod(spatial), m.num_heads, m.head_dim
    qkv = F.linear(x.double(), m.qkv.weight.double(), m.qkv.bias.double()).reshape(B, L, 3, H, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    keep = neighborhood_oracle.mask(tuple(spatial), m.kernel_size, m.dilation, m.stride, m.is_causal)
    scores = (q @ k.transpose(-1, -2) * m.scale).masked_fill(~keep, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return F.linear(out.transpose(1, 2).reshape(B, *spatial, C), m.proj.weight.double(), m.proj.bias.double())


@pytest.mark.parametrize("cls, spatial, geometry", [
    (agnn.NeighborhoodAttention1D, (24,), dict(kernel_size=5, dilation=2, is_causal=True)),
    (agnn.NeighborhoodAttention2D, (6, 8), dict(kernel_size=(3, 5), stride=(1, 2), dilation=(2, 1))),
    (agnn.NeighborhoodAttention3D, (3, 4, 4), dict(kernel_size=(2, 3, 3), is_causal=(True, False, False))),
], ids=["1d_dilated_causal", "2d_strided_dilated", "3d_causal_axis"])
def test_neighborhood_matches_masked_softmax(cls, spatial, geometry, device):
    m = cls(64, 2, **geometry, qk_scale=0.2).to(device)
    x = torch.randn(2, *spatial, 64, device=device)
    with torch.no_grad():
        out = m(x)
    assert out.shape == x.shape
    assert relative_error(out.cpu(), _neighborhood_reference(m.cpu(), x.cpu())) < tolerance(torch.float32)


def test_neighborhood_is_na2d_with_projections(device):
    """The module's core is ag.na2d's kernel: same output as qkv -> ag.na2d -> proj."""
    m = agnn.NeighborhoodAttention2D(64, 2, kernel_size=3).to(device)
    x = torch.randn(1, 5, 7, 64, device=device)
    with torch.no_grad():
        q, k, v = m.qkv(x).view(1, 5, 7, 3, 2, 32).unbind(3)
        expected = m.proj(ag.na2d(q, k, v, kernel_size=3).reshape(1, 5, 7, 64))
        torch.testing.assert_close(m(x), expected, rtol=0, atol=0)
    na2d_variant = ag.Variant(mask=ag.neighborhood((3, 3), (1, 1), (1, 1), (False, False)), name="na2d")
    assert m.kernel.path == ag.compile(na2d_variant).path


def _round_trip(make, x: torch.Tensor) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(1)
    saved = make().to(DEVICE)
    with torch.no_grad():
        for p in saved.parameters():
            p.add_(torch.randn_like(p))  # away from any initialization
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    torch.manual_seed(2)
    loaded = make().to(DEVICE)
    buffer.seek(0)
    loaded.load_state_dict(torch.load(buffer))
    x = x.to(DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), saved(x), rtol=0, atol=0)
    return saved.state_dict(), loaded


def test_attention_state_dict_round_trip():
    slopes = torch.tensor([0.5, 0.25])
    state, loaded = _round_trip(lambda: agnn.Attention(64, 2, 1, variant=ALIBI_CAUSAL, tensors={"slopes": slopes}),
                                torch.randn(1, 16, 64))
    assert set(state) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias", "slopes"}
    assert "slopes" in dict(loaded.named_buffers()) and "slopes" not in dict(loaded.named_parameters())

    learned = torch.nn.Parameter(torch.full((4,), -1.0))
    state, loaded = _round_trip(lambda: agnn.Attention(64, 4, 2, variant=SWA_SINKS, tensors={"sinks": learned}),
                                torch.randn(1, 16, 64))
    assert "sinks" in dict(loaded.named_parameters()) and torch.equal(loaded.sinks, state["sinks"])


def test_neighborhood_state_dict_round_trip():
    state, _ = _round_trip(lambda: agnn.NeighborhoodAttention2D(64, 2, kernel_size=3, qkv_bias=False),
                           torch.randn(1, 4, 6, 64))
    assert set(state) == {"qkv.weight", "proj.weight", "proj.bias"}


def test_repr_says_what_it_is():
    text = repr(agnn.Attention(64, 4, 2, variant=SWA_SINKS))
    for part in ("Attention(", "num_heads=4", "num_kv_heads=2", "nn_swa_sinks", "sliding_window(left=7",
                 "softmax(sink=True)", "learned=(sinks)"):
        assert part in text, (part, text)
    assert "per_call=(document_ids)" in repr(agnn.Attention(64, 2, variant=DOCUMENTS))
    text = repr(agnn.NeighborhoodAttention2D(64, 2, kernel_size=(3, 5), dilation=2))
    for part in ("NeighborhoodAttention2D(", "kernel_size=(3, 5)", "dilation=(2, 2)", "is_causal=(False, False)"):
        assert part in text, (part, text)


def _attention(**kw):
    args = dict(dim=64, num_heads=2)
    args.update(kw)
    return lambda: agnn.Attention(**args)


def _na2d(**kw):
    args = dict(dim=64, num_heads=2, kernel_size=3)
    args.update(kw)
    return lambda: agnn.NeighborhoodAttention2D(**args)


@pytest.mark.parametrize("make, error, words", [
    (_attention(dim=60, num_heads=8), ValueError, "dim (60) must be divisible by num_heads (8)"),
    (_attention(num_heads=4, num_kv_heads=3), ValueError, "num_heads (4) must be a multiple of num_kv_heads (3)"),
    (_attention(num_kv_heads=0), ValueError, "num_kv_heads must be >= 1"),
    (_attention(dim=64.0), TypeError, "dim must be an int"),
    (_attention(variant="causal"), TypeError, "variant must be an ag.Variant"),
    (_attention(variant=ag.Variant(mask=ag.neighborhood(3))), ValueError, "NeighborhoodAttention1D/2D/3D"),
    (_attention(variant=LINEAR_DECAY, qk_scale=0.1), ValueError, "qk_scale must be None for linear"),
    (_attention(variant=SWA_SINKS, tensors={"slopes": torch.ones(2)}), ValueError, "tensors names 'slopes'"),
    (_attention(variant=SWA_SINKS, tensors={"sinks": [0.0, 0.0]}), TypeError, "tensors['sinks'] must be a torch"),
    (_attention(variant=SWA_SINKS, tensors={"sinks": torch.zeros(3)}), ValueError, "must have shape (2,)"),
    (_attention(proj_drop=1.5), ValueError, "proj_drop must be a probability"),
    (_na2d(dim=50, num_heads=4), ValueError, "dim (50) must be divisible by num_heads (4)"),
    (_na2d(kernel_size=(3, 3, 3)), ValueError, "kernel_size needs 2 values"),
    (_na2d(kernel_size=3, stride=5), ValueError, "stride (5) must not exceed kernel_size (3)"),
    (_na2d(is_causal=1), TypeError, "is_causal must be a bool"),
], ids=lambda p: p if isinstance(p, str) else None)
def test_constructor_errors_name_the_argument(make, error, words):
    with pytest.raises(error) as info:
        make()
    assert words in str(info.value)


def test_forward_errors_name_the_input():
    m = agnn.Attention(64, 2, variant=SWA_SINKS)
    with pytest.raises(ValueError, match=r"x must be 3-D \(B, L, dim\)"):
        m(torch.randn(16, 64))
    with pytest.raises(ValueError, match="x's last axis must be dim=64 wide"):
        m(torch.randn(1, 16, 32))
    with pytest.raises(TypeError, match="sinks is owned by the module"):
        m(torch.randn(1, 16, 64), sinks=torch.zeros(2))
    with pytest.raises((TypeError, ValueError), match="document_ids"):
        agnn.Attention(64, 2, variant=DOCUMENTS)(torch.randn(1, 16, 64))  # its per-call tensor is missing
    na = agnn.NeighborhoodAttention2D(64, 2, kernel_size=3)
    with pytest.raises(ValueError, match=r"x must be 4-D \(B, X, Y, dim\)"):
        na(torch.randn(1, 16, 64))
    with pytest.raises(ValueError, match="kernel"):
        na(torch.randn(1, 2, 8, 64))  # a 3-wide window does not fit an axis of 2
