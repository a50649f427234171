"""attngen inside graphs: the custom ops (runtime/ops.py) under opcheck, torch.compile with
fullgraph=True (no graph break, no recompile, dynamic lengths, gradients of runtime tensors),
torch.export, and CUDA graphs on the GPU.

On the CPU the graphs are compiled with the ``aot_eager`` backend (AOT autograd traces the
forward and backward through the ops' fake implementations; the kernels then run under the
interpreter); on the GPU with Inductor as well.
"""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, FP32_CLOSE, ON_GPU, alibi, same_doc
from torch._dynamo.testing import CompileCounterWithBackend

import attngen as ag

BACKENDS = ["aot_eager", "inductor"] if ON_GPU else ["aot_eager"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def qkv(B=1, H=2, HKV=2, L=48, D=16, requires_grad=False, dtype=torch.float32):
    def make(h):
        return torch.randn(B, h, L, D, device=DEVICE, dtype=dtype, requires_grad=requires_grad)
    return make(H), make(HKV), make(HKV)


ALIBI_CAUSAL = ag.Variant(score=alibi, mask=ag.causal(), name="graph_alibi_causal")
DOCUMENTS = ag.Variant(mask=same_doc & ag.causal(), name="graph_documents")
SINKS = ag.Variant(mask=ag.sliding_window(7), norm=ag.softmax(sink=True), name="graph_sinks")
SIGMOID = ag.Variant(mask=ag.causal(), norm=ag.sigmoid(), name="graph_sigmoid")
NA2D = ag.Variant(mask=ag.neighborhood(3), name="graph_na2d")
DECAY = ag.Variant(mask=ag.causal(), norm=ag.linear("elu1", decay=True), name="graph_decay")


def _document_ids(B, L):
    return torch.cat([torch.zeros(B, L // 3), torch.ones(B, L - L // 3)], 1).to(torch.int32).to(DEVICE)


# --------------------------------------------------------------------------- opcheck
def _attention_args(variant, store_lse, **over):
    attn = ag.compile(variant)
    q, k, v = qkv(L=over.pop("L", 32))
    tensors = over.pop("tensors", [])
    spatial = over.pop("spatial", "")
    return (attn.key, q, k, v, tensors, None, spatial, "", store_lse, store_lse, False)


@pytest.mark.parametrize("case", ["alibi", "documents", "sinks", "sigmoid", "na2d"])
def test_opcheck_attention(case):
    """Schema, fake implementation (shapes and strides), autograd registration and AOT
    dispatch of attngen::attention, per normalization and tile plan."""
    H = 2
    if case == "alibi":
        args = _attention_args(ALIBI_CAUSAL, True, tensors=[torch.rand(H, device=DEVICE, requires_grad=True)])
    elif case == "documents":
        args = _attention_args(DOCUMENTS, True, tensors=[_document_ids(1, 32)])
    elif case == "sinks":
        args = _attention_args(SINKS, True, tensors=[torch.randn(H, device=DEVICE, requires_grad=True)])
    elif case == "sigmoid":
        args = _attention_args(SIGMOID, False)
    else:
        args = _attention_args(NA2D, True, L=36, spatial="6,6")
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() and i in (1, 2, 3)
                 else a for i, a in enumerate(args))
    torch.library.opcheck(torch.ops.attngen.attention.default, args)


def test_opcheck_linear_attention():
    attn = ag.compile(DECAY)
    q, k, v = qkv(L=32, requires_grad=True)
    decay = (-torch.rand(2, device=DEVICE)).requires_grad_()
    torch.library.opcheck(torch.ops.attngen.linear_attention.default, (attn.key, q, k, v, decay, "", ""))


def test_opcheck_attention_into():
    attn = ag.compile(ALIBI_CAUSAL)
    q, k, v = qkv(L=32)
    out = torch.empty(1, 32, 2, 16, device=DEVICE).transpose(1, 2)  # a strided view, as ag.na2d passes
    lse = torch.empty(1, 2, 32, device=DEVICE)
    torch.library.opcheck(torch.ops.attngen.attention_into.default,
                          (attn.key, q, k, v, [torch.rand(2, device=DEVICE)], None, "", "", out, lse))


def test_unknown_kernel_key_is_named():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="not loaded in this process"):
        torch.ops.attngen.attention("0" * 64, q, k, v, [], None, "", "", False, False, False)


# --------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_forward_backward(backend):
    """A function calling a compiled variant traces as one graph; outputs and the gradients
    of q, k, v and of the runtime tensor (ALiBi slopes) match eager calls."""
    attn = ag.compile(ALIBI_CAUSAL)

    def step(q, k, v, slopes):
        out, lse = attn(q, k, v, slopes=slopes, return_lse=True)
        return (out * out).sum() + lse.sum()

    q, k, v = qkv(requires_grad=True)
    slopes = torch.rand(2, device=DEVICE, requires_grad=True)
    explained = torch._dynamo.explain(step)(q, k, v, slopes)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    loss = step(q, k, v, slopes)
    expected = torch.autograd.grad(loss, (q, k, v, slopes))
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    loss_c = compiled(q, k, v, slopes)
    got = torch.autograd.grad(loss_c, (q, k, v, slopes))
    torch.testing.assert_close(loss_c, loss, **FP32_CLOSE)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **FP32_CLOSE)


def test_compile_does_not_recompile():
    """Same shapes: one compilation. A new sequence length marked dynamic: still one."""
    attn = ag.compile(DOCUMENTS)
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(fullgraph=True, backend=counter)
    def fwd(q, k, v, document_ids):
        return attn(q, k, v, document=document_ids)

    for _ in range(2):
        q, k, v = qkv(L=48)
        fwd(q, k, v, _document_ids(1, 48))
    assert counter.frame_count == 1
    for L in (40, 56, 72):
        q, k, v = qkv(L=L)
        doc = _document_ids(1, L)
        for t in (q, k, v):
            torch._dynamo.mark_dynamic(t, 2)
        torch._dynamo.mark_dynamic(doc, 1)
        out = fwd(q, k, v, doc)
        torch.testing.assert_close(out, ag.reference(DOCUMENTS)(q, k, v, document=doc).to(out.dtype),
                                   **FP32_CLOSE)
    assert counter.frame_count == 2, "the first dynamic length compiles once; later lengths reuse it"


def test_compile_sinks_sigmoid_neighborhood_linear():
    """Every normalization and tile plan traces without a graph break, gradients included
    (sinks and decay are learned tensors)."""
    sinks_attn, sig_attn, na_attn, lin_attn = (ag.compile(v) for v in (SINKS, SIGMOID, NA2D, DECAY))

    def model(q, k, v, sinks, decay):
        a = sinks_attn(q, k, v, sinks=sinks)
        b = sig_attn(q, k, v)
        c = na_attn(q, k, v, spatial_shape=(6, 8))
        d = lin_attn(q, k, v, decay_log=decay)
        return a + b + c + d

    q, k, v = qkv(requires_grad=True)
    sinks = torch.randn(2, device=DEVICE, requires_grad=True)
    decay = (-torch.rand(2, device=DEVICE)).requires_grad_()
    assert torch._dynamo.explain(model)(q, k, v, sinks, decay).graph_break_count == 0
    out = model(q, k, v, sinks, decay)
    expected = torch.autograd.grad(out.square().sum(), (q, k, v, sinks, decay))
    out_c = torch.compile(model, fullgraph=True, backend="aot_eager")(q, k, v, sinks, decay)
    got = torch.autograd.grad(out_c.square().sum(), (q, k, v, sinks, decay))
    torch.testing.assert_close(out_c, out, **FP32_CLOSE)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **FP32_CLOSE)


