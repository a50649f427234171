"""Bad inputs raise TypeError/ValueError naming the argument, before anything runs;
no_grad and detached inputs skip the backward."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, ON_GPU, doc_ids, make_qkv

import attngen as ag


def _bias(score, b, h, q_idx, kv_idx, bias):
    return score + bias[h]


def _table(score, b, h, q_idx, kv_idx, table):
    return score + table[q_idx, kv_idx]


@pytest.fixture(scope="module")
def plain():
    return ag.compile(ag.Variant(mask=ag.causal()))


@pytest.fixture(scope="module")
def biased():
    return ag.compile(ag.Variant(score=_bias))


@pytest.fixture(scope="module")
def documents():
    return ag.compile(ag.Variant(mask=ag.document()))


def qkv(B=1, Hq=2, Hkv=2, Lq=16, Lkv=16, D=16, Dv=16, dtype=torch.float32):
    return make_qkv(B, Hq, Hkv, Lq, Lkv, D, Dv, dtype)


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- q, k, v
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_wrong_ndim(plain, which):
    q, k, v = qkv()
    args = {"q": q, "k": k, "v": v}
    args[which] = args[which][0]
    _raises(ValueError, rf"^{which} must be 4-D", plain, args["q"], args["k"], args["v"])


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_not_a_tensor(plain, which):
    q, k, v = qkv()
    args = {"q": q, "k": k, "v": v}
    args[which] = args[which].tolist()
    _raises(TypeError, rf"^{which} must be a torch.Tensor", plain, args["q"], args["k"], args["v"])


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_unsupported_dtype(plain, which):
    q, k, v = qkv()
    args = {"q": q, "k": k, "v": v}
    args[which] = args[which].double()
    _raises(TypeError, rf"{which} must be float16, bfloat16 or float32", plain, args["q"], args["k"], args["v"])


def test_dtype_mismatch(plain):
    q, k, v = qkv()
    msg = _raises(TypeError, "share a dtype", plain, q, k.half(), v)
    assert "float16" in msg and "float32" in msg
    _raises(TypeError, "share a dtype", plain, q.half(), k.half(), v)


@pytest.mark.skipif(not ON_GPU, reason="needs a GPU to put tensors on two devices")
def test_device_mismatch(plain):
    q, k, v = qkv()
    _raises(ValueError, "k is on cpu", plain, q, k.cpu(), v)
    _raises(ValueError, "v is on cpu", plain, q, k, v.cpu())


@pytest.mark.skipif(not ON_GPU, reason="needs a GPU to put tensors on two devices")
def test_runtime_tensor_device_mismatch(biased):
    q, k, v = qkv()
    _raises(ValueError, "bias is on cpu", biased, q, k, v, bias=torch.zeros(2))


def test_heads_not_divisible(plain):
    q, k, v = qkv(Hq=3, Hkv=2)
    msg = _raises(ValueError, "head count", plain, q, k, v)
    assert "3" in msg and "2" in msg


def test_more_kv_heads_than_q_heads(plain):
    q, k, v = qkv(Hq=2, Hkv=4)
    _raises(ValueError, "head count", plain, q, k, v)


@pytest.mark.parametrize("D,Dv,name", [(8, 16, "D"), (15, 16, "D"), (16, 8, "Dv"), (264, 16, "D"),
                                        (16, 512, "Dv")])
def test_head_dim_out_of_range(plain, D, Dv, name):
    q, k, v = qkv(D=D, Dv=Dv)
    msg = _raises(ValueError, "head dim", plain, q, k, v)
    assert "16..256" in msg and name in msg


def test_head_dim_mismatch(plain):
    q, _, v = qkv()
    k = torch.randn(1, 2, 16, 32, device=DEVICE)
    _raises(ValueError, "k's head dim", plain, q, k, v)


def test_batch_and_length_mismatch(plain):
    q, k, v = qkv()
    _raises(ValueError, "batch sizes differ", plain, q, torch.cat([k, k]), torch.cat([v, v]))
    _raises(ValueError, "v has 17 positions", plain, q, k, torch.randn(1, 2, 17, 16, device=DEVICE))
    _raises(ValueError, "v has 1 heads", plain, q, k, torch.randn(1, 1, 16, 16, device=DEVICE))


def test_empty_input(plain):
    q, k, v = qkv()
    _raises(ValueError, "^q is empty", plain, q[:, :, :0], k, v)


# --------------------------------------------------------------------------- scale, flags
@pytest.mark.parametrize("scale", ["0.5", torch.tensor(0.5), True, [1.0]])
def test_scale_not_a_number(plain, scale):
    q, k, v = qkv()
    _raises(TypeError, "^scale must be", plain, q, k, v, scale=scale)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_scale_not_finite(plain, scale):
    q, k, v = qkv()
    _raises(ValueError, "^scale must be finite", plain, q, k, v, scale=scale)


def test_return_lse_must_be_bool(plain):
    q, k, v = qkv()
    _raises(TypeError, "return_lse", plain, q, k, v, return_lse=1)


# --------------------------------------------------------------------------- runtime tensors
def test_missing_runtime_tensor(biased):
    q, k, v = qkv()
    _raises(TypeError, "bias", biased, q, k, v)


def test_unexpected_keyword(biased, plain):
    q, k, v = qkv()
    msg = _raises(TypeError, "slopes", biased, q, k, v, bias=torch.zeros(2, device=DEVICE),
                  slopes=torch.zeros(2, device=DEVICE))
    assert "unexpected" in msg
    _raises(TypeError, "document_ids", plain, q, k, v, document_ids=torch.zeros(1, 16, dtype=torch.long))


def test_runtime_tensor_wrong_ndim(biased):
    q, k, v = qkv()
    msg = _raises(ValueError, "^bias must be 1-D", biased, q, k, v, bias=torch.zeros(2, 2, device=DEVICE))
    assert "(2, 2)" in msg


def test_runtime_tensor_not_a_tensor(biased):
    q, k, v = qkv()
    _raises(TypeError, "^bias must be a torch.Tensor", biased, q, k, v, bias=[0.0, 1.0])


def test_runtime_tensor_complex_dtype(biased):
    q, k, v = qkv()
    _raises(TypeError, "^bias has dtype torch.complex64", biased, q, k, v,
            bias=torch.zeros(2, dtype=torch.complex64, device=DEVICE))


def test_two_d_runtime_tensor():
    attn = ag.compile(ag.Variant(score=_table))
    q, k, v = qkv()
    _raises(ValueError, "^table must be 2-D", attn, q, k, v, table=torch.zeros(16, device=DEVICE))


def test_document_ids_shape_and_dtype(documents):
    q, k, v = qkv(B=2)
    _raises(ValueError, r"^document_ids must have shape \(B, L\) = \(2, 16\)", documents, q, k, v,
            document_ids=torch.zeros(2, 15, dtype=torch.long, device=DEVICE))
    _raises(ValueError, r"^document_ids must have shape", documents, q, k, v,
            document_ids=torch.zeros(1, 16, dtype=torch.long, device=DEVICE))
    _raises(ValueError, "^document_ids must be 2-D", documents, q, k, v,
            document_ids=torch.zeros(32, dtype=torch.long, device=DEVICE))
    _raises(TypeError, "^document_ids must be an integer tensor", documents, q, k, v,
            document_ids=torch.zeros(2, 16, device=DEVICE))
    _raises(TypeError, "document_ids", documents, q, k, v)


def test_document_needs_self_attention(documents):
    q, k, v = qkv(B=1, Lq=16, Lkv=24)
    _raises(ValueError, "Lq == Lkv", documents, q, k, v, document_ids=doc_ids(1, 16))


def test_unbound_capture():
    v = ag.loads("attngen 1\ntensor scale_h[1] captured\nscore s = score*scale_h[h]\n")
    q, k, val = qkv()
    _raises(TypeError, "scale_h", ag.compile(v), q, k, val)
    _raises(TypeError, "scale_h", ag.reference(v), q, k, val)


def test_reference_validates_too():
    ref = ag.reference(ag.Variant(score=_bias))
    q, k, v = qkv()
    _raises(TypeError, "bias", ref, q, k, v)
    _raises(ValueError, "^q must be 4-D", ref, q[0], k, v)


def test_nothing_is_written_on_error(biased):
    """Validation happens before any output is allocated or any kernel runs."""
    q, k, v = qkv()
    before = [t.clone() for t in (q, k, v)]
    with pytest.raises(ValueError):
        biased(q, k, v, bias=torch.zeros(3, 3, device=DEVICE))
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), before))


# --------------------------------------------------------------------------- autograd
def test_deterministic_must_be_a_bool(biased):
    q, k, v = qkv()
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        biased(q, k, v, bias=torch.randn(2, device=DEVICE), deterministic="yes")


def test_no_grad_and_detach_work(biased):
    q, k, v = qkv()
    bias = torch.randn(2, device=DEVICE)
    expected = biased(q, k, v, bias=bias)
    qg = q.clone().requires_grad_(True)
    with torch.no_grad():
        out = biased(qg, k, v, bias=bias)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(biased(qg.detach(), k, v, bias=bias), expected, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(biased(q, k, v, bias=bias), expected, rtol=0, atol=0)


def test_checked_layouts_are_remembered_and_bad_ones_still_refused(plain):
    """check_qkv remembers layouts that passed; a layout differing in any checked property
    (dtype, shape, device of one tensor) is checked again and refused."""
    from attngen.runtime import validate

    q, k, v = make_qkv(1, 2, 2, 32, 32, 16, 16, dtype=torch.float32)
    first = validate.check_qkv(q, k, v)
    assert validate.check_qkv(q.clone(), k.clone(), v.clone()) is first  # same layout: the memo
    with pytest.raises(TypeError, match="share a dtype"):
        plain(q, k.half(), v)
    with pytest.raises(ValueError, match="v has 31 positions"):
        plain(q, k, v[:, :, :31])
    with pytest.raises(ValueError, match="must be 4-D"):
        plain(q, k, v[0])
