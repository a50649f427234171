"""Graph calls whose kernels Inductor launches (runtime/inductor_ops.py, chosen by
runtime/graph_launch.py under ATTNGEN_GRAPH_LAUNCH=inductor).

CPU: tests/inductor_trace.py traces calls as AOT autograd does for Inductor, over fake CUDA
tensors: each eligible forward and backward becomes exactly its generated kernels, which
write only the buffers they allocate (never q, k, v or the incoming gradients); every other
call keeps the opaque ``attngen::attention`` op. Called eagerly, the ops' bodies launch the
kernels (under the interpreter on the CPU) and their autograd matches the reference. GPU: the
same calls compiled by Inductor match eager calls, forward and backward, with CUDA graphs and
inside attngen.nn's modules.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DEVICE, FP32_CLOSE, ON_GPU, alibi, rel_l2

import attngen as ag
from attngen.runtime.graph_launch import graph_launch

SHAPE = [1, 2, 128, 64]
INPUTS = {"Q", "K", "V", "DO", "Out", "Lse", "DLse"}  # what a traced launch must not write
JOBS = {
    "causal": {"variant": "causal", "shape": SHAPE, "backward": True},
    "dense": {"variant": "dense", "shape": SHAPE, "backward": True},
    "alibi": {"variant": "alibi", "shape": SHAPE, "tensors": ["slopes"], "backward": True},
    "sinks": {"variant": "sinks", "shape": SHAPE, "tensors": ["sinks"], "backward": True},
    "na2d": {"variant": "na2d", "shape": SHAPE, "spatial_shape": [8, 16], "backward": True},
    "sigmoid": {"variant": "sigmoid", "shape": SHAPE},
    "documents": {"variant": "documents", "shape": SHAPE, "tensors": ["document"]},
    "launch_op": {"variant": "causal", "shape": SHAPE, "launch": "op"},
    "dynamic": {"variant": "causal", "shape": SHAPE, "dynamic": True},
    "gluon": {"variant": "causal", "shape": SHAPE, "config": "gluon"},
}


@pytest.fixture(scope="module")
def traced() -> dict[str, dict]:
    """Every job's graphs, from one run of tests/inductor_trace.py."""
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("inductor_trace.py")),
                          json.dumps(list(JOBS.values()))], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(JOBS), run.stdout[-2000:]
    return {name: json.loads(line) for name, line in zip(JOBS, lines)}


@pytest.mark.parametrize("name", ["causal", "dense", "alibi", "sinks", "na2d"])
def test_forward_and_backward_are_their_kernels(traced, name):
    graphs = traced[name]
    (forward,) = graphs["forward"]
    assert forward["kernel"] == f"trace_{name}_fwd"
    assert set(forward["writes"]) == {"Out", "Lse"}, "the forward writes its output and lse, nothing else"
    assert [c.get("kernel") for c in graphs["backward"]] == [
        f"trace_{name}_bwd_preprocess", f"trace_{name}_bwd_dkdv", f"trace_{name}_bwd_dq"]
    for launch in graphs["backward"]:
        assert not set(launch["writes"]) & INPUTS, launch


def test_score_tensor_gradients_are_accumulated_by_the_kernel(traced):
    dkdv = traced["alibi"]["backward"][1]
    assert "slopes_grad_ptr" in dkdv["writes"]


def test_sigmoid_forward_writes_no_lse(traced):
    (forward,) = traced["sigmoid"]["forward"]
    assert forward["kernel"] == "trace_sigmoid_fwd" and forward["writes"] == ["Out"]


@pytest.mark.parametrize("name", ["documents", "launch_op", "dynamic", "gluon"])
def test_other_calls_keep_the_opaque_op(traced, name):
    """Tile lists (read from runtime tensors), ATTNGEN_GRAPH_LAUNCH=op, symbolic lengths and
    the Gluon forward: the graph holds attngen::attention."""
    assert traced[name]["forward"] == [{"op": "attngen.attention.default"}]


def test_graph_launch_setting_is_checked(monkeypatch):
    monkeypatch.delenv("ATTNGEN_GRAPH_LAUNCH", raising=False)
    assert graph_launch() == "op"
    monkeypatch.setenv("ATTNGEN_GRAPH_LAUNCH", " Inductor ")
    assert graph_launch() == "inductor"
    monkeypatch.setenv("ATTNGEN_GRAPH_LAUNCH", "triton")
    with pytest.raises(ValueError, match="ATTNGEN_GRAPH_LAUNCH"):
        graph_launch()


# --------------------------------------------------------------------------- the ops run eagerly
CASES = {  # variant, learned runtime tensors (H,); the neighborhood's grid is (L / 16, 16)
    "causal": (ag.Variant(mask=ag.causal(), name="inductor_causal"), ()),
    "alibi": (ag.Variant(score=alibi, mask=ag.causal(), name="inductor_alibi"), ("slopes",)),
    "sinks": (ag.Variant(mask=ag.sliding_window(63), norm=ag.softmax(sink=True), name="inductor_sinks"), ("sinks",)),
    "na2d": (ag.Variant(mask=ag.neighborhood(5), name="inductor_na2d"), ()),
    "sigmoid": (ag.Variant(mask=ag.causal(), norm=ag.sigmoid(), name="inductor_sigmoid"), ()),
}


