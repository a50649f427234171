"""KernelConfig.warp_specialize: the dense and band forwards' full-tile loop compiled with
Triton's automatic warp specialization. On the GPU the kernels below are compiled with it
(every kind of dense and band kernel: plain, score_mod, tile reads, sinks, sigmoid, the
two-halves kernel) and checked against the float64 reference; under the interpreter, which
ignores the loop attribute, the same launch path runs. Plus the option's rules: where it is
offered, refused, stored, and dropped when a config does not fit."""
from __future__ import annotations

from unittest import mock

import pytest
import torch
from helpers import DEVICE, ON_GPU, check, rel_l2, tolerance
from test_halves import VARIANTS as HALVES_VARIANTS
from test_halves import variant_tensors

import attngen as ag
from attngen.autotune import space
from attngen.autotune.device import DeviceLimits
from attngen.autotune.records import config_from_dict, config_to_dict
from attngen.autotune.tuner import config_label

# GPU: the shipped causal config, a smaller 8-warp tile and the dense two-halves default.
# Interpreter: tiles it runs quickly (warps mean nothing there; warp_specialize needs 8).
if ON_GPU:
    CONFIGS = [ag.KernelConfig(128, 128, 8, 3, warp_specialize=True),
               ag.KernelConfig(64, 64, 8, 2, warp_specialize=True),
               ag.KernelConfig(256, 64, 8, 4, halves=True, warp_specialize=True)]
else:
    CONFIGS = [ag.KernelConfig(32, 16, 8, 1, warp_specialize=True),
               ag.KernelConfig(64, 32, 8, 1, halves=True, warp_specialize=True)]


# the two-halves tests' dense and band variants (plain, score_mod, tile reads, sinks, bottom-right
# causal, two-sided windows), plus sigmoid weights; name: (variant, self-attention only)
VARIANTS = {name: HALVES_VARIANTS[name] for name in ("dense", "causal", "causal_bottom_right", "window_two_sided",
                                                      "alibi_causal", "row_bias_dense", "sinks_window")}
VARIANTS["sigmoid_causal"] = (ag.Variant(mask=ag.causal(), norm=ag.sigmoid()), True)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: config_label(c).replace(" ", "_"))
@pytest.mark.parametrize("name", list(VARIANTS))
def test_warp_specialized_forward_matches_reference(name, config):
    variant, self_attention = VARIANTS[name]
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    big = 1000 if ON_GPU else 100  # GPU: several full tiles per row at 128-wide tiles
    lengths = [(big, big)] if self_attention else [(big, big), (130, 77)]
    d, dv = (64, 64) if ON_GPU else (24, 32)
    for lq, lkv in lengths:
        if name.startswith("sigmoid"):  # no log-sum-exp: compare the output alone
            q = torch.randn(2, 4, lq, d, device=DEVICE, dtype=dtype)
            k, v = torch.randn(2, 2, lkv, d, device=DEVICE, dtype=dtype), torch.randn(2, 2, lkv, dv, device=DEVICE,
                                                                                    dtype=dtype)
            out = ag.compile(variant)(q, k, v, config=config)
            assert rel_l2(out, ag.reference(variant)(q, k, v)) <= tolerance(dtype)
        else:
            check(variant, 2, 4, 2, lq, lkv, d, dv, dtype, config=config, **variant_tensors(name, 4))


def test_warp_specialized_forward_and_backward():
    """The forward autograd saves runs warp-specialized; the backward's own configs do not take it."""
    from helpers import check_grads

    dtype = torch.bfloat16 if ON_GPU else torch.float32
    L = 600 if ON_GPU else 80
    check_grads(ag.Variant(mask=ag.causal()), 1, 2, 2, L, L, 64 if ON_GPU else 16, 64 if ON_GPU else 16, dtype,
                config=CONFIGS[0])


def test_shipped_causal_default_runs_warp_specialized():
    """Without config=, a causal D=128 bf16 call on an H100 takes the shipped warp-specialized
    row; elsewhere (the interpreter) the heuristic's tiles."""
    attn = ag.compile(ag.Variant(mask=ag.causal()))
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    L = 1024 if ON_GPU else 64
    q, k, v = (torch.randn(1, 2, L, 128, device=DEVICE, dtype=dtype) for _ in range(3))
    out = attn(q, k, v)
    on_h100 = ON_GPU and torch.cuda.get_device_capability()[0] == 9
    assert attn.last_config.warp_specialize == on_h100, attn.last_config
    assert rel_l2(out, ag.reference(attn.variant)(q, k, v)) <= tolerance(dtype)


