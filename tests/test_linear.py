"""Linear attention (``ag.linear``): the chunked kernels against the float64 reference.

Forward and gradients (q, k, v, decay_log) for every feature map, decay on and off,
normalizer on and off, causal and non-causal; GQA, lengths that are not a multiple of the
chunk, D != Dv and head dims that are not powers of two; column-split and many-chunk
launch configurations; compile-time and call-time errors. Outputs are poisoned (NaN)
before every launch by conftest, so an element the kernels do not write fails the test.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DEVICE, DTYPES, dtype_id, tolerance

import attngen as ag
from attngen.library import builtin
from attngen.testing import relative_error

# relative L2 error of each gradient (as tests/test_backward.py); decay_log's is one sum per
# head of terms of both signs, so its relative error in fp32 is larger than the elementwise ones
GRAD_TOLERANCE = {torch.float32: 1e-2 if DEVICE == "cuda" else 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
DECAY_GRAD_TOLERANCE = {**GRAD_TOLERANCE, torch.float32: 1e-2 if DEVICE == "cuda" else 1e-4}

# (feature map, decay, normalize, causal): every feature map with each kind of mask/decay/normalizer
CASES = [(fm, decay, normalize, causal) for fm in ("identity", "elu1", "relu")
         for decay, normalize, causal in ((False, True, True), (True, False, True), (True, True, True),
                                          (False, False, False), (False, True, False))]


def case_id(case) -> str:
    fm, decay, normalize, causal = case
    return f"{fm}-{'decay' if decay else 'nodecay'}-{'norm' if normalize else 'nonorm'}-" \
           f"{'causal' if causal else 'full'}"


def variant(fm: str, decay: bool, normalize: bool, causal: bool) -> ag.Variant:
    return ag.Variant(mask=ag.causal() if causal else None, norm=ag.linear(fm, decay=decay, normalize=normalize))


def inputs(v: ag.Variant, B, Hq, Hkv, Lq, Lkv, D, Dv, dtype, seed=0):
    """Random leaves requiring grad (q, k, v and decay_log for decay variants). With a
    normalizer and a feature map that can be negative or zero, q and k are made positive:
    random-sign denominators near 0 amplify any rounding without bound."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g)
    k = torch.randn(B, Hkv, Lkv, D, generator=g)
    val = torch.randn(B, Hkv, Lkv, Dv, generator=g)
    if v.norm.normalize and v.norm.feature_map != "elu1":
        q, k = q.abs(), k.abs()
    q, k, val = (t.to(DEVICE, dtype).requires_grad_() for t in (q, k, val))
    tensors = {}
    if v.norm.decay:  # rates from strong (0.5 per token) to weak (1/100)
        tensors["decay_log"] = -torch.logspace(-2, -0.3, Hq).to(DEVICE).requires_grad_()
    return q, k, val, tensors


def check(v: ag.Variant, B, Hq, Hkv, Lq, Lkv, D, Dv, dtype, config=None, layout=None):
    q, k, val, tensors = inputs(v, B, Hq, Hkv, Lq, Lkv, D, Dv, dtype)
    attn = ag.compile(v)
    assert isinstance(attn, ag.CompiledLinearAttention)
    args = (q, k, val) if layout is None else layout(q, k, val)
    assert layout is None or not args[0].is_contiguous()
    out = attn(*args, config=config, backward_config=config, **tensors)
    ref = ag.reference(v)(q, k, val, **tensors)
    assert out.shape == (B, Hq, Lq, Dv) and out.dtype == dtype and out.device == q.device
    assert torch.isfinite(out).all(), "NaN/inf in out (an unwritten element stays NaN)"
    err = relative_error(out.detach(), ref.detach())
    assert err < tolerance(dtype), f"out: relative L2 error {err:.2e}"
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    leaves = [q, k, val, *tensors.values()]
    got = torch.autograd.grad((out.double() * dout).sum(), leaves)
    want = torch.autograd.grad((ref * dout).sum(), leaves)
    for name, a, b in zip(["q", "k", "v", *tensors], got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.isfinite(a).all(), f"d{name} has NaN/inf"
        err = relative_error(a, b)
        bound = (DECAY_GRAD_TOLERANCE if name == "decay_log" else GRAD_TOLERANCE)[dtype]
        assert err < bound, f"d{name}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, dtype):
    """GQA (4 query heads on 2 KV heads), 45 tokens (ragged last chunk), D=24, Dv=40;
    non-causal variants attend 29 keys."""
    causal = case[3]
    check(variant(*case), 1, 4, 2, 45, 45 if causal else 29, 24, 40, dtype)


@pytest.mark.parametrize("case", [("elu1", True, True, True), ("identity", True, False, True),
                                  ("relu", False, True, False), ("identity", False, False, True)], ids=case_id)
def test_column_blocks_and_many_chunks(case):
    """16-token chunks (four of them, the last ragged) and 16-wide column blocks (three for
    D=40, two for Dv=24): several programs per head in every kernel."""
    causal = case[3]
    check(variant(*case), 1, 2, 1, 50, 50 if causal else 35, 40, 24, torch.float32,
          config=ag.LinearConfig(chunk=16, block_k=16, block_v=16, num_warps=4, num_stages=1))


def test_power_of_two_dims_mqa_and_transposed_views():
    """D = Dv = 32, one KV head for four query heads, and q, k, v as (B, L, H, D) buffers seen
    through .transpose(1, 2) (no copies)."""
    def blhd(q, k, v):  # differentiable copies of the leaves in (B, L, H, D) memory order
        return tuple(t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))

    v = variant("elu1", True, True, True)
    check(v, 2, 4, 1, 40, 40, 32, 32, torch.float32, layout=blhd)


