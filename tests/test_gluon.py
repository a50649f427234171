"""The Gluon (sm90) forward and backward: what renders, what compiles, how a call selects the
forward and the backward, and (on an sm90 GPU) that both match the reference.

Gluon has no interpreter, so on the CPU the kernels are compiled for sm90a (down to a cubin)
but not run; the GPU tests skip there with that reason. The GPU suite also runs every kernel
test with ``ATTNGEN_DIALECT=gluon`` (benchmarks/gpu_session.sh tests_gluon).
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attngen as ag
from attngen.codegen.render_gluon import (gluon_backward_unsupported, gluon_unsupported, render_gluon,
                                          render_gluon_backward)
from attngen.runtime.config import KernelConfig, config_from_dict, config_to_dict
from attngen.runtime.gluon import default_gluon_backward_config, default_gluon_config, gluon_possible

from attngen.testing import relative_error
from helpers import DEVICE, GRAD_TOLERANCE, tolerance

ON_SM90 = DEVICE == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
needs_sm90 = pytest.mark.skipif(not ON_SM90, reason="the Gluon forward runs on sm90 GPUs only (Gluon has no "
                                                      "interpreter; the CPU suite compiles it instead)")


@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * (q_idx - kv_idx)


@ag.score_mod
def softcap(score, b, h, q_idx, kv_idx):
    return 20.0 * torch.tanh(score / 20.0)


@ag.mask_mod
def prefix_lm(b, h, q_idx, kv_idx, prefix):
    return (kv_idx <= q_idx) | (kv_idx < prefix[b])


SUPPORTED = {
    "dense": (ag.Variant(name="gl_dense"), {}),
    "causal": (ag.Variant(mask=ag.causal(), name="gl_causal"), {}),
    "causal_bottom_right": (ag.Variant(mask=ag.causal(bottom_right=True), name="gl_causal_br"), {}),
    "window": (ag.Variant(mask=ag.sliding_window(100, 20), name="gl_window"), {}),
    "alibi_causal": (ag.Variant(score=alibi, mask=ag.causal(), name="gl_alibi"), {"slopes": "h"}),
    "softcap": (ag.Variant(score=softcap, name="gl_softcap"), {}),
    "sinks_window": (ag.Variant(mask=ag.sliding_window(64), norm=ag.softmax(sink=True), name="gl_sinks"),
                     {"sinks": "h"}),
    "documents": (ag.Variant(mask=ag.causal() & ag.document(), name="gl_documents"), {"document_ids": "b"}),
}


def _tensors(spec: dict[str, str], B: int, H: int, device, L: int = 0) -> dict[str, torch.Tensor]:
    """Slopes and sinks per head; document ids (B, L): three documents, the last one ragged."""
    out = {}
    for n in spec:
        if n == "document_ids":
            out[n] = (torch.arange(L, device=device) * 3 // max(L, 1)).expand(B, L).contiguous()
        else:
            out[n] = torch.rand(H, device=device) * 0.2 if n == "slopes" else torch.randn(H, device=device)
    return out


@pytest.mark.parametrize("family", sorted(SUPPORTED))
def test_renders_named_partitions(family):
    attn = ag.compile(SUPPORTED[family][0])
    source = render_gluon(attn.ir)
    ast.parse(source)
    name = attn.ir.name
    for part in (f"def _{name}_producer(", f"def _{name}_consume(", f"def {name}_fwd_gluon(", "gl.warp_specialize(",
                 "def launch_forward("):
        assert part in source
    assert attn.gluon_source == source  # deterministic


@pytest.mark.parametrize("variant, expected", [
    (ag.Variant(mask=ag.neighborhood(7), name="gl_na"), "without neighborhoods"),
    (ag.Variant(mask=ag.neighborhood(7) | ag.causal(), name="gl_na_or"), "without neighborhoods"),
    (ag.Variant(norm=ag.sigmoid(), name="gl_sigmoid"), "softmax attention only"),
])
def test_unsupported_plans_say_why(variant, expected):
    attn = ag.compile(variant)
    assert expected in gluon_unsupported(attn.ir)
    with pytest.raises(ValueError, match=expected):
        render_gluon(attn.ir)


COMPILE_CASES = [  # family, D, Dv, BLOCK_N, STAGES, PINGPONG
    ("causal", 128, 128, 128, 2, False),
    ("dense", 128, 128, 128, 2, True),
    ("alibi_causal", 64, 64, 128, 3, False),
    ("sinks_window", 256, 256, 64, 2, True),
    ("softcap", 128, 64, 64, 2, False),
    ("documents", 128, 128, 128, 2, False),
]


def _compile(tmp_path, jobs: list[dict]) -> list[dict]:
    """Run tests/gluon_compile.py on ``jobs`` (the rendered module's text under "source")."""
    pytest.importorskip("triton.experimental.gluon")
    for i, job in enumerate(jobs):
        path = tmp_path / f"job{i}.py"
        path.write_text(job.pop("source"))
        job["path"] = str(path)
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("gluon_compile.py")), json.dumps(jobs)],
                         capture_output=True, text=True, env=env, timeout=900)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(jobs), run.stderr[-3000:]
    return results