def test_only_dense_and_band_kernels_have_the_option():
    dense, window = ag.compile(ag.Variant()), ag.compile(ag.Variant(mask=ag.sliding_window(9)))
    assert "warp_specialize=WARP_SPECIALIZE" in dense.source and "warp_specialize=WARP_SPECIALIZE" in window.source
    docs = ag.compile(ag.Variant(mask=ag.document()))
    na = ag.compile(ag.Variant(mask=ag.neighborhood((3, 3))))
    assert "WARP_SPECIALIZE" not in docs.source and "WARP_SPECIALIZE" not in na.source
    q = torch.randn(1, 1, 64, 16, device=DEVICE)
    config = ag.KernelConfig(32, 32, 8, 1, warp_specialize=True)
    # asking for it where the kernel has no such loop is an error, not a silent fallback
    with pytest.raises(ValueError, match="warp_specialize: tiles kernels"):
        docs(q, q, q, document_ids=torch.zeros(1, 64, dtype=torch.long, device=DEVICE), config=config)
    with pytest.raises(ValueError, match="warp_specialize: neighborhood kernels"):
        na(q, q, q, spatial_shape=(8, 8), config=config)


def test_config_rules_records_and_fallback():
    with pytest.raises(ValueError, match="warp_specialize needs num_warps=8.*num_warps=4"):
        ag.KernelConfig(64, 64, 4, 3, warp_specialize=True)
    c = ag.KernelConfig(128, 128, 8, 3, warp_specialize=True)
    assert config_from_dict(config_to_dict(c)) == c
    assert config_to_dict(c)["warp_specialize"] is True
    assert "warp_specialize" not in config_to_dict(ag.KernelConfig(128, 128, 8, 3))  # old records unchanged
    with pytest.raises(TypeError, match="warp_specialize"):
        config_from_dict({**config_to_dict(c), "warp_specialize": "yes"})
    # a config that does not fit first gives up the producer warps, then steps down as before
    assert c.smaller() == ag.KernelConfig(128, 128, 8, 3)
    halves = ag.KernelConfig(256, 64, 8, 4, halves=True, warp_specialize=True)
    assert halves.smaller() == ag.KernelConfig(256, 64, 8, 4, halves=True)
    assert config_label(halves) == "m256 n64 w8 s4 halves ws"


def test_heuristic_takes_it_on_sm90_causal_only():
    causal, window, dense = (ag.compile(ag.Variant(mask=m)) for m in (ag.causal(), ag.sliding_window(255), None))
    cuda = torch.device("cuda")
    with mock.patch("torch.cuda.get_device_capability", return_value=(9, 0)):
        assert causal.config_for(cuda, torch.bfloat16, 128, 128, 8192, 8192).warp_specialize
        assert not causal.config_for(cuda, torch.bfloat16, 64, 64, 4096, 4096).warp_specialize  # 4 warps
        assert not window.config_for(cuda, torch.bfloat16, 128, 128, 8192, 8192).warp_specialize
        assert not dense.config_for(cuda, torch.bfloat16, 128, 128, 8192, 8192).warp_specialize  # even
    for other in ((8, 0), (10, 0)):  # measured on the H100 only
        with mock.patch("torch.cuda.get_device_capability", return_value=other):
            assert not causal.config_for(cuda, torch.bfloat16, 128, 128, 8192, 8192).warp_specialize


def test_tuner_space_offers_it_on_8_warp_candidates():
    h100 = DeviceLimits("h100", 232448)
    shape = space.SpaceShape(8192, 8192, 128, 128, torch.bfloat16, halves=True, warp_specialize=True)
    kept, pruned = space.search_space(shape, h100)
    ws = [c for c in kept if c.warp_specialize]
    assert ws and all(c.num_warps == 8 for c in ws)
    assert ag.KernelConfig(128, 128, 8, 3, warp_specialize=True) in ws
    assert ag.KernelConfig(256, 64, 8, 4, halves=True, warp_specialize=True) in ws
    # each warp-specialized candidate is its plain twin plus the flag, pruned by the same rules
    plain = set(space.grid(space.SpaceShape(8192, 8192, 128, 128, torch.bfloat16, halves=True)))
    assert {c for c in space.grid(shape) if not c.warp_specialize} == plain
    assert {ag.KernelConfig(c.block_m, c.block_n, c.num_warps, c.num_stages, halves=c.halves) for c in ws} \
        == {c for c in kept if c.num_warps == 8 and not c.warp_specialize}
    assert not any(c.config.warp_specialize and c.config.num_warps != 8 for c in pruned)
    assert not any(c.warp_specialize for c in space.grid(space.SpaceShape(8192, 8192, 128, 128, torch.bfloat16)))
