"""The forward writes the log-sum-exp only where something reads it: a backward that follows,
or ``return_lse=True``. Calls without either launch with ``lse=None`` (the kernels' STORE_LSE
compiles the store out), and their output is the same bits as with the store."""
from __future__ import annotations

import pytest
import torch

import attngen as ag
from helpers import DEVICE, FP32_CLOSE, make_qkv, rel_l2, tolerance

VARIANTS = {
    "dense": lambda: ag.Variant(name="lse_store_dense"),
    "causal": lambda: ag.Variant(mask=ag.causal(), name="lse_store_causal"),
    "neighborhood": lambda: ag.Variant(mask=ag.neighborhood((3, 5), stride=(1, 2)), name="lse_store_na"),
}
SHAPE = (6, 8)  # the neighborhood's grid; L = 48 for every variant


def _spy(attn) -> list:
    """Record the ``lse`` argument of every forward launch of ``attn``."""
    module = attn.module(torch.device(DEVICE))
    launch, seen = module.launch_forward, []

    def recording(q, k, v, out, lse, *rest, **options):
        seen.append(lse)
        return launch(q, k, v, out, lse, *rest, **options)

    module.launch_forward = recording
    return seen


def _call(attn, name, q, k, v, **kw):
    return attn(q, k, v, spatial_shape=SHAPE, **kw) if name == "neighborhood" else attn(q, k, v, **kw)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_lse_written_only_when_read(name):
    variant = VARIANTS[name]()
    attn = ag.compile(variant)
    seen = _spy(attn)
    q, k, v = make_qkv(1, 2, 2, 48, 48, 16, 16, torch.float32)
    with torch.no_grad():
        out_plain = _call(attn, name, q, k, v)
        out_lse, lse = _call(attn, name, q, k, v, return_lse=True)
    assert seen[0] is None, "a forward-only call should not ask for the log-sum-exp"
    assert isinstance(seen[1], torch.Tensor)
    assert torch.equal(out_plain, out_lse), "skipping the lse store changed the output"
    ref_out, ref_lse = _call(ag.reference(variant), name, q, k, v, return_lse=True)
    assert rel_l2(out_plain, ref_out) <= tolerance(torch.float32)
    torch.testing.assert_close(lse.double(), ref_lse, **FP32_CLOSE)

    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    _call(attn, name, qg, kg, vg).sum().backward()
    assert isinstance(seen[2], torch.Tensor), "a call with a backward must write the lse it reads"
    assert qg.grad is not None and torch.isfinite(qg.grad).all()
