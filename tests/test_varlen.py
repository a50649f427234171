"""Variable-length batches (ag.varlen_attention) against ag.reference run on each sequence
alone: masks with and without closed-form plans, score_mods reading b and kv_idx, sinks,
sigmoid, GQA, empty sequences and sequences without keys, unequal q/k lengths, gradients of
q, k, v, lse and runtime tensors, torch.compile, and bad input."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import DEVICE, FP32_CLOSE, ON_GPU, rel_l2, tolerance

import attngen as ag
from attngen.runtime import varlen_checks
from attngen.varlen import varlen_attention, varlen_kernel

H, HKV, D = 2, 1, 16                      # GQA: two query heads share one KV head
LENS_Q = [13, 0, 40, 1, 29]               # an empty sequence, a one-token one
LENS_K = [20, 4, 31, 0, 29]               # Lk > Lq, Lk < Lq, a sequence with queries and no keys
GRAD_TOL = 1e-2 if ON_GPU else 1e-4       # relative L2 of gradients (the GPU's fp32 dots are tf32)


def offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=DEVICE)


def packed(total: int, heads: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(total, heads, D, device=DEVICE).to(dtype)


def reference_varlen(variant, q, k, v, lens_q, lens_k, per_sequence=(), **tensors):
    """(out (total_q, Hq, Dv), lse (Hq, total_q)) in float64: ag.reference on each sequence alone;
    tensors named in ``per_sequence`` are (B, ...) and sliced to the sequence's row [s:s+1]."""
    ref = ag.reference(variant)
    softmax = isinstance(variant.norm, ag.Softmax)
    outs, lses = [], []
    a = c = 0
    for s, (lq, lk) in enumerate(zip(lens_q, lens_k)):
        own = {n: (t[s:s + 1] if n in per_sequence else t) for n, t in tensors.items()}
        if "document_ids" in own:
            own["document_ids"] = own["document_ids"][:, :lq]
        if lq and lk:
            args = [x[lo:lo + n].permute(1, 0, 2)[None].double() for x, lo, n in ((q, a, lq), (k, c, lk), (v, c, lk))]
            if softmax:
                o, lse = ref(*args, return_lse=True, **own)
                lses.append(lse[0])
            else:
                o = ref(*args, **own)
            outs.append(o[0].permute(1, 0, 2))
        elif lq:  # no keys: out 0; lse -inf, or the sink's logit alone
            outs.append(torch.zeros(lq, q.shape[1], v.shape[2], dtype=torch.float64, device=q.device))
            sinks = tensors.get("sinks")
            lses.append(torch.full((q.shape[1], lq), -math.inf, dtype=torch.float64, device=q.device) if sinks is None
                        else sinks.double()[:, None].expand(-1, lq))
        a, c = a + lq, c + lk
    return torch.cat(outs), (torch.cat(lses, 1) if softmax else None)


@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


@ag.score_mod
def key_bias(score, b, h, q_idx, kv_idx, kv_table):      # b and kv_idx index a (B, max_seqlen_k) table
    return score + kv_table[b, kv_idx]


@ag.mask_mod
def prefix_lm(b, h, q_idx, kv_idx, prefix):             # per-sequence prefix length: b is the sequence
    return (kv_idx <= q_idx) | (kv_idx < prefix[b])


def _tensors(name: str, lens_q, lens_k) -> tuple[dict, tuple]:
    batch, longest = len(lens_q), max(lens_q + lens_k)
    if name == "alibi":
        return {"slopes": torch.rand(H, device=DEVICE)}, ()
    if name == "key_bias":
        return {"kv_table": torch.randn(batch, longest, device=DEVICE)}, ("kv_table",)
    if name == "prefix_lm":
        return {"prefix": torch.tensor([5, 0, 17, 1, 40], device=DEVICE)}, ("prefix",)
    if name == "document":
        ids = torch.sort(torch.randint(0, 3, (batch, longest), device=DEVICE), dim=1).values
        return {"document_ids": ids}, ("document_ids",)
    if name == "sinks":
        return {"sinks": torch.randn(H, device=DEVICE)}, ()
    return {}, ()