def test_single_token_and_exact_chunks():
    for L in (1, 64):
        check(variant("identity", True, False, True), 1, 2, 2, L, L, 16, 16, torch.float32)


def test_decay_log_gradient_alone_and_no_grad_paths():
    v = variant("identity", True, False, True)
    q, k, val, tensors = inputs(v, 1, 2, 1, 33, 33, 16, 16, torch.float32)
    q, k, val = (t.detach() for t in (q, k, val))
    attn = ag.compile(v)
    out = attn(q, k, val, **tensors)
    (dgamma,) = torch.autograd.grad(out.sum(), tensors["decay_log"])
    ref = ag.reference(v)(q, k, val, **tensors)
    (want,) = torch.autograd.grad(ref.sum(), tensors["decay_log"])
    assert relative_error(dgamma, want) < DECAY_GRAD_TOLERANCE[torch.float32]
    with torch.no_grad():
        plain = attn(q, k, val, **tensors)
        buffer = torch.full_like(plain, float("nan"))
        written = attn(q, k, val, out=buffer, **tensors)
    assert written is buffer and torch.equal(buffer, plain)
    assert relative_error(plain, ref.detach()) < tolerance(torch.float32)


def test_decay_gradient_stays_accurate_on_long_sequences():
    """d decay_log sums (i - j)-weighted terms; built from chunk-local distances, its rounding
    does not grow with the position (the q.dq - k.dk identity lost 20% here in float16)."""
    v = variant("identity", True, False, True)
    q, k, val, _ = inputs(v, 1, 2, 1, 512, 512, 16, 16, torch.float16)
    decay_log = torch.tensor([-0.5, -0.02], device=DEVICE, requires_grad=True)
    out = ag.compile(v)(q, k, val, decay_log=decay_log)
    (got,) = torch.autograd.grad(out.float().sum(), decay_log)
    (want,) = torch.autograd.grad(ag.reference(v)(q, k, val, decay_log=decay_log).sum(), decay_log)
    assert ((got.double() - want).abs() / want.abs()).max() < 1e-2  # per head


def test_poisoned_outputs_are_fully_written(monkeypatch):
    """out is filled with NaN before the launch; every element must be overwritten."""
    monkeypatch.setenv("ATTNGEN_POISON_OUTPUTS", "1")
    for case in (("elu1", False, True, True), ("relu", False, False, False)):
        v = variant(*case)
        q, k, val, tensors = inputs(v, 2, 2, 1, 37, 37 if case[3] else 19, 20, 36, torch.float32)
        with torch.no_grad():
            out = ag.compile(v)(q, k, val, config=ag.LinearConfig(16, 16, 16, 4, 1), **tensors)
        assert not out.isnan().any()


def test_builtins_round_trip_and_compile():
    for name, fm, decay, normalize in (("lightning", "identity", True, False), ("elu1_linear", "elu1", False, True)):
        v = builtin(name)
        assert v.norm == ag.linear(fm, decay=decay, normalize=normalize) and v.mask == ag.causal()
        assert ag.loads(v.to_text()) == v
        attn = ag.compile(v)
        assert "-> chunked_linear" in str(attn.ir)
        assert f"def {name}_fwd(" in attn.source and f"def {name}_bwd_dk(" in attn.source
        assert ag.compile(v).from_cache
    for case in CASES:
        assert ag.loads(variant(*case).to_text()) == variant(*case)