def test_compile_captured_tensor_read_by_reference():
    """A closure-captured tensor is a graph input: an in-place update is seen without a
    recompile, as in eager calls."""
    bias = torch.zeros(2, device=DEVICE)

    def head_bias(score, b, h, q_idx, kv_idx):
        return score + bias[h]

    attn = ag.compile(ag.Variant(score=head_bias, name="graph_captured_bias"))
    counter = CompileCounterWithBackend("aot_eager")
    fwd = torch.compile(lambda q, k, v: attn(q, k, v, return_lse=True)[1], fullgraph=True, backend=counter)
    q, k, v = qkv()
    before = fwd(q, k, v)
    bias.add_(torch.tensor([1.0, -2.0], device=DEVICE))
    after = fwd(q, k, v)
    torch.testing.assert_close(after - before, bias.view(1, 2, 1).expand_as(after), **FP32_CLOSE)
    assert counter.frame_count == 1


def test_compile_out_argument_and_natten_layout():
    """ag.na2d (which writes into a view of NATTEN's layout in eager mode) and out= trace."""
    q, k, v = (torch.randn(1, 6, 8, 2, 16, device=DEVICE) for _ in range(3))
    fn = torch.compile(lambda q, k, v: ag.na2d(q, k, v, kernel_size=3), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(q, k, v), ag.na2d(q, k, v, kernel_size=3), **FP32_CLOSE)

    attn = ag.compile(ag.Variant(mask=ag.causal(), name="graph_causal"))

    def into(q, k, v):
        out = torch.empty(1, 48, 2, 16, device=DEVICE).transpose(1, 2)
        attn(q, k, v, out=out)
        return out

    q, k, v = qkv()
    torch.testing.assert_close(torch.compile(into, fullgraph=True, backend="aot_eager")(q, k, v), attn(q, k, v),
                               **FP32_CLOSE)