CASES = {  # id: (variant, tensors, cross-attention lengths, dtype, closed-form exact plan)
    "causal_fp16": (ag.Variant(mask=ag.causal()), None, False, torch.float16, True),
    "causal_bf16": (ag.Variant(mask=ag.causal()), None, True, torch.bfloat16, True),  # GPU only (interpreter dots)
    "causal_bottom_right": (ag.Variant(mask=ag.causal(bottom_right=True)), None, True, torch.float32, True),
    "window": (ag.Variant(mask=ag.sliding_window(4, 2)), None, False, torch.float32, True),
    "dense_cross": (ag.Variant(), None, True, torch.float32, True),
    "alibi_causal": (ag.Variant(score=alibi, mask=ag.causal()), "alibi", False, torch.float32, True),
    "key_bias": (ag.Variant(score=key_bias), "key_bias", True, torch.float32, True),
    "document_causal": (ag.Variant(mask=ag.document() & ag.causal()), "document", False, torch.float32, False),
    "prefix_lm": (ag.Variant(mask=prefix_lm), "prefix_lm", False, torch.float32, False),
    "sinks_window": (ag.Variant(mask=ag.sliding_window(6), norm=ag.softmax(sink=True)), "sinks", True,
                     torch.float32, True),
    "sigmoid": (ag.Variant(mask=ag.causal(), norm=ag.sigmoid()), None, True, torch.float32, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_each_sequence_alone(case):
    variant, tensor_kind, cross, dtype, exact = CASES[case]
    if dtype == torch.bfloat16 and not ON_GPU:
        pytest.skip("the Triton interpreter computes bf16 dots wrongly (DESIGN.md)")
    lens_k = LENS_K if cross else LENS_Q
    tensors, per_sequence = _tensors(tensor_kind, LENS_Q, lens_k)
    q, k, v = packed(sum(LENS_Q), H, dtype), packed(sum(lens_k), HKV, dtype), packed(sum(lens_k), HKV, dtype)
    cu_q, cu_k = offsets(LENS_Q), offsets(lens_k)
    attn = ag.compile(variant)
    softmax = isinstance(variant.norm, ag.Softmax)
    result = varlen_attention(attn, q, k, v, cu_q, cu_k, max(LENS_Q), max(lens_k), return_lse=softmax, **tensors)
    out, lse = result if softmax else (result, None)
    ref, ref_lse = reference_varlen(variant, q, k, v, LENS_Q, lens_k, per_sequence, **tensors)
    assert out.shape == (sum(LENS_Q), H, D) and out.dtype == dtype and out.is_contiguous()
    assert rel_l2(out, ref) <= tolerance(dtype), case
    if softmax:
        assert lse.shape == (H, sum(LENS_Q)) and lse.dtype == torch.float32
        assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
        finite = ~torch.isneginf(ref_lse)
        torch.testing.assert_close(lse[finite].double(), ref_lse[finite], rtol=tolerance(dtype), atol=tolerance(dtype))
    kernel = varlen_kernel(attn)
    assert kernel.rewrite.exact == exact
    assert kernel._tiles.builds == 0, "varlen plans come from cu_seqlens, never from the generic classifier"


def test_small_tiles_walk_full_and_partial_runs():
    """16 x 16 tiles: many tiles per sequence, full ones inside, partial ones on the diagonal and
    across sequence boundaries (CPU configs are otherwise one or two tiles)."""
    variant = ag.Variant(mask=ag.causal())
    q, k, v = packed(sum(LENS_Q), H), packed(sum(LENS_Q), HKV), packed(sum(LENS_Q), HKV)
    cu = offsets(LENS_Q)
    out = varlen_attention(variant, q, k, v, cu, cu, 40, 40, config=ag.KernelConfig(16, 16, 4, 1))
    ref, _ = reference_varlen(variant, q, k, v, LENS_Q, LENS_Q)
    assert rel_l2(out, ref) <= tolerance(torch.float32)


GRAD_CASES = {
    "alibi_causal": (ag.Variant(score=alibi, mask=ag.causal()), "alibi", False),
    "sinks_window_cross": (ag.Variant(mask=ag.sliding_window(6), norm=ag.softmax(sink=True)), "sinks", True),
    "sigmoid_cross": (ag.Variant(mask=ag.causal(bottom_right=True), norm=ag.sigmoid()), None, True),
}


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradients_match_each_sequence_alone(case):
    """Gradients of q, k, v, of the returned lse (softmax) and of the runtime tensors."""
    variant, tensor_kind, cross = GRAD_CASES[case]
    lens_k = LENS_K if cross else LENS_Q
    tensors, per_sequence = _tensors(tensor_kind, LENS_Q, lens_k)
    q, k, v = packed(sum(LENS_Q), H), packed(sum(lens_k), HKV), packed(sum(lens_k), HKV)
    leaves = [q, k, v, *tensors.values()]
    for t in leaves:
        t.requires_grad_()
    softmax = isinstance(variant.norm, ag.Softmax)
    dout = torch.randn(sum(LENS_Q), H, D, device=DEVICE)
    dlse = torch.randn(H, sum(LENS_Q), device=DEVICE)

    def loss(out, lse):
        total = (out * dout).sum()
        if lse is not None:  # rows without keys have lse -inf (or the sink): leave them out
            total = total + torch.where(torch.isfinite(lse), lse * dlse, 0.0).sum()
        return total

    result = varlen_attention(variant, q, k, v, offsets(LENS_Q), offsets(lens_k), 40, 40, return_lse=softmax, **tensors)
    got = torch.autograd.grad(loss(*(result if softmax else (result, None))), leaves)
    doubles = [t.detach().double().requires_grad_() for t in leaves]
    ref = reference_varlen(variant, *doubles[:3], LENS_Q, lens_k, per_sequence,
                           **dict(zip(tensors, doubles[3:])))
    expected = torch.autograd.grad(loss(*ref), doubles)
    for name, g, e in zip(["q", "k", "v", *tensors], got, expected):
        assert rel_l2(g, e) <= GRAD_TOL, f"{case}: gradient of {name}"
    if case == "alibi_causal":  # slopes' gradient without atomics: recomputed in torch on the packed variant
        again = varlen_attention(variant, q, k, v, offsets(LENS_Q), offsets(lens_k), 40, 40, return_lse=True,
                                 deterministic=True, **tensors)
        (slopes_grad,) = torch.autograd.grad(loss(*again), [tensors["slopes"]])
        assert rel_l2(slopes_grad, expected[3]) <= GRAD_TOL


def test_traced_fullgraph_forward_and_backward():
    attn = ag.compile(ag.Variant(score=alibi, mask=ag.causal()))
    cu = offsets(LENS_Q)
    q, k, v = (packed(sum(LENS_Q), h).requires_grad_() for h in (H, HKV, HKV))
    slopes = torch.rand(H, device=DEVICE, requires_grad=True)

    def layer(q, k, v, cu, slopes):
        out, lse = varlen_attention(attn, q, k, v, cu, cu, 40, 40, slopes=slopes, return_lse=True)
        return (out * out).sum() + torch.where(torch.isfinite(lse), lse, 0.0).sum()

    assert torch._dynamo.explain(layer)(q, k, v, cu, slopes).graph_break_count == 0
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    traced = torch.autograd.grad(compiled(q, k, v, cu, slopes), (q, k, v, slopes))
    eager = torch.autograd.grad(layer(q, k, v, cu, slopes), (q, k, v, slopes))
    for a, b in zip(traced, eager):
        torch.testing.assert_close(a, b, **FP32_CLOSE)


def test_offsets_are_checked_once_per_batch(monkeypatch):
    calls = []
    original = varlen_checks.check_cu_seqlens_values
    monkeypatch.setattr("attngen.runtime.varlen.check_cu_seqlens_values",
                        lambda *args: calls.append(1) or original(*args))
    attn = ag.compile(ag.Variant(mask=ag.causal()))
    cu = offsets(LENS_Q)
    q, k, v = packed(sum(LENS_Q), H), packed(sum(LENS_Q), HKV), packed(sum(LENS_Q), HKV)
    varlen_attention(attn, q, k, v, cu, cu, 40, 40)
    varlen_attention(attn, q, k, v, cu, cu, 40, 40)          # the same tensors: checked already
    assert len(calls) == 1
    varlen_attention(attn, q, k, v, cu, cu, 40, 40, check=False)
    assert len(calls) == 1
    cu[0] = 0                                                  # an in-place write: checked again
    varlen_attention(attn, q, k, v, cu, cu, 40, 40)
    assert len(calls) == 2


def test_bad_input_names_the_argument():
    attn = ag.compile(ag.Variant(mask=ag.causal()))
    cu = offsets(LENS_Q)
    total = sum(LENS_Q)
    q, k, v = packed(total, H), packed(total, HKV), packed(total, HKV)

    def call(**changes):
        args = dict(q=q, k=k, v=v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=40, max_seqlen_k=40)
        args.update(changes)
        return varlen_attention(attn, **args)

    bad = [
        (TypeError, "cu_seqlens_q must be int32", dict(cu_seqlens_q=cu.long())),
        (ValueError, r"cu_seqlens_k must have shape \(B \+ 1,\)", dict(cu_seqlens_k=cu[None])),
        (ValueError, "both are", dict(cu_seqlens_k=cu[:-1])),
        (ValueError, "cu_seqlens_q must start at 0", dict(cu_seqlens_q=cu + 1)),
        (ValueError, "cu_seqlens_k must be non-decreasing", dict(cu_seqlens_k=offsets([13, -8, 48, 1, 29]))),
        (ValueError, "cu_seqlens_q must end at the number of packed tokens", dict(cu_seqlens_q=cu.clamp(max=50))),
        (ValueError, r"max_seqlen_k \(39\) is smaller", dict(max_seqlen_k=39)),
        (TypeError, "max_seqlen_q must be an int", dict(max_seqlen_q=40.0)),
        (ValueError, "q must be 3-D", dict(q=q[None])),
        (ValueError, "v has 82 tokens", dict(v=v[1:])),
        (TypeError, "q, k and v must share a dtype", dict(k=k.half())),
        (ValueError, "head count", dict(q=packed(total, 3), k=packed(total, 2), v=packed(total, 2))),
        (TypeError, "unexpected keyword argument", dict(slopes=torch.ones(H))),
    ]
    for error, message, changes in bad:
        with pytest.raises(error, match=message):
            call(**changes)
    with pytest.raises(ValueError, match="document_ids must have shape"):
        varlen_attention(ag.Variant(mask=ag.document()), q, k, v, cu, cu, 40, 40,
                         document_ids=torch.zeros(len(LENS_Q), 30, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ag.UnsupportedVariant, match="neighborhood"):
        varlen_attention(ag.Variant(mask=ag.neighborhood(3)), q, k, v, cu, cu, 40, 40)
    with pytest.raises(ag.UnsupportedVariant, match="linear attention has no varlen path"):
        varlen_attention(ag.Variant(mask=ag.causal(), norm=ag.linear()), q, k, v, cu, cu, 40, 40)


def test_batches_without_tokens_or_keys():
    attn = ag.compile(ag.Variant(mask=ag.causal()))
    empty = offsets([0, 0])
    q0 = packed(0, H)
    out, lse = varlen_attention(attn, q0, packed(0, HKV), packed(0, HKV), empty, empty, 0, 0, return_lse=True)
    assert out.shape == (0, H, D) and lse.shape == (H, 0)
    q = packed(5, H)
    out, lse = varlen_attention(attn, q, packed(0, HKV), packed(0, HKV), offsets([2, 3]), empty, 3, 0,
                                return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


def test_captured_tensors_are_each_variants_own():
    """Two variants that differ only in the tensor they capture share one packed kernel; each
    call reads its own variant's tensor (at call time, so in-place updates are seen)."""
    def biased(table):
        @ag.score_mod
        def bias(score, b, h, q_idx, kv_idx):
            return score + table[h]
        return ag.Variant(score=bias, mask=ag.causal())

    first, second = torch.zeros(H, device=DEVICE), torch.full((H,), 3.0, device=DEVICE)
    cu = offsets(LENS_Q)
    q, k, v = packed(sum(LENS_Q), H), packed(sum(LENS_Q), HKV), packed(sum(LENS_Q), HKV)
    a, b = ag.compile(biased(first)), ag.compile(biased(second))
    assert a.key == b.key
    for attn, table in ((a, first), (b, second)):
        _, lse = varlen_attention(attn, q, k, v, cu, cu, 40, 40, return_lse=True)
        _, plain = varlen_attention(ag.Variant(mask=ag.causal()), q, k, v, cu, cu, 40, 40, return_lse=True)
        finite = torch.isfinite(plain)
        torch.testing.assert_close(lse[finite], (plain + table[:, None].expand_as(plain))[finite], **FP32_CLOSE)


def test_opcheck_varlen_attention():
    """Schema, fake implementation (packed shapes and strides), autograd registration and AOT
    dispatch of attngen::varlen_attention."""
    kernel = varlen_kernel(ag.Variant(score=alibi, mask=ag.causal()))
    cu = offsets(LENS_Q)
    q, k, v = (packed(sum(LENS_Q), h).requires_grad_() for h in (H, HKV, HKV))
    slopes = torch.rand(H, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.attngen.varlen_attention.default,
                          (kernel.key, q, k, v, cu, cu, [slopes], None, "", True, True, False, True, 40, 40))


def test_views_of_one_packed_qkv_tensor():
    """q, k, v as views of one (total, 3, H, D) tensor (FlashAttention's qkvpacked layout): read
    in place; the output is contiguous and the gradients equal those of contiguous copies."""
    cu = offsets(LENS_Q)
    qkv = packed(sum(LENS_Q), 3 * H).view(-1, 3, H, D).requires_grad_()
    copies = [qkv[:, i].detach().contiguous().requires_grad_() for i in range(3)]
    variant = ag.Variant(mask=ag.sliding_window(9))
    out = varlen_attention(variant, qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, 40, 40)
    expected = varlen_attention(variant, *copies, cu, cu, 40, 40)
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, **FP32_CLOSE)
    dout = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, dout)
    for i, g in enumerate(torch.autograd.grad(expected, copies, dout)):
        torch.testing.assert_close(grad[:, i], g, **FP32_CLOSE)
