"""On Hopper, no generated kernel may leave ptxas to serialize its matrix products.

When ptxas cannot keep a wgmma pipeline's registers apart it makes every `wgmma.mma_async`
synchronous (its C7515 "Potential Performance Loss" note, which Triton does not show). The
packed-document dK/dV pass ran that way until fa50008 and lost 4% of its backward
(benchmarks/NOTES.md): each HGMMA in its SASS had its own `WARPGROUP.DEPBAR` wait, where a
pipelined product issues its k-steps back to back and waits once. This compiles the forward and
backward of each family at tile-aligned shapes with the default configs, as the benchmarks run
them, and checks that count in every kernel's SASS. GPU only (sm_90, cuobjdump on the PATH or
in /usr/local/cuda/bin).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import ON_GPU

import attngen as ag


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/cuobjdump")
    return str(default) if default.exists() else None


pytestmark = pytest.mark.skipif(
    not (ON_GPU and torch.cuda.get_device_capability() == (9, 0) and _cuobjdump()),
    reason="needs an sm_90 GPU and cuobjdump")


@ag.score_mod
def _softcap(score, b, h, q_idx, kv_idx):
    return 30.0 * torch.tanh(score / 30.0)


@ag.score_mod
def _alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


CASES = ("dense", "causal", "window", "documents", "documents_ragged", "alibi", "softcap", "sigmoid", "na2d",
         "na3d", "gna2d", "na1d")


def _cases() -> dict:
    """name: (variant, B, H, L, call kwargs); tile-aligned lengths, as the benchmarks'. Built
    in the test: the tensors live on the GPU."""
    aligned = torch.repeat_interleave(torch.arange(4), 512)[None].expand(2, -1).contiguous().cuda()
    ragged = torch.repeat_interleave(torch.arange(3), torch.tensor([700, 900, 448]))[None].expand(2, -1)
    return {
        "dense": (ag.Variant(), 1, 4, 2048, {}),
        "causal": (ag.Variant(mask=ag.causal()), 1, 4, 2048, {}),
        "window": (ag.Variant(mask=ag.sliding_window(255, 0)), 1, 4, 2048, {}),
        "documents": (ag.Variant(mask=ag.causal() & ag.document()), 2, 4, 2048, {"document_ids": aligned}),
        "documents_ragged": (ag.Variant(mask=ag.causal() & ag.document()), 2, 4, 2048,
                             {"document_ids": ragged.contiguous().cuda()}),
        "alibi": (ag.Variant(score=_alibi, mask=ag.causal()), 1, 4, 2048,
                  {"slopes": torch.rand(4, device="cuda")}),
        "softcap": (ag.Variant(score=_softcap, mask=ag.causal()), 1, 4, 2048, {}),
        "sigmoid": (ag.Variant(norm=ag.sigmoid()), 1, 4, 2048, {}),
        "na2d": (ag.Variant(mask=ag.neighborhood(13)), 1, 4, 4096, {"spatial_shape": (64, 64)}),
        "na3d": (ag.Variant(mask=ag.neighborhood((3, 7, 7))), 1, 4, 4096, {"spatial_shape": (4, 32, 32)}),
        "gna2d": (ag.Variant(mask=ag.neighborhood(32, stride=16)), 1, 4, 4096, {"spatial_shape": (64, 64)}),
        "na1d": (ag.Variant(mask=ag.neighborhood(511)), 1, 4, 4096, {"spatial_shape": (4096,)}),
    }


def _compiled_kernels(attn) -> dict[str, list]:
    """Each Triton kernel of ``attn``'s module: the binaries compiled so far."""
    module = attn.module(torch.device("cuda"))
    out = {}
    for name in dir(module):
        fn = getattr(module, name)
        for caches in getattr(fn, "device_caches", {}).values():
            out.setdefault(name, []).extend(caches[0].values())
    return out


def _hgmma_and_waits(cubin: bytes) -> tuple[int, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    return len(re.findall(r"\bHGMMA\.", sass)), len(re.findall(r"WARPGROUP\.DEPBAR", sass))


@pytest.mark.parametrize("name", CASES)
def test_matrix_products_stay_pipelined(name):
    cases = _cases()
    assert set(cases) == set(CASES)
    variant, B, H, L, kwargs = cases[name]
    attn = ag.compile(variant)
    q, k, v = (torch.randn(B, H, L, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    torch.autograd.grad(attn(q, k, v, **kwargs), (q, k, v), torch.randn_like(q))
    torch.cuda.synchronize()
    seen = 0
    for kernel_name, binaries in _compiled_kernels(attn).items():
        for binary in binaries:
            hgmma, waits = _hgmma_and_waits(binary.asm["cubin"])
            seen += hgmma > 0
            # pipelined: one wait per product (8 k-steps of 16 at D=128) or fewer
            assert 2 * waits <= hgmma or hgmma == 0, \
                f"{kernel_name}: {hgmma} HGMMA, {waits} waits: ptxas serialized its matrix products"
    assert seen >= 3, "expected the forward, dK/dV and dQ kernels to use wgmma"
