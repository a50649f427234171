"""``ag.flex_attention`` against PyTorch's FlexAttention on the same mods and block masks:
eager and under torch.compile, compiled once per mod, and its argument checks."""
from __future__ import annotations

import warnings

import pytest
import torch
from helpers import DEVICE, FP32_CLOSE
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.attention import flex_attention as flex

import attngen as ag
import attngen.flex as ag_flex

B, H, L, D = 1, 2, 128, 32
# gradients of a squared loss: fp32 kernels against the float64 reference, summed over 128 keys
GRAD_CLOSE = {k: max(v, 1e-4) for k, v in FP32_CLOSE.items()}


@pytest.fixture(autouse=True)
def _quiet():
    torch._dynamo.reset()
    with warnings.catch_warnings():  # torch's eager FlexAttention warns that it is unfused
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        warnings.filterwarnings("ignore", message="return_lse is deprecated", category=FutureWarning)
        yield
    torch._dynamo.reset()


def qkv(Hq=H, Hkv=H, requires_grad=False):
    return tuple(torch.randn(B, h, L, D, device=DEVICE, requires_grad=requires_grad) for h in (Hq, Hkv, Hkv))


def block_mask(mask_mod, Hm=None):
    return flex.create_block_mask(mask_mod, None, Hm, L, L, device=DEVICE, BLOCK_SIZE=32)


def torch_flex(q, k, v, **kwargs):
    """PyTorch's FlexAttention, forward only (it has no backward on the CPU)."""
    return flex.flex_attention(q.detach(), k.detach(), v.detach(), **kwargs)


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def sliding_window(size):
    def window(b, h, q_idx, kv_idx):
        return q_idx - kv_idx <= size
    return window


def make_documents(doc):
    def documents(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]
    return documents


SLOPES = torch.rand(H, device=DEVICE)


def alibi(score, b, h, q_idx, kv_idx):
    return score + SLOPES[h] * (kv_idx - q_idx) * 0.1


def soft_cap(score, b, h, q_idx, kv_idx):
    return 20 * torch.tanh(score / 20)


CASES = {
    "causal": (None, lambda: causal),
    "alibi_causal": (alibi, lambda: causal),
    "softcap_window": (soft_cap, lambda: flex.and_masks(causal, sliding_window(24))),
    "documents_or_window": (None, lambda: flex.or_masks(make_documents(torch.arange(L, device=DEVICE) // 40),
                                                         sliding_window(4))),
    "score_only": (alibi, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_flex_attention(case):
    score_mod, make_mask = CASES[case]
    bm = block_mask(make_mask()) if make_mask is not None else None
    q, k, v = qkv()
    out, lse = ag.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, return_lse=True)
    ref_out, ref_lse = torch_flex(q, k, v, score_mod=score_mod, block_mask=bm, return_lse=True)
    torch.testing.assert_close(out, ref_out, **FP32_CLOSE)
    torch.testing.assert_close(lse, ref_lse, **FP32_CLOSE)


def test_gqa_scale_and_gradients():
    """Forward against FlexAttention; gradients against ag.reference of the same mods
    (FlexAttention has no backward on the CPU)."""
    q, k, v = qkv(Hq=4, Hkv=2, requires_grad=True)
    bm = block_mask(causal)
    out = ag.flex_attention(q, k, v, score_mod=soft_cap, block_mask=bm, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(out, torch_flex(q, k, v, score_mod=soft_cap, block_mask=bm, scale=0.3,
                                               enable_gqa=True), **FP32_CLOSE)
    ref = ag.reference(ag.Variant(score=soft_cap, mask=causal))(q, k, v, scale=0.3)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r.to(g.dtype), **GRAD_CLOSE)


def test_compiles_once_per_mod_and_reads_new_closure_tensors():
    """A mask_mod built per batch around new document ids compiles once; each call reads
    its own closure's tensor."""
    q, k, v = qkv()
    before = len(ag_flex._ENTRIES)
    for split in (30, 70, 100):
        doc = (torch.arange(L, device=DEVICE) >= split).int()
        bm = block_mask(make_documents(doc))
        torch.testing.assert_close(ag.flex_attention(q, k, v, block_mask=bm), torch_flex(q, k, v, block_mask=bm),
                                   **FP32_CLOSE)
    assert len(ag_flex._ENTRIES) == before + 1


def test_closure_constants_key_the_cache():
    """Windows of different sizes are different kernels (the size is baked into the trace)."""
    q, k, v = qkv()
    for size in (8, 40):
        bm = block_mask(sliding_window(size))
        torch.testing.assert_close(ag.flex_attention(q, k, v, block_mask=bm), torch_flex(q, k, v, block_mask=bm),
                                   **FP32_CLOSE)


def test_noop_and_hand_made_block_masks():
    q, k, v = qkv()
    full = block_mask(flex.noop_mask)
    torch.testing.assert_close(ag.flex_attention(q, k, v, block_mask=full), torch_flex(q, k, v), **FP32_CLOSE)
    # block lists with no mask_mod: the listed blocks are the mask
    num_blocks = torch.tensor([[[1, 2, 1, 3]]], device=DEVICE, dtype=torch.int32).expand(B, H, 4).contiguous()
    indices = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3], [2, 0, 1, 3], [3, 1, 0, 2]], device=DEVICE,
                           dtype=torch.int32).expand(B, H, 4, 4).contiguous()
    lists = flex.BlockMask.from_kv_blocks(num_blocks, indices, BLOCK_SIZE=32, seq_lengths=(L, L))
    # FlexAttention's kernels read only the listed blocks (its unfused CPU path ignores the
    # lists, so the expected output is SDPA with the block matrix as its mask)
    listed = lists.to_dense().bool().repeat_interleave(32, 2).repeat_interleave(32, 3)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=listed)
    torch.testing.assert_close(ag.flex_attention(q, k, v, block_mask=lists), expected, **FP32_CLOSE)


