"""The forward kernel whose query tile is two interleaved halves (KernelConfig.halves): every
dense and band variant against the float64 reference, at tile sizes where the halves' own
edge ranges differ from the whole tile's (ragged lengths, narrow and two-sided windows,
bottom-right causal with rows that see no key), plus its configuration rules."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import DEVICE, ON_GPU, check, dtype_id, rel_l2, tolerance

import attngen as ag
from attngen.autotune.records import config_from_dict, config_to_dict

# Under the interpreter: halves of 16 and 32 rows against 16- and 32-wide KV tiles. On the
# GPU: the H100 choice (halves of 128 rows) and two smaller ones.
if ON_GPU:
    CONFIGS = [ag.KernelConfig(256, 64, 8, 3, halves=True), ag.KernelConfig(128, 64, 8, 3, halves=True),
               ag.KernelConfig(64, 32, 4, 2, halves=True)]
else:
    CONFIGS = [ag.KernelConfig(32, 16, 4, 1, halves=True), ag.KernelConfig(64, 32, 4, 1, halves=True)]


@ag.score_mod
def _alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


@ag.score_mod
def _row_bias(score, b, h, q_idx, kv_idx, table):
    return score + table[q_idx % 7]


@ag.score_mod
def _softcap(score, b, h, q_idx, kv_idx):
    return 8.0 * torch.tanh(score / 8.0)


# name: (variant, self-attention only)
VARIANTS = {
    "dense": (ag.Variant(), False),
    "causal": (ag.Variant(mask=ag.causal()), True),
    "causal_bottom_right": (ag.Variant(mask=ag.causal(bottom_right=True)), False),
    "window_two_sided": (ag.Variant(mask=ag.sliding_window(37, 5)), True),
    "window_narrow": (ag.Variant(mask=ag.sliding_window(3)), True),
    "alibi_causal": (ag.Variant(score=_alibi, mask=ag.causal()), True),
    "row_bias_dense": (ag.Variant(score=_row_bias), False),
    "softcap_window": (ag.Variant(score=_softcap, mask=ag.sliding_window(40, 40)), True),
    "sinks_window": (ag.Variant(mask=ag.sliding_window(20), norm=ag.softmax(sink=True)), True),
}


def variant_tensors(name: str, hq: int) -> dict[str, torch.Tensor]:
    out = {}
    if "alibi" in name:
        out["slopes"] = torch.rand(hq, device=DEVICE)
    if "row_bias" in name:
        out["table"] = torch.randn(7, device=DEVICE)
    if "sinks" in name:
        out["sinks"] = torch.randn(hq, device=DEVICE)
    return out


def _lengths(self_attention: bool) -> list[tuple[int, int]]:
    big = 300 if ON_GPU else 100
    return [(big, big)] if self_attention else [(big, big), (130, 77), (64, 96)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.block_m}x{c.block_n}")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_halves_match_reference(name, config):
    variant, self_attention = VARIANTS[name]
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    for lq, lkv in _lengths(self_attention):
        check(variant, 2, 4, 2, lq, lkv, 48 if ON_GPU else 24, 32, dtype, config=config, **variant_tensors(name, 4))


@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.float32] if ON_GPU else []), ids=dtype_id)
def test_halves_other_dtypes_and_empty_rows(dtype):
    # bottom-right causal with Lq > Lkv: the first Lq - Lkv rows see no key (output 0, lse -inf)
    check(VARIANTS["causal_bottom_right"][0], 1, 2, 1, 90, 40, 32, 32, dtype, config=CONFIGS[0])


def test_sigmoid_halves_match_reference():
    variant = ag.Variant(mask=ag.causal(), norm=ag.sigmoid())
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    L = 300 if ON_GPU else 100
    q, k, v = (torch.randn(1, 2, L, 32, device=DEVICE, dtype=dtype) for _ in range(3))
    out = ag.compile(variant)(q, k, v, config=CONFIGS[0])
    assert rel_l2(out, ag.reference(variant)(q, k, v)) <= tolerance(dtype)


# name: (neighborhood, spatial shape); every case has a shell of partial KV boxes at the CPU
# tiles unless it is block-sparse (stride = kernel, a multiple of the boxes)
NEIGHBORHOODS = {
    "na2d_odd": (ag.neighborhood((3, 5)), (7, 9)),
    "na2d_wide": (ag.neighborhood((7, 9)), (12, 14)),
    "na2d_dilated_strided_causal": (ag.neighborhood((3, 4), dilation=(2, 1), stride=(1, 2), is_causal=(True, False)),
                                    (9, 10)),
    "na3d": (ag.neighborhood((2, 3, 3), stride=(1, 2, 1)), (3, 5, 6)),
    "na1d": (ag.neighborhood(17), (100,)),
    "blocked2d": (ag.neighborhood((4, 8), stride=(4, 8)), (8, 16)),
}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.block_m}x{c.block_n}")
@pytest.mark.parametrize("name", list(NEIGHBORHOODS))
def test_neighborhood_halves_match_reference(name, config):
    """The neighborhood's query box as two halves: the full KV boxes paired, the shell per
    half with each half's windows; GQA, and sigmoid weights at the first config."""
    na, shape = NEIGHBORHOODS[name]
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    L = math.prod(shape)
    for norm in (ag.softmax(), ag.sigmoid()) if config == CONFIGS[0] else (ag.softmax(),):
        variant = ag.Variant(mask=na, norm=norm)
        attn = ag.compile(variant)
        assert "_fwd_halves(" in attn.source
        q = torch.randn(2, 4, L, 32, device=DEVICE, dtype=dtype)
        k, v = (torch.randn(2, 2, L, 32, device=DEVICE, dtype=dtype) for _ in range(2))
        out = attn(q, k, v, spatial_shape=shape, config=config)
        assert attn.last_config.halves
        ref = ag.reference(variant)(q, k, v, spatial_shape=shape)
        assert rel_l2(out, ref) <= tolerance(dtype), f"{name} {norm}"