def _spatial(name: str, L: int) -> dict:
    return {"spatial_shape": (L // 16, 16)} if name == "na2d" else {}


@pytest.mark.parametrize("name", ["causal", "alibi", "sinks", "na2d"])
def test_ops_run_eagerly_with_their_autograd(name):
    """Called outside a graph (a graph compiled with the eager backend does so), the ops' bodies
    launch the kernels themselves, here under the interpreter: output, lse and every gradient,
    through the autograd formula the ops share with attngen::attention, match the reference."""
    from attngen.runtime import ops

    variant, learned = CASES[name]
    attn = ag.compile(variant)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 128, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    tensors = {n: torch.rand(2, device=DEVICE, requires_grad=True) for n in learned}
    extra = _spatial(name, 128)
    out, lse = torch.ops.attngen.attention_kernels(attn.key, q, k, v, list(tensors.values()), None,
                                                   ops.encode_spatial(extra.get("spatial_shape")), "", True, True,
                                                   False)
    inputs = (q, k, v, *tensors.values())
    grads = torch.autograd.grad(out.square().sum() + lse.sum(), inputs)
    ref_out, ref_lse = ag.reference(variant)(q, k, v, return_lse=True, **tensors, **extra)
    ref_grads = torch.autograd.grad(ref_out.square().sum() + ref_lse.sum(), inputs)
    torch.testing.assert_close(out, ref_out.to(out.dtype), **FP32_CLOSE)
    torch.testing.assert_close(lse, ref_lse.to(lse.dtype), **FP32_CLOSE)
    grad_close = dict(rtol=2e-2, atol=2e-2) if ON_GPU else dict(rtol=1e-3, atol=1e-3)  # tf32 products on the GPU
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want.to(got.dtype), **grad_close)


# --------------------------------------------------------------------------- on the GPU
def _inputs(H=4, L=256, D=64):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, H, L, D, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    return q, k, v


@pytest.mark.skipif(not ON_GPU, reason="Inductor launches Triton kernels on a GPU")
@pytest.mark.parametrize("name", list(CASES))
def test_inductor_launches_match_eager(name, monkeypatch):
    """torch.compile(fullgraph=True) with Inductor: the generated code launches the variant's
    kernels itself (no attngen op left in it) and the loss and every gradient match eager."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setenv("ATTNGEN_GRAPH_LAUNCH", "inductor")
    torch._dynamo.reset()
    variant, learned = CASES[name]
    attn = ag.compile(variant)
    q, k, v = _inputs()
    tensors = {n: torch.rand(q.shape[1], device=DEVICE, requires_grad=True) for n in learned}
    extra = _spatial(name, q.shape[2])

    def loss_of(q, k, v, tensors):
        return attn(q, k, v, **tensors, **extra).float().square().sum()

    inputs = (q, k, v, *tensors.values())
    compiled = torch.compile(loss_of, fullgraph=True)
    grads, codes = run_and_get_code(lambda: torch.autograd.grad(compiled(q, k, v, tensors), inputs))
    code = "\n".join(codes)
    assert f"{attn.ir.name}_fwd" in code and f"{attn.ir.name}_bwd_dkdv" in code
    assert "attngen.attention" not in code, "a call left to the opaque op"
    expected = torch.autograd.grad(loss_of(q, k, v, tensors), inputs)
    torch.testing.assert_close(compiled(q, k, v, tensors), loss_of(q, k, v, tensors), rtol=1e-2, atol=1e-1)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
def test_inductor_launches_under_cuda_graphs(monkeypatch):
    """mode="reduce-overhead" captures the Inductor-launched kernels of a training step and
    replays them with new inputs and new learned slopes."""
    monkeypatch.setenv("ATTNGEN_GRAPH_LAUNCH", "inductor")
    torch._dynamo.reset()
    variant, _ = CASES["alibi"]
    attn = ag.compile(variant)

    def loss_of(q, k, v, slopes):
        return attn(q, k, v, slopes=slopes).float().square().sum()

    compiled = torch.compile(loss_of, mode="reduce-overhead", fullgraph=True)
    for step in range(4):  # warm-up, capture, replays
        q, k, v = _inputs()
        slopes = torch.rand(q.shape[1], device=DEVICE, requires_grad=True) * (step + 1)
        got = torch.autograd.grad(compiled(q, k, v, slopes), (q, slopes))
        want = torch.autograd.grad(loss_of(q, k, v, slopes), (q, slopes))
        for g, w in zip(got, want):
            torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not ON_GPU, reason="Inductor launches Triton kernels on a GPU")
def test_inductor_launches_inside_modules(monkeypatch):
    """attngen.nn's modules hand the kernels strided views of one fused qkv projection; the
    graph Inductor builds around them must keep the strides the launch was traced with."""
    import attngen.nn as agnn

    monkeypatch.setenv("ATTNGEN_GRAPH_LAUNCH", "inductor")
    torch._dynamo.reset()
    torch.manual_seed(0)
    sinks = ag.Variant(mask=ag.sliding_window(31), norm=ag.softmax(sink=True), name="inductor_module_sinks")
    modules = [(agnn.Attention(128, 4, num_kv_heads=2, variant=sinks), torch.randn(2, 96, 128, device=DEVICE)),
               (agnn.NeighborhoodAttention2D(128, 4, kernel_size=5, dilation=2), torch.randn(2, 16, 16, 128,
                                                                                             device=DEVICE))]
    for module, x in modules:
        module = module.to(DEVICE)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            expected = torch.autograd.grad(module(x).float().square().sum(), list(module.parameters()))
            got = torch.autograd.grad(torch.compile(module, fullgraph=True)(x).float().square().sum(),
                                      list(module.parameters()))
        for g, e in zip(got, expected):  # bf16 autocast: Inductor fuses the rest differently
            assert rel_l2(g.float(), e.float()) < 3e-2