def test_under_torch_compile_without_graph_break_or_recompile():
    """Block masks made outside the compiled function, one per batch: one graph, compiled
    once, with gradients."""
    counter = CompileCounterWithBackend("aot_eager")

    def attend(q, k, v, bm):
        return ag.flex_attention(q, k, v, score_mod=alibi, block_mask=bm)

    compiled = torch.compile(attend, fullgraph=True, backend=counter)
    for split in (40, 90):
        bm = block_mask(flex.and_masks(causal, make_documents((torch.arange(L, device=DEVICE) >= split).int())))
        q, k, v = qkv(requires_grad=True)
        out = compiled(q, k, v, bm)
        eager = ag.flex_attention(q, k, v, score_mod=alibi, block_mask=bm)
        torch.testing.assert_close(out, torch_flex(q, k, v, score_mod=alibi, block_mask=bm), **FP32_CLOSE)
        g, r = (torch.autograd.grad(x.sum(), q)[0] for x in (out, eager))
        torch.testing.assert_close(g, r, **FP32_CLOSE)
    assert counter.frame_count == 1
    assert torch._dynamo.explain(attend)(q, k, v, bm).graph_break_count == 0


@pytest.mark.xfail(torch.__version__ < "2.13", strict=False,
                   reason="Dynamo before torch 2.13 hands attngen the nested function's closure, whose cells it then "
                          "fails to turn into constants (InternalTorchDynamoError: ClosureConversionError); "
                          "docs/limits.md")
def test_mod_created_inside_the_compiled_function():
    """A mod closing over a graph value has no Python object while compiling: the call
    runs outside the graph (right answer), and fullgraph=True names the reason."""
    bias = torch.randn(H, device=DEVICE)

    def attend(q, k, v, bias):
        def head_bias(score, b, h, q_idx, kv_idx):
            return score + bias[h]
        return ag.flex_attention(q, k, v, score_mod=head_bias)

    q, k, v = qkv()
    out = torch.compile(attend, backend="aot_eager")(q, k, v, bias)
    torch.testing.assert_close(out, attend(q, k, v, bias), **FP32_CLOSE)
    torch._dynamo.reset()  # else the graph-broken compilation above is reused
    with pytest.raises(Exception, match="attngen.flex_attention: this call needs its mods as Python objects"):
        torch.compile(attend, fullgraph=True, backend="aot_eager")(q, k, v, bias)


@pytest.mark.parametrize("bad,error,match", [
    (dict(block_mask="causal"), TypeError, "block_mask must be a torch.nn.attention.flex_attention.BlockMask"),
    (dict(enable_gqa="yes"), TypeError, "enable_gqa must be a bool"),
    (dict(score_mod=3), TypeError, "score_mod must be a function"),
])
def test_bad_arguments(bad, error, match):
    q, k, v = qkv()
    with pytest.raises(error, match=match):
        ag.flex_attention(q, k, v, **bad)


def test_shape_checks():
    q, k, v = qkv(Hq=4, Hkv=2)
    with pytest.raises(ValueError, match="pass enable_gqa=True"):
        ag.flex_attention(q, k, v)
    q, k, v = qkv()
    short = flex.create_block_mask(causal, None, None, 64, 64, device=DEVICE, BLOCK_SIZE=32)
    with pytest.raises(ValueError, match=r"created for \(Q_LEN, KV_LEN\) = \(64, 64\)"):
        ag.flex_attention(q, k, v, block_mask=short)
    wide = flex.create_block_mask(causal, 3, None, L, L, device=DEVICE, BLOCK_SIZE=32)
    with pytest.raises(ValueError, match="does not broadcast"):
        ag.flex_attention(q, k, v, block_mask=wide)
    with pytest.raises(ValueError, match=r"query must be 4-D"):
        ag.flex_attention(q[0], k, v)