# --------------------------------------------------------------------------- torch.export
class _AlibiBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.slopes = torch.nn.Parameter(torch.rand(2))
        self.attn = ag.compile(ALIBI_CAUSAL)

    def forward(self, q, k, v):
        return self.attn(q, k, v, slopes=self.slopes)


def test_export_holds_the_attngen_op():
    module = _AlibiBlock().to(DEVICE)
    q, k, v = qkv()
    exported = torch.export.export(module, (q, k, v))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "attngen.attention.default" in targets
    torch.testing.assert_close(exported.module()(q, k, v), module(q, k, v), **FP32_CLOSE)


# --------------------------------------------------------------------------- CUDA graphs
@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("variant", [ALIBI_CAUSAL, DOCUMENTS], ids=["alibi", "documents"])
def test_cuda_graphs_training_step(variant):
    """mode="reduce-overhead" captures a training step and replays it with new inputs and
    new runtime tensors (document ids whose tile lists the capture classified on device)."""
    attn = ag.compile(variant)
    name, make = (("slopes", lambda L: torch.rand(2, device=DEVICE)) if variant is ALIBI_CAUSAL
                  else ("document", lambda L: _document_ids(1, L)))

    def loss_of(q, k, v, t):
        return attn(q, k, v, **{name: t}).float().square().sum()

    compiled = torch.compile(loss_of, mode="reduce-overhead", fullgraph=True)
    for i in range(4):  # warm-up, capture, then replays with new tensors
        q, k, v = qkv(L=256, D=64, requires_grad=True, dtype=torch.bfloat16)
        t = make(256)
        if name == "document":  # a new split point every step: new tile lists
            t = torch.where(torch.arange(256, device=DEVICE) < 40 * (i + 1), 0, 1).view(1, -1).int()
        loss = compiled(q, k, v, t)
        loss.backward()
        q2 = q.detach().clone().requires_grad_()
        ref = loss_of(q2, k.detach(), v.detach(), t)
        ref.backward()
        torch.testing.assert_close(loss.detach(), ref.detach(), rtol=2e-2, atol=1e-1)
        torch.testing.assert_close(q.grad.float(), q2.grad.float(), rtol=5e-2, atol=5e-2)


# --------------------------------------------------------------------------- attngen.nn
def test_modules_trace_without_graph_breaks():
    """attngen.nn's modules under torch.compile(fullgraph=True): one graph each, and the
    parameters' gradients (learned sinks included) equal eager ones."""
    import attngen.nn as agnn

    torch.manual_seed(0)
    modules = [
        (agnn.Attention(64, 4, num_kv_heads=2, variant=SINKS), torch.randn(2, 40, 64, device=DEVICE)),
        (agnn.NeighborhoodAttention2D(64, 4, kernel_size=3, dilation=2), torch.randn(1, 6, 8, 64, device=DEVICE)),
    ]
    for module, x in modules:
        module = module.to(DEVICE)
        assert torch._dynamo.explain(module)(x).graph_break_count == 0
        expected = torch.autograd.grad(module(x).square().sum(), list(module.parameters()))
        got = torch.autograd.grad(torch.compile(module, fullgraph=True, backend="aot_eager")(x).square().sum(),
                                  list(module.parameters()))
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, **FP32_CLOSE)
