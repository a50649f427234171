"""Inputs, tolerances and the kernel-vs-oracle comparison that every kernel test uses.

``check(variant, B, Hq, Hkv, Lq, Lkv, D, Dv, dtype, **tensors)`` draws fresh random inputs,
runs the compiled kernel and ``ag.reference`` (float64), and asserts:

- shapes, dtypes and device of ``out`` (B, Hq, Lq, Dv; dtype of q) and ``lse`` (B, Hq, Lq; fp32);
- no NaN or +-inf in ``out``, no NaN or +inf in ``lse``;
- ``lse`` is -inf exactly where the reference's is, and ``out`` is exactly 0 on those rows;
- relative L2 error of ``out`` (||out - ref|| / ||ref||) within the dtype's tolerance;
- finite ``lse`` entries within ``tol * (1 + |ref|)``;
- the inputs were not modified.
"""
from __future__ import annotations

import os

import torch

import attngen as ag

DEVICE = os.environ.get("ATTNGEN_TEST_DEVICE", "cpu")
ON_GPU = DEVICE == "cuda"

if ON_GPU:
    DTYPES = [torch.bfloat16, torch.float16, torch.float32]
else:
    DTYPES = [torch.float32, torch.float16]

# Relative L2 error of the output (and the lse bound), by device and dtype.
_TOLERANCES = {
    ("cpu", torch.float32): 1e-5,
    ("cpu", torch.float16): 2e-3,
    ("cpu", torch.bfloat16): 2e-2,
    ("cuda", torch.float32): 5e-3,  # tl.dot uses tf32
    ("cuda", torch.float16): 5e-3,
    ("cuda", torch.bfloat16): 2e-2,
}


# Element-wise tolerance for float32 results compared with torch.testing.assert_close
# (the GPU's tl.dot rounds fp32 inputs to tf32).
FP32_CLOSE = dict(rtol=1e-2, atol=1e-2) if ON_GPU else dict(rtol=1e-5, atol=1e-5)