def test_compiles_for_sm90(tmp_path):
    """The rendered kernels go through Triton's whole pipeline for sm90a: wgmma, register
    reallocation between partitions, no spills in the PTX, shared memory within the H100's."""
    jobs = [{"source": render_gluon(ag.compile(SUPPORTED[family][0]).ir), "kernel": "_fwd_gluon",
             "descriptors": {"q_desc": [64, d], "k_desc": [block_n, d], "v_desc": [block_n, dv]},
             "constexprs": {"BLOCK_N": block_n, "D": d, "DV": dv, "STAGES": stages, "SCALE_POSITIVE": True,
                            "STORE_LSE": True, "PINGPONG": pingpong},
             "bf16": ["Out"]}
            for family, d, dv, block_n, stages, pingpong in COMPILE_CASES]
    for case, result in zip(COMPILE_CASES, _compile(tmp_path, jobs)):
        assert "error" not in result, (case, result["error"])
        assert result["wgmma"] and result["setmaxnreg"], case
        assert result["spills"] == 0, (case, "registers spilled")
        assert result["shared"] <= 232448, (case, result["shared"])  # the H100's shared memory per block


# -- the backward (opt-in, unverified on a GPU)

BACKWARD_FAMILIES = sorted(f for f in SUPPORTED if f != "documents")  # the Gluon backward has no tile lists


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
def test_backward_renders_named_partitions(family):
    ir = ag.compile(SUPPORTED[family][0]).ir
    source = render_gluon_backward(ir)
    ast.parse(source)
    name = ir.name
    for part in (f"def {name}_bwd_preprocess(", f"def _{name}_dkdv_producer(", f"def _{name}_dkdv_consume(",
                 f"def {name}_bwd_dkdv_gluon(", f"def _{name}_dq_producer(", f"def _{name}_dq_consume(",
                 f"def {name}_bwd_dq_gluon(", "gl.warp_specialize(", "def launch_backward_gluon("):
        assert part in source
    assert render_gluon_backward(ir) == source  # deterministic
    assert ("mask code only on tiles" in source) == (ir.strategy == "band")


def test_backward_splices_the_variants_code():
    source = render_gluon_backward(ag.compile(SUPPORTED["softcap"][0]).ir)
    assert "gl.where(p > 0.0, p * (1.0 - 1.0 *" in source  # tanh's derivative, on P's support
    alibi = render_gluon_backward(ag.compile(SUPPORTED["alibi_causal"][0]).ir)
    assert "_read(slopes_ptr + off_h * slopes_stride0, SLOPES_AS_F32)" in alibi
    assert 'KERNEL_GRAD_TENSORS = ("slopes", )' in alibi  # refused by the launcher, left to the tl backward
    sinks = render_gluon_backward(ag.compile(SUPPORTED["sinks_window"][0]).ir)
    assert 'HOST_GRAD_TENSORS = ("sinks", )' in sinks and 'grads["sinks"] -=' in sinks


@pytest.mark.parametrize("variant, expected", [
    (ag.Variant(mask=ag.document(), name="gl_doc"), "Gluon backward walks dense and band masks only"),
    (ag.Variant(mask=ag.neighborhood(7), name="gl_na"), "Gluon backward walks dense and band masks only"),
    (ag.Variant(norm=ag.sigmoid(), name="gl_sigmoid"), "Gluon backward runs softmax attention only"),
])
def test_backward_unsupported_plans_say_why(variant, expected):
    attn = ag.compile(variant)
    assert expected in gluon_backward_unsupported(attn.ir)
    with pytest.raises(ValueError, match=expected):
        render_gluon_backward(attn.ir)


def _dkdv_job(family, d, dv, block_m, stages):
    return {"source": render_gluon_backward(ag.compile(SUPPORTED[family][0]).ir), "kernel": "_bwd_dkdv_gluon",
            "descriptors": {"q_desc": [block_m, d], "k_desc": [64, d], "v_desc": [64, dv], "do_desc": [block_m, dv]},
            "constexprs": {"BLOCK_M": block_m, "D": d, "DV": dv, "STAGES": stages}, "bf16": ["DK", "DV_OUT"]}


