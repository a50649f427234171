"""Argument checks of the public API not covered by the feature tests: each bad value raises
TypeError or ValueError naming the argument and what was expected, before anything runs.
docs/arguments.md lists every argument with the test that backs it (here or elsewhere)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import DEVICE, make_qkv

import attngen as ag

BIG = 2 ** 31
REPO = Path(__file__).resolve().parents[1]


def test_table_is_backed_by_tests():
    """Every test docs/arguments.md names exists, and every table row names one."""
    page = (REPO / "docs" / "arguments.md").read_text()
    named = re.findall(r"tests/(\w+)\.py::(\w+)", page)
    assert len(named) > 60
    for module, test in named:
        source = (REPO / "tests" / f"{module}.py").read_text()
        assert re.search(rf"^def {test}\(", source, re.M), f"docs/arguments.md names tests/{module}.py::{test}"
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| function")
            and not line.startswith("| argument") and not line.startswith("| command")]
    assert all("tests/" in row for row in rows), [row for row in rows if "tests/" not in row]


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


# --------------------------------------------------------------------------- constructors
@pytest.mark.parametrize("build,exc,match", [
    (lambda: ag.causal("yes"), TypeError, "bottom_right must be a bool"),
    (lambda: ag.sliding_window(True), ValueError, "left must be an int"),
    (lambda: ag.sliding_window(4, right=-1), ValueError, "right must be an int"),
    (lambda: ag.sliding_window(BIG), ValueError, r"left must be an int in \[0, 2\*\*31\)"),
    (lambda: ag.neighborhood(3.0), TypeError, "kernel_size must be an int or a tuple"),
    (lambda: ag.neighborhood((3, 3, 3, 3)), TypeError, "tuple of 1 to 3"),
    (lambda: ag.neighborhood(0), ValueError, "kernel_size must be in"),
    (lambda: ag.neighborhood(BIG), ValueError, r"kernel_size must be in \[1, 2\*\*31\)"),
    (lambda: ag.neighborhood(3, dilation=0), ValueError, "dilation must be in"),
    (lambda: ag.neighborhood(3, stride=4), ValueError, "stride .4. must not exceed kernel_size"),
    (lambda: ag.neighborhood((3, 3), dilation=(1, 1, 1)), ValueError, "disagree on the rank"),
    (lambda: ag.neighborhood(3, is_causal=1), TypeError, "is_causal must be a bool"),
    (lambda: ag.softmax(sink=1), TypeError, "sink must be a bool"),
    (lambda: ag.sigmoid(bias="x"), TypeError, "bias must be a number or None"),
    (lambda: ag.sigmoid(bias=float("nan")), ValueError, "bias must be a finite number"),
    (lambda: ag.linear("tanh"), ValueError, "feature_map must be identity, elu1 or relu"),
    (lambda: ag.linear(decay=1), TypeError, "decay must be a bool"),
    (lambda: ag.linear(normalize="no"), TypeError, "normalize must be a bool"),
], ids=["causal", "window_bool", "window_negative", "window_huge", "na_float", "na_rank4", "na_zero", "na_huge",
        "na_dilation", "na_stride", "na_ranks_differ", "na_causal_int", "softmax_sink", "sigmoid_bias_type",
        "sigmoid_bias_nan", "linear_map", "linear_decay", "linear_normalize"])
def test_geometry_and_normalization_constructors(build, exc, match):
    _raises(exc, match, build)


def test_document_takes_no_arguments():
    _raises(TypeError, "argument", ag.document, 3)


def test_variant_arguments():
    _raises(TypeError, "score must be a score_mod function, got int", ag.Variant, score=3)
    _raises(TypeError, "mask must be a mask", ag.Variant, mask="causal")
    _raises(TypeError, "norm must be ag.softmax", ag.Variant, norm="softmax")
    _raises(ValueError, "variant name 3 is not a Python identifier", ag.Variant, name=3)
    _raises(ValueError, "reserved", ag.Variant, name="q_idx")
    _raises(TypeError, "score_mod must be a function, got int", ag.score_mod, 3)
    _raises(TypeError, "mask_mod must be a function, got str", ag.mask_mod, "x")


def test_compile_and_reference_arguments():
    _raises(TypeError, "compile: expected an ag.Variant, got str", ag.compile, "causal")
    _raises(TypeError, "compile: after_each_pass must be a function", ag.compile, ag.Variant(), after_each_pass=3)
    _raises(TypeError, "compile: rebuild must be a bool, got 'yes'", ag.compile, ag.Variant(), rebuild="yes")
    _raises(TypeError, "reference: expected an ag.Variant, got str", ag.reference, "causal")


def test_loads_and_load_arguments():
    _raises(TypeError, "loads: source must be str, got int", ag.loads, "attngen 1\nnorm = softmax()\n", source=3)
    _raises(TypeError, "load: path must be a str or os.PathLike, got int", ag.load, 3)


# --------------------------------------------------------------------------- calls
@pytest.fixture(scope="module")
def causal():
    return ag.compile(ag.Variant(mask=ag.causal()))


def test_out_argument(causal):
    q, k, v = make_qkv(1, 2, 2, 16, 16, 16, 16, torch.float32)
    _raises(TypeError, "out must be a torch.Tensor, got list", causal, q, k, v, out=[0.0])
    _raises(ValueError, r"out must have shape \(B, Hq, Lq, Dv\) = \(1, 2, 16, 16\)", causal, q, k, v,
            out=torch.empty(1, 2, 16, 8, device=DEVICE))
    _raises(TypeError, "out must be torch.float32", causal, q, k, v,
            out=torch.empty(1, 2, 16, 16, device=DEVICE, dtype=torch.float16))
    before = q.clone()
    _raises(ValueError, "out must not share memory with q, k or v", causal, q, k, v, out=q)
    assert torch.equal(q, before)
    qg = q.clone().requires_grad_()
    _raises(ValueError, "out= cannot be used when q, k, v or a runtime tensor require grad", causal, qg, k, v,
            out=torch.empty(1, 2, 16, 16, device=DEVICE))


def test_config_argument(causal):
    q, k, v = make_qkv(1, 2, 2, 16, 16, 16, 16, torch.float32)
    _raises(TypeError, "config must be an attngen KernelConfig, got str", causal, q, k, v, config="64x64")
    _raises(ValueError, "KernelConfig.block_m must be a power of two >= 16", ag.KernelConfig, 48, 64, 4, 1)
    _raises(ValueError, "num_warps a power of two", ag.KernelConfig, 64, 64, 3, 1)
    _raises(ValueError, "q_box must be three powers of two with product 16", ag.KernelConfig, 16, 16, 4, 1,
            q_box=(2, 8))
    linear = ag.compile(ag.Variant(norm=ag.linear()))
    _raises(TypeError, "config must be an attngen LinearConfig, got KernelConfig", linear, q, k, v,
            config=ag.KernelConfig(16, 16, 4, 1))
    _raises(ValueError, "LinearConfig.chunk must be a power of two >= 16", ag.LinearConfig, chunk=48)


def test_spatial_shape_only_for_neighborhoods(causal):
    q, k, v = make_qkv(1, 2, 2, 16, 16, 16, 16, torch.float32)
    _raises(TypeError, "spatial_shape is only taken by neighborhood variants", causal, q, k, v, spatial_shape=(4, 4))


def test_natten_entry_points_arguments():
    x = torch.randn(1, 6, 6, 2, 16, device=DEVICE)
    _raises(ValueError, r"na2d: q must be 5-D \(B, X, Y, H, D\)", ag.na2d, x[0], x[0], x[0], 3)
    _raises(ValueError, r"na1d: q must be 4-D \(B, X, H, D\)", ag.na1d, x, x, x, 3)
    _raises(ValueError, "na2d: kernel_size needs 2 values", ag.na2d, x, x, x, (3, 3, 3))
    _raises(ValueError, "na2d: k's spatial shape", ag.na2d, x, torch.randn(1, 6, 5, 2, 16, device=DEVICE), x, 3)
    _raises(TypeError, "scale must be a Python number or None, got str", ag.na2d, x, x, x, 3, scale="a")
    _raises(TypeError, "is_causal must be a bool", ag.na2d, x, x, x, 3, is_causal="yes")


def test_return_lse_without_a_log_sum_exp():
    q, k, v = make_qkv(1, 2, 2, 16, 16, 16, 16, torch.float32)
    sigmoid = ag.compile(ag.Variant(norm=ag.sigmoid()))
    _raises(ValueError, "return_lse: variant .* uses sigmoid normalization, which has no log-sum-exp",
            sigmoid, q, k, v, return_lse=True)


def test_unsupported_device(causal):
    q = torch.randn(1, 2, 16, 16, device="meta")
    _raises(ValueError, "q is on meta; attngen runs on CUDA, or on the CPU under the Triton interpreter",
            causal, q, q, q)