def tolerance(dtype: torch.dtype) -> float:
    return _TOLERANCES[(DEVICE, dtype)]


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def examples(n: int) -> int:
    """Hypothesis example count: each example of a compile-and-run test is a new kernel, which
    the interpreter loads in milliseconds but the GPU compiles in seconds."""
    return max(4, n // 6) if ON_GPU else n


def big(cpu: int, cuda: int) -> int:
    """A size: small under the CPU interpreter, larger on the GPU."""
    return cuda if ON_GPU else cpu


# --------------------------------------------------------------------------- inputs
LAYOUTS = ("contiguous", "blhd", "offset", "strided")


def make(shape, dtype, layout: str = "contiguous", device: str | None = None) -> torch.Tensor:
    """A random (B, H, L, D) tensor laid out in memory as ``layout``:

    - ``contiguous``: plain ``torch.randn(B, H, L, D)``;
    - ``blhd``: ``x.view(B, L, H, D).transpose(1, 2)`` of a contiguous (B, L, H, D) buffer;
    - ``offset``: a slice of a larger buffer (non-zero storage offset, padded strides);
    - ``strided``: every other head and every other element of the last dim (stride 2), at a
      storage offset.
    """
    device = device or DEVICE
    B, H, L, D = shape
    if layout == "contiguous":
        x = torch.randn(B, H, L, D, device=device).to(dtype)
    elif layout == "blhd":
        x = torch.randn(B * L * H * D, device=device).to(dtype).view(B, L, H, D).transpose(1, 2)
        assert not x.is_contiguous() or min(H, L) == 1  # (one head or one position: the same memory)
    elif layout == "offset":
        buf = torch.randn(B + 1, H + 1, L + 5, D + 8, device=device).to(dtype)
        x = buf[1:, 1:, 3:3 + L, 5:5 + D]
        assert x.storage_offset() > 0
    elif layout == "strided":
        buf = torch.randn(B, 2 * H, L + 2, 2 * D, device=device).to(dtype)
        x = buf[:, ::2, 1:L + 1, ::2]
        assert x.stride(-1) == 2 and x.storage_offset() > 0
    else:
        raise ValueError(layout)
    assert tuple(x.shape) == (B, H, L, D)
    return x


def make_qkv(B, Hq, Hkv, Lq, Lkv, D, Dv, dtype, layout: str = "contiguous"):
    layouts = (layout,) * 3 if isinstance(layout, str) else tuple(layout)
    q = make((B, Hq, Lq, D), dtype, layouts[0])
    k = make((B, Hkv, Lkv, D), dtype, layouts[1])
    v = make((B, Hkv, Lkv, Dv), dtype, layouts[2])
    return q, k, v


# --------------------------------------------------------------------------- comparison
def _compiled(variant_or_attn) -> ag.CompiledAttention:
    if isinstance(variant_or_attn, ag.CompiledAttention):
        return variant_or_attn
    return ag.compile(variant_or_attn)


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    denom = ref.norm().item()
    return (x - ref).norm().item() / (denom if denom > 0 else 1.0)


def compare(variant_or_attn, q, k, v, *, scale=None, tol: float | None = None, config=None, spatial_shape=None,
            **tensors):
    """Run the compiled kernel (at launch ``config`` when given) and the float64 reference on
    the same inputs and assert they agree (see the module docstring). Returns
    ``(out, lse, ref_out, ref_lse)``. Sigmoid variants have no lse: their rows with every key
    masked are those whose reference output is all zeros, and ``lse`` is None."""
    attn = _compiled(variant_or_attn)
    tol = tolerance(q.dtype) if tol is None else tol
    before = [t.clone() for t in (q, k, v, *tensors.values())]
    extra = {} if spatial_shape is None else {"spatial_shape": spatial_shape}

    if isinstance(attn.variant.norm, ag.Sigmoid):
        out = attn(q, k, v, scale=scale, config=config, **extra, **tensors)
        ref_out = ag.reference(attn.variant)(q, k, v, scale=scale, **extra, **tensors)
        assert out.shape == ref_out.shape and out.dtype == q.dtype and torch.isfinite(out).all()
        err = rel_l2(out, ref_out)
        assert err <= tol, f"out: relative L2 error {err:.3g} > {tol:g}"
        return out, None, ref_out, None
    out, lse = attn(q, k, v, scale=scale, return_lse=True, config=config, **extra, **tensors)
    ref_out, ref_lse = ag.reference(attn.variant)(q, k, v, scale=scale, return_lse=True, **extra, **tensors)

    B, Hq, Lq, _ = q.shape
    Dv = v.shape[-1]
    assert out.shape == (B, Hq, Lq, Dv), out.shape
    assert out.dtype == q.dtype and out.device == q.device
    assert lse.shape == (B, Hq, Lq), lse.shape
    assert lse.dtype == torch.float32 and lse.device == q.device

    assert not torch.isnan(out).any(), f"NaN in out at {torch.isnan(out).nonzero()[:5].tolist()}"
    assert torch.isfinite(out).all(), "inf in out"
    assert not torch.isnan(lse).any(), f"NaN in lse at {torch.isnan(lse).nonzero()[:5].tolist()}"
    assert not torch.isposinf(lse).any(), "+inf in lse"

    empty = torch.isneginf(ref_lse)
    got_empty = torch.isneginf(lse)
    assert torch.equal(got_empty, empty), (
        f"lse is -inf at {int(got_empty.sum())} rows, the reference at {int(empty.sum())}; "
        f"first differences: {(got_empty != empty).nonzero()[:5].tolist()}")
    if empty.any():
        assert (out[empty] == 0).all(), "a query with every key masked must get output exactly 0"

    rows = ~empty
    if rows.any():
        err = rel_l2(out[rows], ref_out[rows])
        assert err <= tol, f"out: relative L2 error {err:.3g} > {tol:g}"
        dl = (lse[rows].double() - ref_lse[rows]).abs()
        bound = tol * (1 + ref_lse[rows].abs())
        worst = (dl - bound).argmax()
        assert (dl <= bound).all(), (f"lse: error {dl[worst].item():.3g} > {bound[worst].item():.3g} "
                                     f"(ref {ref_lse[rows][worst].item():.6g})")

    for t, t0 in zip((q, k, v, *tensors.values()), before):
        assert torch.equal(t, t0), "the kernel modified one of its inputs"
    return out, lse, ref_out, ref_lse


def check(variant_or_attn, B, Hq, Hkv, Lq, Lkv, D, Dv, dtype, *, scale=None, layout="contiguous",
          tol: float | None = None, config=None, **tensors):
    """Fresh random q, k, v of the given sizes; ``compare`` the kernel with the reference."""
    q, k, v = make_qkv(B, Hq, Hkv, Lq, Lkv, D, Dv, dtype, layout)
    return compare(variant_or_attn, q, k, v, scale=scale, tol=tol, config=config, **tensors)


def doc_ids(B: int, L: int, n_docs: int = 4, sorted_: bool = True, device: str | None = None) -> torch.Tensor:
    """(B, L) int64 document ids: sorted (packed sequences) or scattered."""
    device = device or DEVICE
    if sorted_:
        cuts = torch.stack([torch.randperm(L - 1)[: n_docs - 1].sort().values + 1 for _ in range(B)])
        ids = torch.zeros(B, L, dtype=torch.int64)
        for b in range(B):
            for c in cuts[b]:
                ids[b, c:] += 1
    else:
        ids = torch.randint(0, n_docs, (B, L))
    return ids.to(device)


def eager(q, k, v, score_fn=None, mask_fn=None, scale=None, **tensors):
    """Attention computed directly from the user's Python functions on real tensors (float64),
    the way FlexAttention's eager path does: an oracle that shares nothing with attngen's
    tracer, IR or ``ag.reference``. ``mask_fn`` is a function or a dense bool tensor that
    broadcasts to (B, Hq, Lq, Lkv). Returns (out, lse) with out = 0, lse = -inf on empty rows."""
    B, Hq, Lq, D = q.shape
    Hkv, Lkv = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    kd = k.double().repeat_interleave(Hq // Hkv, dim=1)
    vd = v.double().repeat_interleave(Hq // Hkv, dim=1)
    s = scale * (q.double() @ kd.transpose(-1, -2))
    dev = q.device
    b = torch.arange(B, device=dev).view(-1, 1, 1, 1)
    h = torch.arange(Hq, device=dev).view(1, -1, 1, 1)
    i = torch.arange(Lq, device=dev).view(1, 1, -1, 1)
    j = torch.arange(Lkv, device=dev).view(1, 1, 1, -1)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch.tan(b) on an int tensor: float64, not float32
    try:
        if score_fn is not None:
            s = torch.as_tensor(score_fn(s, b, h, i, j, **tensors), dtype=torch.float64, device=dev)
            s = s.expand(B, Hq, Lq, Lkv)
        if mask_fn is not None:
            keep = mask_fn if isinstance(mask_fn, torch.Tensor) else mask_fn(b, h, i, j, **tensors)
            s = torch.where(torch.as_tensor(keep, device=dev), s, float("-inf"))
    finally:
        torch.set_default_dtype(default)
    lse = torch.logsumexp(s, -1)
    p = torch.where(torch.isneginf(lse)[..., None], 0.0, torch.exp(s - lse[..., None]))
    return p @ vd, lse


def assert_matches_eager(out, lse, expected_out, expected_lse, tol):
    empty = torch.isneginf(expected_lse)
    assert torch.equal(torch.isneginf(lse), empty), "empty rows differ from the eager oracle"
    assert (out[empty] == 0).all()
    err = rel_l2(out[~empty], expected_out[~empty])
    assert err <= tol, f"relative L2 error {err:.3g} vs the eager oracle"
    torch.testing.assert_close(lse[~empty].double(), expected_lse[~empty], rtol=tol, atol=tol)


# --------------------------------------------------------------------------- gradients
# relative L2 error of each gradient; the backward adds one more rounding of P and dS
GRAD_TOLERANCE = {torch.float32: 1e-2 if ON_GPU else 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _loss_grads(fn, q, k, v, dout, dlse, learnable):
    result = fn(q, k, v)
    out, lse = result if isinstance(result, tuple) else (result, None)
    loss = (out.double() * dout.double()).sum()
    if lse is not None:
        finite = torch.isfinite(lse)
        loss = loss + (lse.double()[finite] * dlse.double()[finite]).sum()
    return torch.autograd.grad(loss, (q, k, v, *learnable), allow_unused=True)


def check_grads(variant_or_attn, B, Hq, Hkv, Lq, Lkv, D, Dv, dtype, *, config=None, spatial_shape=None,
                deterministic=None, tol: float | None = None, **tensors):
    """Gradients of q, k, v, of the returned lse (a random upstream gradient on both outputs)
    and of every tensor in ``tensors`` that requires grad, against the float64 reference's
    autograd. Returns the kernel's gradients (q, k, v, then the learnable tensors)."""
    attn = _compiled(variant_or_attn)
    g = torch.Generator().manual_seed(Lq * 7 + Lkv)
    q = torch.randn(B, Hq, Lq, D, generator=g).to(DEVICE, dtype).requires_grad_()
    k = torch.randn(B, Hkv, Lkv, D, generator=g).to(DEVICE, dtype).requires_grad_()
    v = torch.randn(B, Hkv, Lkv, Dv, generator=g).to(DEVICE, dtype).requires_grad_()
    dout = torch.randn(B, Hq, Lq, Dv, generator=g).to(DEVICE, dtype)
    dlse = torch.randn(B, Hq, Lq, generator=g).to(DEVICE)
    names = [n for n, t in tensors.items() if t.requires_grad]
    learnable = [tensors[n] for n in names]
    extra = {} if spatial_shape is None else {"spatial_shape": spatial_shape}
    has_lse = not isinstance(attn.variant.norm, ag.Sigmoid)  # the lse, when there is one, gets a gradient too
    got = _loss_grads(lambda q, k, v: attn(q, k, v, return_lse=has_lse, config=config, deterministic=deterministic,
                                           **extra, **tensors), q, k, v, dout, dlse, learnable)
    want = _loss_grads(lambda q, k, v: ag.reference(attn.variant)(q, k, v, return_lse=has_lse, **extra, **tensors),
                       q, k, v, dout, dlse, learnable)
    tol = GRAD_TOLERANCE[dtype] if tol is None else tol
    for name, a, b in zip(["q", "k", "v", *names], got, want):
        if b is None or not b.abs().sum():
            assert a is None or not a.abs().sum(), f"d{name} should be zero"
            continue
        assert a.dtype == (dtype if name in "qkv" else tensors[name].dtype) and a.shape == b.shape
        assert torch.isfinite(a).all(), f"d{name} has NaN/inf"
        err = rel_l2(a, b)
        assert err < tol, f"d{name}: relative error {err:.2e}"
    return got


# Mods that several test files share
@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


@ag.mask_mod
def same_doc(b, h, q_idx, kv_idx, document):
    return document[b, q_idx] == document[b, kv_idx]