def test_neighborhood_halves_cases_walk_both_loops():
    """With 32-row boxes and 16-key boxes (the interpreter's first config) the cases above
    take the paired loop over full boxes (2-D and 1-D windows, block-sparse) and the per-half
    shell loop (every case but the block-sparse one)."""
    from attngen.runtime.neighborhood import plan, resolve_axes

    walks = {}
    for name, (na, shape) in NEIGHBORHOODS.items():
        p = plan(resolve_axes(na, shape, math.prod(shape)), 32, 16)
        walks[name] = (p.counts()["full_tiles"] > 0, p.has_partial)
    assert walks["na2d_wide"] == walks["na1d"] == (True, True)
    assert walks["blocked2d"] == (True, False)


def test_halves_source_and_configuration_rules():
    attn = ag.compile(ag.Variant(mask=ag.causal()))
    assert "_fwd_halves(" in attn.source and "_kv_tile_halves(" in attn.source
    # tile lists, and boxes with other masks, keep one kind of tile: asking for halves there is
    # an error, not a fallback
    docs = ag.compile(ag.Variant(mask=ag.document()))
    assert "_fwd_halves(" not in docs.source
    assert "_fwd_halves(" not in ag.compile(ag.Variant(mask=ag.neighborhood(3) & ag.causal())).source
    q = torch.randn(1, 1, 64, 16, device=DEVICE)
    with pytest.raises(ValueError, match="halves"):
        docs(q, q, q, document_ids=torch.zeros(1, 64, dtype=torch.long, device=DEVICE), config=CONFIGS[-1])
    with pytest.raises(ValueError, match="halves needs block_m >= 32"):
        ag.KernelConfig(16, 16, 4, 1, halves=True)
    c = ag.KernelConfig(256, 64, 8, 3, halves=True)
    assert config_from_dict(config_to_dict(c)) == c
    assert "halves" not in config_to_dict(ag.KernelConfig(128, 64, 8, 3))  # old records stay as they were
    with pytest.raises(TypeError, match="halves"):
        config_from_dict({**config_to_dict(c), "halves": 1})
    # falling back from an over-large config keeps the halves until the tile itself must shrink
    assert c.smaller() == ag.KernelConfig(256, 64, 8, 2, halves=True)
    assert ag.KernelConfig(256, 16, 8, 1, halves=True).smaller() == ag.KernelConfig(128, 16, 8, 2)


def test_heuristic_and_tuner_offer_halves_where_the_kernel_has_them():
    from unittest import mock

    from attngen.autotune import space
    from attngen.autotune.device import DeviceLimits

    dense, causal, docs = (ag.compile(ag.Variant(mask=m)) for m in (None, ag.causal(), ag.document()))
    sigmoid_causal = ag.compile(ag.Variant(mask=ag.causal(), norm=ag.sigmoid()))
    cuda = torch.device("cuda")
    with mock.patch("torch.cuda.get_device_capability", return_value=(9, 0)):
        halves = ag.KernelConfig(256, 64, 8, 4, halves=True)
        assert dense.config_for(cuda, torch.bfloat16, 128, 128, 8192, 8192) == halves
        assert sigmoid_causal.config_for(cuda, torch.bfloat16, 128, 128, 8192, 8192) == halves
        # measured: halves no gain; one 128x128 tile on 8 warps beats 64x64 (d7f4df4)
        assert causal.config_for(cuda, torch.bfloat16, 128, 128, 8192, 8192) == ag.KernelConfig(
            128, 128, 8, 3, warp_specialize=True)  # since 95a952a
        assert not dense.config_for(cuda, torch.bfloat16, 64, 64, 4096, 4096).halves  # D=64: no gain
        assert not docs.config_for(cuda, torch.bfloat16, 128, 128, 8192, 8192).halves  # no such kernel
    h100 = DeviceLimits("h100", 232448)
    shape = space.SpaceShape(8192, 8192, 128, 128, torch.bfloat16, halves=True)
    kept, _ = space.search_space(shape, h100)
    assert halves in kept
    assert not any(c.halves for c in space.grid(space.SpaceShape(8192, 8192, 128, 128, torch.bfloat16)))
