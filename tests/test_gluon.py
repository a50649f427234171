"""The Gluon (sm90) forward: what renders, what compiles, how a call selects it, and (on an sm90
GPU) that it matches the reference.

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
from attngen.codegen.render_gluon import gluon_unsupported, render_gluon
from attngen.runtime.config import KernelConfig, config_from_dict, config_to_dict
from attngen.runtime.gluon import default_gluon_config, gluon_possible

from helpers import DEVICE, tolerance

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


def test_compiles_for_sm90(tmp_path):
    """The rendered kernels go through Triton's whole pipeline for sm90a: wgmma, register
    reallocation between partitions, no spills, shared memory within the H100's."""
    pytest.importorskip("triton.experimental.gluon")
    jobs = []
    for family, d, dv, block_n, stages, pingpong in COMPILE_CASES:
        path = tmp_path / f"{family}_{d}_{dv}_{int(pingpong)}.py"
        path.write_text(render_gluon(ag.compile(SUPPORTED[family][0]).ir))
        jobs.append({"path": str(path), "d": d, "dv": dv, "block_n": block_n, "stages": stages, "pingpong": pingpong})
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("gluon_compile.py")), json.dumps(jobs)],
                         capture_output=True, text=True, env=env, timeout=600)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(jobs), run.stderr[-3000:]
    for case, result in zip(COMPILE_CASES, results):
        assert "error" not in result, (case, result["error"])
        assert result["wgmma"] and result["setmaxnreg"], case
        assert result["spills"] == 0, (case, "registers spilled")
        assert result["shared"] <= 232448, (case, result["shared"])  # the H100's shared memory per block


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
    q = torch.randn(B, HQ, Lq, D, device="cuda", dtype=dtype)
    k = torch.randn(B, HKV, Lkv, D, device="cuda", dtype=dtype)
    v = torch.randn(B, HKV, Lkv, DV, device="cuda", dtype=dtype)
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