def _dq_job(family, d, dv, block_n, stages):
    return {"source": render_gluon_backward(ag.compile(SUPPORTED[family][0]).ir), "kernel": "_bwd_dq_gluon",
            "descriptors": {"q_desc": [64, d], "k_desc": [block_n, d], "v_desc": [block_n, dv], "do_desc": [64, dv]},
            "constexprs": {"BLOCK_N": block_n, "D": d, "DV": dv, "STAGES": stages}, "bf16": ["DQ"]}


BACKWARD_COMPILE_CASES = [  # kernel, family, D, Dv, walked tile, STAGES
    ("dkdv", "causal", 128, 128, 64, 2),
    ("dkdv", "dense", 128, 128, 64, 2),
    ("dkdv", "causal_bottom_right", 128, 64, 64, 2),
    ("dkdv", "sinks_window", 64, 64, 64, 3),
    ("dkdv", "softcap", 64, 64, 64, 2),
    ("dkdv", "alibi_causal", 64, 64, 64, 2),
    ("dq", "causal", 128, 128, 128, 2),
    ("dq", "softcap", 128, 128, 64, 2),
    ("dq", "alibi_causal", 128, 128, 64, 2),
    ("dq", "window", 64, 64, 128, 3),
    ("dq", "sinks_window", 128, 64, 64, 2),
]


def test_backward_compiles_for_sm90(tmp_path):
    """Both backward kernels down to a cubin for sm90a, checked with ptxas -v: no spills at
    all (ptxas's own spill report, not only the PTX's), shared memory within the H100's.
    D=128 dK/dV with the score_mods that need registers (softcap's derivative, ALiBi's
    positions) still spill a little under Triton 3.6 and are not in the list; D=256 does not
    fit (the launcher refuses it)."""
    jobs = [(_dkdv_job if case[0] == "dkdv" else _dq_job)(*case[1:]) for case in BACKWARD_COMPILE_CASES]
    for case, result in zip(BACKWARD_COMPILE_CASES, _compile(tmp_path, jobs)):
        assert "error" not in result, (case, result["error"])
        assert result["wgmma"] and 240 in result["setmaxnreg"] and 24 in result["setmaxnreg"], (case, result)
        assert result["spills"] == 0 and result["spill_bytes"] == 0, (case, "registers spilled", result)
        assert result["shared"] <= 232448, (case, result["shared"])


def test_config_dialect_validation_and_round_trip():
    c = KernelConfig(128, 128, 4, 3, dialect="gluon")
    assert config_from_dict(config_to_dict(c)) == c
    assert "dialect" not in config_to_dict(KernelConfig(64, 64, 4, 2))
    assert c.smaller() == KernelConfig(128, 128, 4, 2, dialect="gluon")
    assert c.smaller().smaller() == KernelConfig(128, 64, 4, 2, dialect="gluon")
    assert c.smaller().smaller().smaller() is None  # the caller goes back to a tl config
    pp = KernelConfig(128, 128, 4, 2, dialect="gluon", pingpong=True)
    assert config_from_dict(config_to_dict(pp)) == pp and pp.smaller().pingpong
    with pytest.raises(ValueError, match="pingpong needs dialect='gluon'"):
        KernelConfig(64, 64, 4, 2, pingpong=True)
    assert default_gluon_config(256, 256).block_n == 64
    with pytest.raises(ValueError, match="dialect must be one of"):
        KernelConfig(64, 64, 4, 2, dialect="cuda")
    with pytest.raises(ValueError, match="block_m=128"):
        KernelConfig(64, 64, 4, 2, dialect="gluon")
    with pytest.raises(ValueError, match="block_m=128"):
        KernelConfig(128, 128, 8, 2, dialect="gluon")


@pytest.mark.skipif(ON_SM90, reason="checks the refusal where Gluon cannot run")
def test_forced_gluon_refused_with_reason_where_it_cannot_run():
    attn = ag.compile(SUPPORTED["causal"][0])
    q = torch.randn(1, 2, 64, 64, device=DEVICE)
    with pytest.raises(ValueError, match="dialect='gluon': "):
        attn(q, q, q, dialect="gluon")
    with pytest.raises(ValueError, match="config.dialect='gluon': "):
        attn(q, q, q, config=KernelConfig(128, 128, 4, 2, dialect="gluon"))
    assert not gluon_possible(attn.ir, q.device)


