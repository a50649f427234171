"""Decoding inside graphs: the ops attngen::decode and attngen::paged_append under opcheck,
a decode step (append + attend) under torch.compile(fullgraph=True) with no graph break,
and, on the GPU, a CUDA graph that captures a step and replays it with new lengths."""
from __future__ import annotations

import pytest
import torch
from decode_helpers import Case, assert_matches, expected, make_case, to_pages
from helpers import DEVICE, FP32_CLOSE, ON_GPU
from test_decode import VARIANTS, _slopes
from test_graphs import BACKENDS, _fresh_dynamo  # noqa: F401 - the autouse fixture applies here too

import attngen as ag


def test_opcheck_decode():
    """Schema, fake implementation and dispatch of attngen::decode over pages, with a
    runtime tensor and the lse."""
    attn = ag.compile(VARIANTS["alibi_causal"][0])
    case = make_case(B=2, Hq=4, Hkv=2, L=40, D=16, lens=[40, 23], Lq=2)
    k_pages, v_pages, table = to_pages(case.k, case.v, case.lens, 8)
    torch.library.opcheck(torch.ops.attngen.decode.default,
                          (attn.key, case.q, k_pages, v_pages, case.seq_lens, table, [_slopes(4)], None, "", 2,
                           True, True))


def test_opcheck_paged_append():
    """The op declares the caches it mutates (opcheck compares them before and after)."""
    case = make_case(B=2, Hq=2, Hkv=2, L=24, D=16, lens=[10, 3])
    k_pages, v_pages, table = to_pages(case.k, case.v, case.lens, 8)
    new = torch.randn(2, 2, 2, 16, device=DEVICE)
    torch.library.opcheck(torch.ops.attngen.paged_append.default,
                          (k_pages, v_pages, table, case.seq_lens, new, new.clone(), True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_step_compiles_fullgraph(backend):
    """One decoding step of a model: append the new token's K/V to the pages, then attend
    (ALiBi, causal, GQA), traced as one graph; the same results as eager steps."""
    attn = ag.compile(VARIANTS["alibi_causal"][0])
    slopes = _slopes(4)
    case = make_case(B=2, Hq=4, Hkv=2, L=48, D=16, lens=[40, 20], Lq=1)

    def step(q, k_new, v_new, k_cache, v_cache, table, seq_lens):
        seq_lens = ag.paged_append(k_cache, v_cache, table, seq_lens, k_new, v_new)
        return attn.decode(q, k_cache, v_cache, seq_lens, table, slopes=slopes), seq_lens

    lens = torch.tensor([39, 19], dtype=torch.int32, device=DEVICE)  # before the new token
    k_new = torch.stack([case.k[b, :, n] for b, n in enumerate(lens.tolist())])[:, :, None]
    v_new = torch.stack([case.v[b, :, n] for b, n in enumerate(lens.tolist())])[:, :, None]
    pages = to_pages(case.k, case.v, case.lens, 8)
    eager_pages = [p.clone() for p in pages]
    explained = torch._dynamo.explain(step)(case.q, k_new, v_new, *[p.clone() for p in pages], lens)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    out, grown = torch.compile(step, fullgraph=True, backend=backend)(case.q, k_new, v_new, *pages, lens)
    ref, ref_grown = step(case.q, k_new, v_new, *eager_pages, lens)
    assert torch.equal(grown, ref_grown) and torch.equal(pages[0], eager_pages[0])
    torch.testing.assert_close(out, ref, **FP32_CLOSE)
    assert_matches(out, None, expected(attn.variant, case, slopes=slopes)[0], None, torch.float32)


def test_decode_with_lse_compiles():
    """return_lse through the op; a contiguous cache without seq_lens."""
    attn = ag.compile(VARIANTS["sinks_window"][0])
    sinks = torch.randn(4, device=DEVICE)
    case = make_case(B=1, Hq=4, Hkv=2, L=32, D=16, Lq=3)

    def step(q, k, v):
        return attn.decode(q, k, v, return_lse=True, sinks=sinks)

    out, lse = torch.compile(step, fullgraph=True, backend="aot_eager")(case.q, case.k, case.v)
    assert_matches(out, lse, *expected(attn.variant, case, sinks=sinks), torch.float32)


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
def test_cuda_graph_replays_decode_steps():
    """A decode step captured in a CUDA graph (check=True: the device-reading checks are
    skipped during the capture) replays with new lengths and new cache contents."""
    attn = ag.compile(VARIANTS["causal"][0])
    case = make_case(B=2, Hq=8, Hkv=2, L=512, D=64, lens=[300, 100], Lq=1, dtype=torch.bfloat16)
    k_pages, v_pages, table = to_pages(case.k, case.v, [512, 512], 16)
    lens = case.seq_lens.clone()
    q = case.q.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compiles the kernels) outside the capture
        attn.decode(q, k_pages, v_pages, lens, table)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attn.decode(q, k_pages, v_pages, lens, table)
    for new_lens in ([300, 100], [512, 1], [77, 0]):
        lens.copy_(torch.tensor(new_lens, dtype=torch.int32))
        step = Case(case.q_full, case.k, case.v, new_lens, 1)
        q.copy_(step.q)
        graph.replay()
        assert_matches(out, None, expected(attn.variant, step)[0], None, torch.bfloat16)