def test_load_compiled(tmp_path):
    v = builtin("lightning")
    attn = ag.compile(v)
    path = tmp_path / "lightning.py"
    path.write_text(attn.source)
    loaded = ag.load_compiled(path, v)
    assert isinstance(loaded, ag.CompiledLinearAttention) and loaded.key == attn.key
    q, k, val, tensors = inputs(v, 1, 2, 2, 20, 20, 16, 16, torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded(q, k, val, **tensors), attn(q, k, val, **tensors))


@ag.score_mod
def _bias(score, b, h, q_idx, kv_idx):
    return score + 1.0


@ag.mask_mod
def _causal_mod(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


@pytest.mark.parametrize("build,match", [
    (lambda: ag.Variant(score=_bias, norm=ag.linear()), "score_mod"),
    (lambda: ag.Variant(mask=ag.sliding_window(8), norm=ag.linear()), "no mask or ag.causal"),
    (lambda: ag.Variant(mask=_causal_mod, norm=ag.linear()), "ag.causal"),
    (lambda: ag.Variant(mask=ag.causal() & ag.document(), norm=ag.linear()), "no mask or ag.causal"),
    (lambda: ag.Variant(norm=ag.linear(decay=True)), "decay=True needs mask=ag.causal"),
], ids=["score_mod", "window", "mask_mod", "causal_and_document", "decay_without_causal"])
def test_compile_time_errors(build, match):
    with pytest.raises(ag.UnsupportedVariant, match=match):
        ag.compile(build())


def test_call_time_errors():
    v = variant("identity", True, False, True)
    attn = ag.compile(v)
    q, k, val, tensors = inputs(v, 1, 2, 1, 16, 16, 16, 16, torch.float32)
    q, k, val = (t.detach() for t in (q, k, val))
    dl = tensors["decay_log"].detach()
    with pytest.raises(ValueError, match="scale"):
        attn(q, k, val, scale=0.5, decay_log=dl)
    with pytest.raises(ValueError, match="return_lse"):
        attn(q, k, val, return_lse=True, decay_log=dl)
    with pytest.raises(TypeError, match="decay_log"):
        attn(q, k, val)
    with pytest.raises(ValueError, match=r"decay_log must have shape \(Hq,\)"):
        attn(q, k, val, decay_log=dl[:1])
    with pytest.raises(TypeError, match="decay_log must be a floating"):
        attn(q, k, val, decay_log=torch.zeros(2, dtype=torch.int64, device=DEVICE))
    with pytest.raises(TypeError, match="unexpected keyword"):
        attn(q, k, val, decay_log=dl, slopes=dl)
    with pytest.raises(ValueError, match="k has 20 positions but q has 16"):
        attn(q, k[:, :, :1].expand(-1, -1, 20, -1), val[:, :, :1].expand(-1, -1, 20, -1), decay_log=dl)
    with pytest.raises(TypeError, match="LinearConfig"):
        attn(q, k, val, decay_log=dl, config=ag.KernelConfig(64, 64, 4, 1))
    with pytest.raises(ValueError, match="power of two"):
        ag.LinearConfig(chunk=48)
    with pytest.raises(ValueError, match="return_lse"):
        ag.reference(v)(q, k, val, return_lse=True, decay_log=dl)
    with pytest.raises(ValueError, match="scale"):
        ag.reference(v)(q, k, val, scale=1.0, decay_log=dl)


def test_reference_gradcheck():
    """The float64 reference is the backward's oracle: its gradients (q, k, v, decay_log)
    against finite differences."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, h, 6, 16, generator=g, dtype=torch.float64).requires_grad_() for h in (2, 1))
    val = torch.randn(1, 1, 6, 16, generator=g, dtype=torch.float64, requires_grad=True)
    dl = torch.tensor([-0.4, -0.05], dtype=torch.float64, requires_grad=True)
    ref = ag.reference(variant("elu1", True, True, True))
    assert torch.autograd.gradcheck(lambda q, k, v, d: ref(q, k, v, decay_log=d), (q, k, val, dl), fast_mode=True)
    ref = ag.reference(variant("relu", False, False, False))
    assert torch.autograd.gradcheck(lambda q, k, v: ref(q, k, v), (q, k, val), fast_mode=True)


def test_cli_compiles_lightning_with_a_passing_test(tmp_path):
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "attngen", "compile", "lightning", "-o", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "chunked linear attention" in proc.stdout
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(tmp_path / "test_lightning.py")], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