def test_dialect_option_checks():
    attn = ag.compile(SUPPORTED["causal"][0])
    q = torch.randn(1, 2, 64, 32, device=DEVICE)
    ref = ag.reference(SUPPORTED["causal"][0])(q, q, q)
    out = attn(q, q, q, dialect="tl")
    assert attn.last_config.dialect == "tl"
    torch.testing.assert_close(out.double(), ref, atol=tolerance(q.dtype), rtol=0)
    with pytest.raises(ValueError, match="dialect must be one of"):
        attn(q, q, q, dialect="triton")
    with pytest.raises(ValueError, match="config.dialect is 'tl'"):
        attn(q, q, q, dialect="gluon", config=KernelConfig(64, 64, 4, 2))


def test_environment_preference(monkeypatch):
    variant = ag.Variant(mask=ag.causal(), name="gl_env")
    attn = ag.compile(variant)
    q = torch.randn(1, 2, 48, 32, device=DEVICE)
    monkeypatch.setenv("ATTNGEN_DIALECT", "gluon")
    out = attn(q, q, q)  # where Gluon cannot run, the preference falls back to tl
    expect = "gluon" if ON_SM90 and q.dtype in (torch.float16, torch.bfloat16) else "tl"
    assert attn.last_config.dialect == expect or q.dtype == torch.float32
    torch.testing.assert_close(out.double(), ag.reference(variant)(q, q, q), atol=tolerance(q.dtype), rtol=0)
    monkeypatch.setenv("ATTNGEN_DIALECT", "ptx")
    fresh = ag.compile(ag.Variant(mask=ag.causal(), name="gl_env2"))
    with pytest.raises(ValueError, match="ATTNGEN_DIALECT"):
        fresh(q, q, q)


# -- on an sm90 GPU: the kernels against the reference


