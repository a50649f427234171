"""The backends of the neighborhood benchmark: attngen through ``ag.compile`` and through
``ag.na1d/2d/3d`` (NATTEN's layout), FlexAttention with a mask_mod that writes SEMANTICS.md's
per-axis rule in torch ops (checked cell by cell against ``attngen.reference``), and the dense
kernels on the same shape (attngen, SDPA flash, SDPA cuDNN).

Each ``build_*`` takes a case, its inputs and the scale and returns a zero-argument callable.
"""
from __future__ import annotations

from typing import Callable

import torch

import attngen as ag  # first: without a GPU it selects the Triton interpreter before triton is imported
import bench_common as common
from neighborhood_cases import MASK_CHECKS, NACase, Tensor, oracle_mask

Fn = Callable[[], Tensor]

NA_BACKENDS = ("attngen", "attngen_natten", "flex")

DENSE_BACKENDS = ("attngen_dense", "sdpa_flash", "sdpa_cudnn")

TITLES = {"attngen": "attngen", "attngen_natten": "attngen naXd (NATTEN layout)", "flex": "FlexAttention",
          "attngen_dense": "attngen dense", "sdpa_flash": "SDPA flash", "sdpa_cudnn": "SDPA cuDNN"}


def na_mask_mod(case: NACase) -> Callable:
    """SEMANTICS.md's neighborhood as a FlexAttention mask_mod over flattened indices (torch ops only)."""
    shape = case.spatial
    geometry = list(zip(shape, case.kernel, case.per_axis("dilation"), case.per_axis("stride"),
                        case.per_axis("causal")))

    def axis_keep(x, y, size, k, d, s, causal):
        if d == 1:
            xg, yg, lg = x, y, size  # one dilation group: its length is a Python int
            cap = lambda t, hi: torch.clamp(t, max=hi)  # noqa: E731
        else:
            g = x % d
            xg, yg, lg = x // d, y // d, (size - g + d - 1) // d
            cap = torch.minimum
        if causal:
            leader = cap((xg // s) * s + (s - 1), lg - 1)
            start = torch.clamp(leader - (k - 1), min=0)
            keep = (yg >= start) & (yg <= xg)
        else:
            leader = cap((xg // s) * s + s // 2, lg - 1)
            start = torch.clamp(cap(leader - k // 2, lg - k), min=0)
            keep = (yg >= start) & (yg < start + k)
        return keep if d == 1 else keep & (y % d == x % d)

    def mask_mod(b, h, q_idx, kv_idx):
        keep = None
        qi, kj = q_idx, kv_idx
        for axis in reversed(range(len(shape))):  # row-major: the last axis varies fastest
            size, k, d, s, causal = geometry[axis]
            x, y = (qi % size, kj % size) if axis else (qi, kj)
            if axis:
                qi, kj = qi // size, kj // size
            term = axis_keep(x, y, size, k, d, s, causal)
            keep = term if keep is None else keep & term
        return keep

    return mask_mod


def check_mask_mod(case: NACase, rows: Tensor) -> str | None:
    """None when the Flex mask_mod equals the reference's mask on ``rows`` (and the attended
    count agrees where every row is present); else what differs."""
    j = torch.arange(case.L, device=rows.device).view(1, -1)
    mine = na_mask_mod(case)(0, 0, rows.view(-1, 1), j).expand(len(rows), -1)
    ref = oracle_mask(case, rows)
    if not torch.equal(mine, ref):
        bad = (mine != ref).nonzero()[0].tolist()
        return f"Flex mask_mod differs from the reference at query {rows[bad[0]].item()}, key {bad[1]}"
    if len(rows) == case.L and int(ref.sum()) != case.attended:
        return f"attended count {case.attended} != reference mask's {int(ref.sum())}"
    return None


def self_check_masks() -> list[str]:
    """The Flex mask_mod against attngen.reference's mask on every cell of small geometries."""
    problems = []
    for case in MASK_CHECKS:
        why = check_mask_mod(case, torch.arange(case.L))
        if why:
            problems.append(f"{case.name}: {why}")
    return problems


def natten_layout(case: NACase, t: Tensor) -> Tensor:
    """(B, H, L, D) -> NATTEN's (B, *spatial, H, D), contiguous."""
    return t.transpose(1, 2).reshape(case.B, *case.spatial, case.H, case.D).contiguous()


def from_natten_layout(case: NACase, t: Tensor) -> Tensor:
    return t.reshape(case.B, case.L, case.H, case.D).transpose(1, 2)


def build_attngen(case: NACase, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Fn:
    attn = ag.compile(case.variant)

    def fn() -> Tensor:
        return attn(q, k, v, scale=scale, spatial_shape=case.spatial)

    fn.compiled = attn
    return fn


def build_attngen_natten(case: NACase, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Fn:
    entry = {1: ag.na1d, 2: ag.na2d, 3: ag.na3d}[case.rank]
    qn, kn, vn = (natten_layout(case, t) for t in (q, k, v))
    kernel = case.kernel[0] if case.rank == 1 else case.kernel

    def one(name):  # 1-D takes ints as NATTEN does; tuples for 2-D/3-D
        val = case.per_axis(name)
        return val[0] if case.rank == 1 else val

    def fn() -> Tensor:
        out = entry(qn, kn, vn, kernel_size=kernel, stride=one("stride"), dilation=one("dilation"),
                    is_causal=one("causal"), scale=scale)
        return from_natten_layout(case, out)

    return fn


def build_flex(case: NACase, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Fn:
    flex = common.compiled_flex()  # one for the process; it recompiles once per mask
    block_mask, block_mask_s = common.timed_block_mask(na_mask_mod(case), case.L, q.device)
    fn: Fn = lambda: flex(q, k, v, block_mask=block_mask, scale=scale)  # noqa: E731
    fn.block_mask_s = block_mask_s
    return fn


def build_sdpa(backend_name: str) -> Callable[..., Fn]:
    def build(case: NACase, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Fn:
        return common.sdpa_fn(backend_name, q, k, v, scale=scale)

    return build


def build_attngen_dense(case: NACase, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Fn:
    attn = ag.compile(ag.Variant())

    def fn() -> Tensor:
        return attn(q, k, v, scale=scale)

    fn.compiled = attn
    return fn


BUILDERS: dict[str, Callable[..., Fn]] = {
    "attngen": build_attngen,
    "attngen_natten": build_attngen_natten,
    "flex": build_flex,
    "attngen_dense": build_attngen_dense,
    "sdpa_flash": build_sdpa("sdpa_flash"),
    "sdpa_cudnn": build_sdpa("sdpa_cudnn"),
}
CPU_BACKENDS = {"attngen", "attngen_natten", "attngen_dense"}  # what --smoke runs without a GPU