def _cuda_qkv(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, HQ, HKV, Lq, Lkv, D, DV = shape
    return (torch.randn(B, HQ, Lq, D, device="cuda", dtype=dtype),
            torch.randn(B, HKV, Lkv, D, device="cuda", dtype=dtype),
            torch.randn(B, HKV, Lkv, DV, device="cuda", dtype=dtype))


SHAPES = [  # B, HQ, HKV, Lq, Lkv, D, DV
    (1, 4, 2, 1000, 1000, 128, 128),
    (2, 2, 1, 77, 300, 64, 64),
    (1, 2, 2, 300, 130, 256, 256),
    (1, 2, 1, 200, 200, 128, 64),
]


@needs_sm90
@pytest.mark.parametrize("pingpong", [False, True], ids=["free", "pingpong"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("family", sorted(SUPPORTED))
def test_gluon_matches_reference(family, shape, dtype, pingpong):
    variant, spec = SUPPORTED[family]
    B, HQ, HKV, Lq, Lkv, D, DV = shape
    q, k, v = _cuda_qkv(shape, dtype)
    if "document_ids" in spec and Lq != Lkv:
        pytest.skip("document ids index both sides: Lq == Lkv")
    t = _tensors(spec, B, HQ, "cuda", Lq)
    attn = ag.compile(variant)
    config = KernelConfig(128, 64 if max(D, DV) > 128 else 128, 4, 2, dialect="gluon", pingpong=pingpong)
    out, lse = attn(q, k, v, config=config, return_lse=True, **t)
    ref, ref_lse = ag.reference(variant)(q, k, v, return_lse=True, **t)
    torch.testing.assert_close(out.double(), ref, atol=tolerance(dtype), rtol=0)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    torch.testing.assert_close(lse[finite].double(), ref_lse[finite], atol=2e-2, rtol=0)


@needs_sm90
def test_gluon_strided_views_and_fallback():
    """Views of a packed qkv take the Gluon forward; inputs TMA cannot read fall back to tl."""
    variant = SUPPORTED["causal"][0]
    attn = ag.compile(variant)
    qkv = torch.randn(2, 300, 3, 4, 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    out = attn(q, k, v, dialect="gluon")
    torch.testing.assert_close(out.double(), ag.reference(variant)(q, k, v), atol=tolerance(q.dtype), rtol=0)
    odd = torch.randn(1, 2, 100, 72, device="cuda", dtype=torch.bfloat16)  # D=72: not a multiple of 16
    with pytest.raises(ValueError, match="multiples of 16"):
        attn(odd, odd, odd, dialect="gluon")


BACKWARD_SHAPES = [  # B, HQ, HKV, Lq, Lkv, D, DV
    (1, 4, 2, 1000, 1000, 128, 128),
    (2, 2, 1, 77, 300, 64, 64),
    (1, 2, 2, 300, 130, 64, 64),
    (1, 2, 1, 200, 200, 128, 64),
]


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", BACKWARD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
def test_gluon_backward_matches_reference(family, shape, dtype):
    """The Gluon backward's dq, dk, dv (and the sink's gradient) against the float64
    reference's autograd, from the tl forward's out and lse, with an upstream dlse."""
    from attngen.runtime.gluon import load_gluon_backward_module

    variant, spec = SUPPORTED[family]
    B, HQ, HKV, Lq, Lkv, D, DV = shape
    q, k, v = _cuda_qkv(shape, dtype)
    dout = torch.randn(B, HQ, Lq, DV, device="cuda", dtype=dtype)
    dlse = torch.randn(B, HQ, Lq, device="cuda", dtype=torch.float32)
    t = _tensors(spec, B, HQ, "cuda")
    attn = ag.compile(variant)
    with torch.no_grad():
        out, lse = attn(q, k, v, return_lse=True, **t)
    module = load_gluon_backward_module(attn.ir, attn.key)
    grads = {"sinks": torch.zeros(HQ, device="cuda")} if "sinks" in t else {}
    dq, dk, dv = module.launch_backward_gluon(q, k, v, out, lse, dout, dlse, D ** -0.5, t,
                                              default_gluon_backward_config(D, DV), grads)

    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    learn = {n: x.double().requires_grad_() if n == "sinks" else x for n, x in t.items()}
    ref_out, ref_lse = ag.reference(variant)(*leaves, return_lse=True, **learn)
    finite = torch.isfinite(ref_lse)
    loss = (ref_out * dout.double()).sum() + (torch.where(finite, ref_lse, 0.0) * dlse.double()).sum()
    wants = torch.autograd.grad(loss, leaves + ([learn["sinks"]] if "sinks" in t else []))
    for name, got, want in zip(["dq", "dk", "dv", "dsinks"], [dq, dk, dv, grads.get("sinks")], wants):
        assert torch.isfinite(got).all(), name
        assert relative_error(got, want) < GRAD_TOLERANCE[dtype], (name, relative_error(got, want))


@needs_sm90
def test_gluon_backward_refuses_score_tensor_gradients():
    from attngen.runtime.gluon import load_gluon_backward_module

    attn = ag.compile(SUPPORTED["alibi_causal"][0])
    module = load_gluon_backward_module(attn.ir, attn.key)
    q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="no gradients of runtime score tensors"):
        module.launch_backward_gluon(q, q, q, q, None, q, None, 0.125, {}, default_gluon_backward_config(64, 64),
                                     {"slopes": torch.zeros(2, device="cuda")})


@needs_sm90
@pytest.mark.parametrize("family", ["causal", "sinks_window", "alibi_causal"])
def test_gluon_autograd_follows_the_forward_dialect(family):
    """attn(..., dialect="gluon") runs the Gluon backward under autograd (the learned sink's
    gradient included); a learnable score tensor (ALiBi's slopes) takes the tl backward."""
    variant, spec = SUPPORTED[family]
    q, k, v = (torch.randn(1, 4, 333, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    t = {n: x.requires_grad_() for n, x in _tensors(spec, 1, 4, "cuda").items()}
    attn = ag.compile(variant)
    out = attn(q, k, v, dialect="gluon", **t)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, [q, k, v, *t.values()], dout)
    assert (attn.last_backward_dialect == "gluon") == (family != "alibi_causal")
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v, *t.values())]
    ref = ag.reference(variant)(*leaves[:3], **dict(zip(t, leaves[3:])))
    want = torch.autograd.grad(ref, leaves, dout.double())
    for name, g, w in zip(["dq", "dk", "dv", *t], got, want):
        assert relative_error(g, w) < GRAD_TOLERANCE[torch.bfloat16], (name, relative_error(g, w))


def test_backward_reason_and_the_tl_backward_on_other_devices():
    """Where the Gluon backward cannot run, gluon_backward_reason says why; a CPU call's
    backward is the tl one."""
    from attngen.runtime.gluon import gluon_backward_reason

    variant = SUPPORTED["causal"][0]
    attn = ag.compile(variant)
    q, k, v = (torch.randn(1, 2, 40, 16, requires_grad=True) for _ in range(3))
    assert "CUDA" in gluon_backward_reason(None, q, k, v)
    assert gluon_backward_reason("a plan reason", q, k, v) == "a plan reason"
    if DEVICE == "cpu":
        attn(q, k, v).sum().backward()
        assert attn.last_backward_dialect == "tl"
