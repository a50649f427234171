"""Neighborhood-attention benchmark: attngen against FlexAttention, and against dense attention.

Run from the repository root on a CUDA machine (an H100 is the reference):

    PYTHONPATH=. python benchmarks/bench_neighborhood.py --out DIR [--cases a,b] [--sweep]
    PYTHONPATH=. python benchmarks/bench_neighborhood.py --smoke     # tiny shapes, any device

Cases (bf16 forward, NATTEN semantics, shared/SEMANTICS.md; B=1, H=16, D=128):

    na2d_31    2-D 128x128, kernel 31x31                 (PEERS.md: Flex 1.95 ms)
    na2d_63    2-D 128x128, kernel 63x63                 (PEERS.md: Flex 3.91 ms)
    na3d       3-D 16x32x32, kernel 7x15x15              (PEERS.md: Flex 2.67 ms)
    na1d       1-D 32768, kernel 2047 (odd, as NATTEN's are; PEERS.md's window 2048: Flex 1.51 ms)
    blocked2d  2-D 128x128, kernel = stride = 16x16       perfectly block sparse (density 1/64)
    gna2d      2-D 128x128, kernel 32x32, stride 16x16     perfectly block sparse (density 1/16)
    blocked3d  3-D 16x32x32, kernel = stride = 8x16x16    perfectly block sparse (density 1/8)

For every case, in one process and on the same random inputs (B, H, L, D):

1. attngen (``ag.compile(variant)(q, k, v, spatial_shape=...)``), attngen through
   ``ag.na1d/2d/3d`` on NATTEN's layout (B, *spatial, H, D), and ``torch.compile(flex_attention)``
   with a BlockMask from ``create_block_mask`` over the same mask, written as a mask_mod over
   flattened indices with SEMANTICS.md's per-axis rule in torch ops (checked here against
   ``attngen.reference``'s mask on sampled rows);
2. correctness: attngen against Flex's output (relative L2 < 2e-2) and every backend against
   a float64 oracle on 256 sampled query rows (first, last and random ones); a miss is shouted
   and makes the exit status 1;
3. the dense kernels on the same shape and inputs, timed once per shape: attngen's own dense
   kernel, SDPA flash and SDPA cuDNN (``torch.nn.attention.sdpa_kernel``);
4. time (ms, median of ``triton.testing.do_bench``), TFLOP/s on attended entries
   (4*B*H*attended*D), attngen's throughput over Flex's, its speedup over dense SDPA (limit
   1/density), and the speed-of-light line SOL = attngen dense time x density. The target for
   the perfectly block-sparse cases is attngen <= 1.15 x SOL.

``--sweep`` times attngen under KernelConfigs (block_m, block_n in {64, 128}, num_warps 4/8,
num_stages 2/3) for each case, checked on the sampled rows, within ``--sweep-budget`` seconds.
``--smoke`` runs tiny stand-ins of the same cases on whatever device is present: on the CPU
through the Triton interpreter, attngen and the reference only (float32, no Flex, no SDPA),
so that the script's logic can be checked anywhere.

Results go to DIR/neighborhood.md, DIR/neighborhood.json and DIR/neighborhood.png (a bar chart
of TFLOP/s, when matplotlib imports). DIR defaults to $OUT, else benchmarks/results/latest.
The main markdown table is printed last.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

import attngen as ag  # first: without a GPU it selects the Triton interpreter before triton is imported
import bench_forward as bf
import bench_common as common
from attngen.reference import neighborhood_matrix
from report import (MAX_REL_ERR, BackendError, Measurement, SweepPoint, SweepResult, config_label, format_err,
                    is_correct, md_escape, ranked, relative_l2, short_reason, sweep_markdown, tflops,
                    throughput_ratio)

Tensor = torch.Tensor
Fn = Callable[[], Tensor]

SAMPLED_ROWS = 256  # query rows of the float64 oracle (64 first, 64 last, the rest random)
SOL_TARGET = 1.15  # perfectly block-sparse cases: attngen within 15% of dense time x density
SWEEP_BLOCK = (64, 128)
SWEEP_WARPS = (4, 8)
SWEEP_STAGES = (2, 3)
NA_BACKENDS = ("attngen", "attngen_natten", "flex")
DENSE_BACKENDS = ("attngen_dense", "sdpa_flash", "sdpa_cudnn")
TITLES = {"attngen": "attngen", "attngen_natten": "attngen naXd (NATTEN layout)", "flex": "FlexAttention",
          "attngen_dense": "attngen dense", "sdpa_flash": "SDPA flash", "sdpa_cudnn": "SDPA cuDNN"}


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class NACase:
    key: str
    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...] | None = None  # None: 1 on every axis
    dilation: tuple[int, ...] | None = None
    causal: tuple[bool, ...] | None = None
    B: int = 1
    H: int = 16
    D: int = 128
    block_sparse: bool = False  # kernel/stride chosen so that no tile needs mask code

    def per_axis(self, name: str) -> tuple:
        val = getattr(self, name)
        default = False if name == "causal" else 1
        return val if val is not None else (default,) * self.rank

    @property
    def rank(self) -> int:
        return len(self.spatial)

    @property
    def L(self) -> int:
        return math.prod(self.spatial)

    @property
    def name(self) -> str:
        x = "x".join
        parts = [f"{self.rank}-D {x(map(str, self.spatial))}", f"k{x(map(str, self.kernel))}"]
        if any(s != 1 for s in self.per_axis("stride")):
            parts.append(f"s{x(map(str, self.per_axis('stride')))}")
        if any(d != 1 for d in self.per_axis("dilation")):
            parts.append(f"d{x(map(str, self.per_axis('dilation')))}")
        if any(self.per_axis("causal")):
            parts.append("causal axis " + ",".join(str(i) for i, c in enumerate(self.per_axis("causal")) if c))
        return " ".join(parts) + f" B={self.B} H={self.H} D={self.D}"

    @property
    def mask(self) -> ag.Neighborhood:
        return ag.neighborhood(self.kernel, self.per_axis("dilation"), self.per_axis("stride"),
                               self.per_axis("causal"))

    @property
    def variant(self) -> ag.Variant:
        return ag.Variant(mask=self.mask, name=f"bench_{self.key}")

    @property
    def dense_shape(self) -> tuple[int, int, int, int]:
        return (self.B, self.H, self.L, self.D)

    @property
    def attended(self) -> int:
        """Attended (query, key) pairs per head: the product over axes of each axis' window sums."""
        return math.prod(axis_attended(*a) for a in zip(self.spatial, self.kernel, self.per_axis("dilation"),
                                                         self.per_axis("stride"), self.per_axis("causal")))

    @property
    def density(self) -> float:
        return self.attended / (self.L * self.L)

    @property
    def flops(self) -> float:
        return 4.0 * self.B * self.H * self.D * self.attended

    @property
    def dense_flops(self) -> float:
        return 4.0 * self.B * self.H * self.D * self.L * self.L


def axis_window(x: int, size: int, k: int, d: int, s: int, causal: bool) -> tuple[int, int, int]:
    """SEMANTICS.md's per-axis rule for query coordinate x: (first key, last key, step)."""
    g, xg = x % d, x // d
    lg = -(-(size - g) // d)
    if causal:
        leader = min((xg // s) * s + s - 1, lg - 1)
        lo, hi = max(leader - k + 1, 0), xg
    else:
        leader = min((xg // s) * s + s // 2, lg - 1)
        lo = min(max(leader - k // 2, 0), lg - k)
        hi = lo + k - 1
    return lo * d + g, hi * d + g, d


def axis_attended(size: int, k: int, d: int, s: int, causal: bool) -> int:
    """Sum over the axis' query coordinates of the keys each attends."""
    if not causal:
        return size * k
    return sum((hi - lo) // step + 1 for lo, hi, step in (axis_window(x, size, k, d, s, True) for x in range(size)))


CASES = (
    NACase("na2d_31", (128, 128), (31, 31)),
    NACase("na2d_63", (128, 128), (63, 63)),
    NACase("na3d", (16, 32, 32), (7, 15, 15)),
    NACase("na1d", (32768,), (2047,)),
    NACase("blocked2d", (128, 128), (16, 16), stride=(16, 16), block_sparse=True),
    NACase("gna2d", (128, 128), (32, 32), stride=(16, 16), block_sparse=True),
    NACase("blocked3d", (16, 32, 32), (8, 16, 16), stride=(8, 16, 16), block_sparse=True),
)

# --smoke: the same keys with tiny shapes, several 64-token tiles each (seconds under the Triton interpreter)
SMOKE_CASES = (
    NACase("na2d_31", (16, 16), (5, 5), B=1, H=2, D=16),
    NACase("na2d_63", (16, 16), (9, 9), B=1, H=2, D=16),
    NACase("na3d", (4, 8, 8), (3, 5, 5), B=1, H=2, D=16),
    NACase("na1d", (256,), (31,), B=1, H=2, D=16),
    NACase("blocked2d", (16, 16), (8, 8), stride=(8, 8), B=1, H=2, D=16, block_sparse=True),
    NACase("gna2d", (16, 32), (16, 16), stride=(8, 8), B=1, H=2, D=16, block_sparse=True),
    NACase("blocked3d", (4, 8, 8), (2, 4, 8), stride=(2, 4, 8), B=1, H=2, D=16, block_sparse=True),
)

# geometries on which the Flex mask_mod is checked cell by cell against attngen.reference
# (stride, dilation and causal axes, which the timed cases do not all exercise)
MASK_CHECKS = (
    NACase("m1", (13,), (5,), dilation=(2,)),
    NACase("m2", (8, 9), (4, 3), stride=(2, 3), causal=(True, False)),
    NACase("m3", (7, 10), (3, 3), dilation=(2, 3), stride=(2, 1)),
    NACase("m4", (4, 5, 6), (2, 3, 4), stride=(1, 3, 2), dilation=(2, 1, 1), causal=(True, False, True)),
    NACase("m5", (16,), (6,), stride=(6,), causal=(True,)),
)


def select_cases(spec: str | None, smoke: bool) -> list[NACase]:
    pool = SMOKE_CASES if smoke else CASES
    if not spec:
        return list(pool)
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    known = {c.key: c for c in pool}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise SystemExit(f"--cases: unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[k] for k in keys]


# --------------------------------------------------------------------------- FlexAttention's mask


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


def sample_rows(L: int, seed: int, device: torch.device | str) -> Tensor:
    """Query rows for the oracle: all of them when few, else the first and last 64 and random ones."""
    if L <= SAMPLED_ROWS:
        return torch.arange(L, device=device)
    gen = torch.Generator().manual_seed(seed)
    edge = SAMPLED_ROWS // 4
    rnd = torch.randperm(L - 2 * edge, generator=gen)[: SAMPLED_ROWS - 2 * edge] + edge
    rows = torch.cat([torch.arange(edge), rnd, torch.arange(L - edge, L)])
    return torch.sort(rows).values.to(device)


def oracle_mask(case: NACase, rows: Tensor) -> Tensor:
    """attngen.reference's neighborhood mask on ``rows`` x all keys, (R, L) bool."""
    j = torch.arange(case.L, device=rows.device).view(1, -1)
    return torch.as_tensor(neighborhood_matrix(case.mask, case.spatial, rows.view(-1, 1), j)).expand(len(rows), -1)


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


# --------------------------------------------------------------------------- device helpers


def on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def first_call(fn: Fn, device: torch.device) -> Tensor:
    """Run once (this compiles), outputs poisoned with NaN first; bench_forward's on the GPU."""
    if on_cuda(device):
        return bf.first_call(fn)
    try:
        with bf.poisoned_attngen_outputs():
            return fn()
    except Exception as exc:
        raise BackendError(short_reason(exc)) from exc


def time_ms(fn: Fn, device: torch.device, warmup: float, rep: float) -> float:
    """do_bench's median on the GPU; on the CPU (interpreter) the wall time of one call."""
    if on_cuda(device):
        return bf.time_ms(fn, warmup, rep)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


# --------------------------------------------------------------------------- results


@dataclass
class DenseResult:
    shape: tuple[int, int, int, int]  # B, H, L, D
    flops: float
    measurements: dict[str, Measurement] = field(default_factory=dict)

    @property
    def name(self) -> str:
        B, H, L, D = self.shape
        return f"dense B={B} H={H} L={L} D={D}"


@dataclass
class NAResult:
    case: NACase
    measurements: dict[str, Measurement] = field(default_factory=dict)
    err_vs_flex: float | None = None  # attngen against Flex's output
    attngen_config: dict[str, int] | None = None
    plan: dict[str, Any] | None = None  # attngen.runtime.neighborhood.plan at the launched tiles
    mask_check: str | None = None  # None: the Flex mask_mod matched the reference mask

    def ms(self, backend: str) -> float | None:
        m = self.measurements.get(backend)
        return m.ms if m is not None and m.error is None else None

    @property
    def attngen_ok(self) -> bool:
        m = self.measurements.get("attngen")
        if m is None or m.error is not None or not is_correct(m.rel_err):
            return False
        flex = self.measurements.get("flex")
        if flex is not None and flex.error is None:  # Flex ran: attngen must agree with it
            return is_correct(self.err_vs_flex)
        return True


def sol_ms(r: NAResult, dense: DenseResult | None, backend: str = "attngen_dense") -> float | None:
    """Speed of light: the dense kernel's time on the same shape times the mask's density."""
    m = dense.measurements.get(backend) if dense is not None else None
    return m.ms * r.case.density if m is not None and m.ms is not None and m.error is None else None


def sol_ratio(r: NAResult, dense: DenseResult | None) -> float | None:
    sol, ms = sol_ms(r, dense), r.ms("attngen")
    return ms / sol if sol and ms else None


# --------------------------------------------------------------------------- building the backends


def make_inputs(case: NACase, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    return tuple(torch.randn(case.dense_shape, generator=gen, device=device, dtype=dtype) for _ in range(3))


def oracle_rows(case: NACase, q: Tensor, k: Tensor, v: Tensor, scale: float, rows: Tensor) -> Tensor:
    """Float64 attention on the sampled query rows: (B, H, R, D), head by head."""
    keep = oracle_mask(case, rows)
    outs = []
    for h in range(case.H):
        s = torch.matmul(q[:, h, rows].double(), k[:, h].double().transpose(-1, -2)) * scale
        p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
        outs.append(torch.matmul(p, v[:, h].double()))
    return torch.stack(outs, dim=1)


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


def launched_config(fn: Fn) -> dict[str, int] | None:
    cfg = getattr(getattr(fn, "compiled", None), "last_config", None)
    return asdict(cfg) if cfg is not None else None


def plan_info(case: NACase, config: dict[str, int] | None) -> dict[str, Any]:
    """How attngen's planner tiles this case at the launched block_m/block_n (for the report)."""
    if not config:
        return {"error": "no launch config recorded"}
    try:
        from attngen.runtime.neighborhood import plan, resolve_axes

        p = plan(resolve_axes(case.mask, case.spatial, case.L), config["block_m"], config["block_n"])
        counts = p.counts()
        return {"q_box": list(p.q_box), "kv_box": list(p.kv_box), "has_partial": p.has_partial, **counts,
                "tile_density": counts["visited_entries"] / (case.L * case.L)}
    except Exception as exc:  # the planner's API is young: the report must not die of it
        return {"error": short_reason(exc)}


def prepare(name: str, case: NACase, inputs, scale: float, device: torch.device) -> tuple[Fn | None, Tensor | None,
                                                                                          Measurement]:
    m = Measurement(name)
    start = time.perf_counter()
    try:
        fn = BUILDERS[name](case, *inputs, scale)
        out = first_call(fn, device)
    except Exception as exc:
        m.error = short_reason(exc)
        return None, None, m
    m.setup_s = time.perf_counter() - start
    return fn, out, m


def prepare_backends(names: Sequence[str], case: NACase, inputs, scale: float, device: torch.device,
                     measurements: dict[str, Measurement]) -> tuple[dict[str, Fn], dict[str, Tensor]]:
    """Build and first-call each backend (CPU smoke runs skip the GPU-only ones); failures
    are recorded in ``measurements``. Returns the runnable ones and their outputs."""
    fns: dict[str, Fn] = {}
    outs: dict[str, Tensor] = {}
    for name in names:
        if not on_cuda(device) and name not in CPU_BACKENDS:
            measurements[name] = Measurement(name, error="smoke on CPU: not run")
            continue
        fn, out, m = prepare(name, case, inputs, scale, device)
        measurements[name] = m
        if fn is None:
            bf.log(f"  {name:<15} n/a ({m.error})")
            continue
        fns[name], outs[name] = fn, out
    return fns, outs


def time_backends(fns: dict[str, Fn], measurements: dict[str, Measurement], flops: float,
                  device: torch.device, args: argparse.Namespace) -> None:
    for name, fn in fns.items():
        m = measurements[name]
        try:
            m.ms = time_ms(fn, device, args.warmup, args.rep)
            m.tflops = tflops(flops, m.ms)
            bf.log(f"  {name:<15} {m.ms:9.3f} ms  {m.tflops:7.1f} TFLOP/s")
        except Exception as exc:
            m.error = "timing: " + short_reason(exc)
            bf.log(f"  {name:<15} n/a ({m.error})")


# --------------------------------------------------------------------------- one case


def bench_dense(case: NACase, inputs, scale: float, device: torch.device, args: argparse.Namespace) -> DenseResult:
    """attngen dense, SDPA flash and SDPA cuDNN on the case's shape and inputs; attngen dense is
    checked against SDPA flash's output (else cuDNN's) on the GPU, float64 SDPA on the CPU."""
    result = DenseResult(case.dense_shape, case.dense_flops)
    bf.log(f"  -- dense on the same shape ({result.name})")
    fns, outs = prepare_backends(DENSE_BACKENDS, case, inputs, scale, device, result.measurements)
    ref_name = next((b for b in ("sdpa_flash", "sdpa_cudnn") if b in outs), None)
    ref = outs.get(ref_name) if ref_name else None
    if ref is None and not on_cuda(device):
        q, k, v = inputs
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)
    for name, out in outs.items():
        if ref is not None and name != ref_name:
            result.measurements[name].rel_err = relative_l2(out, ref)
    a = result.measurements["attngen_dense"]
    if a.error is None and a.rel_err is not None and not is_correct(a.rel_err):
        bf.shout(f"attngen dense is WRONG on {result.name}: rel L2 err {a.rel_err:.3e}")
    del outs
    time_backends(fns, result.measurements, result.flops, device, args)
    return result


def bench_case(case: NACase, seed: int, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
               dense_cache: dict[tuple, DenseResult]) -> NAResult:
    result = NAResult(case)
    inputs = make_inputs(case, seed, device, dtype)
    scale = case.D ** -0.5
    rows = sample_rows(case.L, seed, device)
    result.mask_check = check_mask_mod(case, rows)
    if result.mask_check:
        bf.shout(f"{case.key}: {result.mask_check} (Flex would compute another mask)")
    ref = oracle_rows(case, *inputs, scale, rows)
    fns, outs = prepare_backends(NA_BACKENDS, case, inputs, scale, device, result.measurements)
    for name, fn in fns.items():
        m, out = result.measurements[name], outs[name]
        m.rel_err = relative_l2(out[:, :, rows], ref)
        extra = f", block mask {fn.block_mask_s:.2f} s" if hasattr(fn, "block_mask_s") else ""
        bf.log(f"  {name:<15} ready in {m.setup_s:.1f} s{extra}, rel L2 err vs float64 on {len(rows)} rows "
               f"{m.rel_err:.2e}")
        if name == "attngen":
            result.attngen_config = launched_config(fn)
            result.plan = plan_info(case, result.attngen_config)
    if "attngen" in outs and "flex" in outs:
        result.err_vs_flex = relative_l2(outs["attngen"], outs["flex"])
        bf.log(f"  attngen vs Flex: rel L2 err {result.err_vs_flex:.2e}")
    a = result.measurements["attngen"]
    if a.error is not None:
        bf.shout(f"attngen FAILED on {case.name}: {a.error}")
    elif not result.attngen_ok:
        vs_flex = "n/a" if result.err_vs_flex is None else f"{result.err_vs_flex:.3e}"
        bf.shout(f"attngen is WRONG on {case.name}: rel L2 err {a.rel_err:.3e} vs float64 rows, {vs_flex} vs Flex "
                 f"(limit {MAX_REL_ERR:g})")
    del outs
    time_backends(fns, result.measurements, case.flops, device, args)
    if case.dense_shape not in dense_cache:
        dense_cache[case.dense_shape] = bench_dense(case, inputs, scale, device, args)
    del fns, inputs, ref
    if on_cuda(device):
        torch.cuda.empty_cache()
    return result


def guarded_bench_case(case: NACase, seed: int, device, dtype, args, dense_cache) -> NAResult:
    try:
        return bench_case(case, seed, device, dtype, args, dense_cache)
    except Exception as exc:
        bf.shout(f"case {case.name} failed: {short_reason(exc)}")
        result = NAResult(case)
        result.measurements = {b: Measurement(b, error="case setup: " + short_reason(exc)) for b in NA_BACKENDS}
        return result


# --------------------------------------------------------------------------- sweep


def sweep_configs(first: dict[str, int] | None) -> list[ag.KernelConfig]:
    grid = [ag.KernelConfig(bm, bn, w, s) for bm, bn, w, s in
            itertools.product(SWEEP_BLOCK, SWEEP_BLOCK, SWEEP_WARPS, SWEEP_STAGES)]
    grid.sort(key=lambda c: (-c.block_m, -c.block_n, -c.num_warps, c.num_stages))
    lead = [ag.KernelConfig(**first)] if first is not None else []  # the heuristic's pick, timed first
    return lead + [c for c in grid if c not in lead]


def sweep_case(case: NACase, seed: int, device, dtype, args, deadline: float,
               heuristic: dict[str, int] | None) -> SweepResult:
    sweep = SweepResult(case, heuristic)
    inputs = make_inputs(case, seed, device, dtype)
    scale = case.D ** -0.5
    rows = sample_rows(case.L, seed, device)
    ref = oracle_rows(case, *inputs, scale, rows)
    attn = ag.compile(case.variant)
    if heuristic is None:  # --sweep-only: one call with the heuristic tells which config it picks
        first_call(lambda: attn(*inputs, scale=scale, spatial_shape=case.spatial), device)
        heuristic = sweep.heuristic = asdict(attn.last_config) if attn.last_config is not None else None
    configs = sweep_configs(heuristic)
    for i, cfg in enumerate(configs):
        if time.monotonic() > deadline:
            sweep.skipped = len(configs) - i
            bf.log(f"  sweep budget spent: {sweep.skipped} configs skipped")
            break
        point = SweepPoint(asdict(cfg))
        sweep.points.append(point)
        fn: Fn = lambda cfg=cfg: attn(*inputs, scale=scale, spatial_shape=case.spatial, config=cfg)  # noqa: E731
        start = time.perf_counter()
        try:
            point.rel_err = relative_l2(first_call(fn, device)[:, :, rows], ref)
            if is_correct(point.rel_err):
                point.ms = time_ms(fn, device, args.sweep_warmup, args.sweep_rep)
                point.tflops = tflops(case.flops, point.ms)
            else:
                point.error = f"wrong: rel L2 err {point.rel_err:.2e}"
        except Exception as exc:
            point.error = short_reason(exc)
        took = time.perf_counter() - start
        what = point.error if point.error else f"{point.ms:.3f} ms {point.tflops:6.1f} TFLOP/s err {point.rel_err:.1e}"
        bf.log(f"  [{i + 1:2d}/{len(configs)}] {config_label(point.config):<18} {what}  ({took:.1f} s)")
        if point.error and on_cuda(device) and not bf.cuda_alive():
            bf.shout(f"CUDA context broken after config {config_label(point.config)}; sweep stopped")
            break
    return sweep


def guarded_sweep_case(case, seed, device, dtype, args, deadline, heuristic) -> SweepResult:
    try:
        return sweep_case(case, seed, device, dtype, args, deadline, heuristic)
    except Exception as exc:
        bf.shout(f"sweep of {case.name} aborted: {short_reason(exc)}")
        return SweepResult(case, heuristic, error=short_reason(exc))


# --------------------------------------------------------------------------- formatting


def fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else (f"{ms:.3f}" if ms < 100 else f"{ms:.0f}")


def fmt_cell(m: Measurement | None, extra: str = "") -> str:
    if m is None:
        return "-"
    if m.error is not None:
        return f"n/a ({md_escape(m.error[:70])}{'...' if len(m.error) > 70 else ''})"
    if m.ms is None:
        return "-"
    tf = f", {m.tflops:.0f} TF/s" if m.tflops is not None else ""
    return f"{fmt_ms(m.ms)} ms{tf}{extra}"


def ratio_text(x: float | None) -> str:
    return "" if x is None else f", x{x:.2f}"


def markdown_header(env: dict[str, Any]) -> str:
    return "\n".join([
        "# attngen neighborhood-attention benchmark" + (" (smoke)" if env.get("smoke") else ""),
        "",
        f"- date (UTC): {env.get('date_utc', '?')}",
        f"- device: {env.get('device', '?')}",
        f"- torch {env.get('torch', '?')}, Triton {env.get('triton', '?')}, attngen {env.get('attngen', '?')}"
        f" (commit {env.get('commit', '?')}), CUDA {env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}",
        f"- {env.get('dtype', '?')}, forward, "
        + (f"median of triton.testing.do_bench(warmup={env.get('warmup_ms')} ms, rep={env.get('rep_ms')} ms)"
           if env.get("cuda") else "wall time of one call under the Triton interpreter (not a performance figure)")
        + "; peers in the same process on the same inputs",
        "- NATTEN semantics (shared/SEMANTICS.md); TFLOP/s of neighborhood kernels count attended entries only "
        "(4*B*H*D*attended); dense kernels count all L^2 entries",
        "- Flex cell: xR = attngen throughput / Flex throughput (R > 1: attngen faster); dense cells: xR = dense "
        "time / attngen time (attngen's speedup from sparsity; the limit is 1/density)",
        f"- SOL = attngen dense time on the same shape x density; perfectly block-sparse cases target attngen <= "
        f"{SOL_TARGET:.2f} x SOL",
        f"- err: attngen vs Flex's output over all rows, and vs float64 on up to {SAMPLED_ROWS} sampled query rows "
        f"(limit {MAX_REL_ERR:g} for both)",
    ])


def markdown_table(results: Sequence[NAResult], dense: dict[tuple, DenseResult], judge: bool = True) -> str:
    """The main table; ``judge``: mark the SOL target (not for interpreter wall times)."""
    rows = ["| case | density (limit 1/d) | attngen | attngen naXd layout | FlexAttention | SDPA flash (dense) "
            "| SDPA cuDNN (dense) | SOL (ms) | attngen / SOL | err vs Flex | err vs f64 rows |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, ms = r.case, r.ms("attngen")
        d = dense.get(c.dense_shape)
        m = r.measurements
        cfg = f", {config_label(r.attngen_config)}" if r.attngen_config else ""
        dense_cells = [fmt_cell(d.measurements.get(b) if d else None,
                                ratio_text(throughput_ratio(ms, d.measurements[b].ms)) if d and b in d.measurements
                                else "")
                       for b in ("sdpa_flash", "sdpa_cudnn")]
        ratio = sol_ratio(r, d)
        verdict = ""
        if ratio is not None and c.block_sparse and judge:
            verdict = " (target met)" if ratio <= SOL_TARGET else f" **(target {SOL_TARGET:.2f} missed)**"
        flex_err = "-" if r.err_vs_flex is None else (f"{r.err_vs_flex:.1e}"
                                                       + ("" if is_correct(r.err_vs_flex) else " **WRONG**"))
        rows.append(" | ".join([
            f"| {c.key}: {c.name}", f"{c.density:.4f} ({1 / c.density:.1f}x)",
            fmt_cell(m.get("attngen"), cfg), fmt_cell(m.get("attngen_natten")),
            fmt_cell(m.get("flex"), ratio_text(throughput_ratio(ms, r.ms("flex")))), *dense_cells,
            fmt_ms(sol_ms(r, d)), ("-" if ratio is None else f"{ratio:.2f}") + verdict,
            flex_err, format_err(m.get("attngen")) + " |"]))
    return "\n".join(rows)


def dense_table(dense: dict[tuple, DenseResult]) -> str:
    rows = ["| shape | " + " | ".join(TITLES[b] for b in DENSE_BACKENDS) + " | attngen dense err |",
            "|---|" + "---|" * (len(DENSE_BACKENDS) + 1)]
    for d in dense.values():
        rows.append(f"| {d.name} | " + " | ".join(fmt_cell(d.measurements.get(b)) for b in DENSE_BACKENDS)
                    + f" | {format_err(d.measurements.get('attngen_dense'))} |")
    return "\n".join(rows)


def plan_table(results: Sequence[NAResult]) -> str:
    rows = ["| case | launch config | query box | KV box | KV tiles visited (per b, h) | full | mask-free "
            "| tile density | peer errors vs f64 rows |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r.plan or {"error": "attngen did not run"}
        peers = ", ".join(f"{b} {format_err(r.measurements.get(b))}" for b in ("attngen_natten", "flex")
                          if b in r.measurements and r.measurements[b].rel_err is not None) or "-"
        if "error" in p:
            rows.append(f"| {r.case.key} | {config_label(r.attngen_config)} | n/a ({md_escape(p.get('error', '-'))}) "
                        f"| | | | | | {peers} |")
            continue
        rows.append(f"| {r.case.key} | {config_label(r.attngen_config)} | {'x'.join(map(str, p['q_box']))} | "
                    f"{'x'.join(map(str, p['kv_box']))} | {p['visited_tiles']} | {p['full_tiles']} | "
                    f"{'yes' if not p['has_partial'] else 'no'} | {p['tile_density']:.4f} | {peers} |")
    return "\n".join(rows)


def full_markdown(env, results, dense, sweeps) -> str:
    parts = [markdown_header(env)]
    if results:
        parts += ["", markdown_table(results, dense, judge=bool(env.get("cuda"))), "",
                  "## Dense kernels on the same shapes", "", dense_table(dense), "",
                  "## attngen's tiling (attngen.runtime.neighborhood.plan at the launched tiles)", "",
                  "mask-free: no KV tile needs mask code (perfectly block sparse); tile density: visited entries / "
                  "L^2, the density the kernel pays for", "", plan_table(results)]
    if sweeps:
        parts += ["", "## attngen KernelConfig sweep",
                  f"(do_bench warmup={env.get('sweep_warmup_ms')} ms, rep={env.get('sweep_rep_ms')} ms; errors "
                  f"vs float64 on the sampled rows)"]
        parts += [x for s in sweeps for x in ("", sweep_markdown(s))]
    if env.get("plot"):
        parts += ["", f"Plot: {env['plot']}"]
    return "\n".join(parts) + "\n"


def to_json(env, results, dense, sweeps) -> dict[str, Any]:
    def case_dict(c: NACase) -> dict[str, Any]:
        return {**asdict(c), "name": c.name, "L": c.L, "attended": c.attended, "density": c.density,
                "flops": c.flops, "dense_flops": c.dense_flops}

    cases = []
    for r in results:
        d = dense.get(r.case.dense_shape)
        ms = r.ms("attngen")
        cases.append({
            "case": case_dict(r.case), "attngen_ok": r.attngen_ok, "err_vs_flex": r.err_vs_flex,
            "mask_check": r.mask_check or "ok", "attngen_config": r.attngen_config, "plan": r.plan,
            "measurements": {b: asdict(m) for b, m in r.measurements.items()},
            "sol_ms": sol_ms(r, d), "sol_ms_cudnn": sol_ms(r, d, "sdpa_cudnn"), "attngen_over_sol": sol_ratio(r, d),
            "sol_target_met": ((sol_ratio(r, d) <= SOL_TARGET)
                               if r.case.block_sparse and sol_ratio(r, d) and env.get("cuda") else None),
            "throughput_ratio_attngen_over": {
                "flex": throughput_ratio(ms, r.ms("flex")),
                **{b: throughput_ratio(ms, d.measurements[b].ms if d and b in d.measurements else None)
                   for b in DENSE_BACKENDS}},
        })
    return {
        "environment": env, "max_rel_err": MAX_REL_ERR, "sol_target": SOL_TARGET, "cases": cases,
        "dense": [{"shape": list(d.shape), "name": d.name, "flops": d.flops,
                   "measurements": {b: asdict(m) for b, m in d.measurements.items()}} for d in dense.values()],
        "sweep": [{**asdict(s), "case": case_dict(s.case), "ranked": [p.config for p in ranked(s.points)]}
                  for s in sweeps],
    }


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out_dir: Path, env, results, dense, sweeps) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "neighborhood.md", out_dir / "neighborhood.json"
    write_text(md, full_markdown(env, results, dense, sweeps))
    write_text(js, json.dumps(to_json(env, results, dense, sweeps), indent=2, allow_nan=True) + "\n")
    return md, js


def plot(out_dir: Path, results: Sequence[NAResult], dense: dict[tuple, DenseResult], title: str) -> str:
    """A bar chart of TFLOP/s per case and backend; returns the file name or why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return f"no plot (matplotlib does not import: {short_reason(exc)})"
    series = [(b, False) for b in NA_BACKENDS] + [(b, True) for b in DENSE_BACKENDS]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(results)), 4.8))
    for n, (backend, is_dense) in enumerate(series):
        vals = []
        for r in results:
            src = dense.get(r.case.dense_shape) if is_dense else r
            m = src.measurements.get(backend) if src is not None else None
            vals.append(m.tflops if m is not None and m.error is None and m.tflops is not None else 0.0)
        xs = [i + (n - (len(series) - 1) / 2) * width for i in range(len(results))]
        label = TITLES[backend] + (" (dense, its own FLOPs)" if is_dense else "")
        if backend == "attngen_dense":
            label += " = SOL"  # dense time x density on the attended FLOPs is the dense kernel's TFLOP/s
        ax.bar(xs, vals, width, label=label, hatch="//" if is_dense else None)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([f"{r.case.key}\nd={r.case.density:.3f}" for r in results], fontsize=8)
    ax.set_ylabel("TFLOP/s (neighborhood: attended entries)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / "neighborhood.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: $OUT, else benchmarks/results/latest)")
    p.add_argument("--cases", default=None,
                   help="comma-separated subset of: " + ", ".join(c.key for c in CASES) + " (default: all)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny stand-ins of the cases on whatever device is present (CPU: interpreter, attngen only)")
    p.add_argument("--sweep", action="store_true", help="also time attngen under a grid of KernelConfigs")
    p.add_argument("--sweep-only", action="store_true", help="run the sweep without the main comparison")
    p.add_argument("--warmup", type=float, default=25.0, help="do_bench warm-up, ms (default 25)")
    p.add_argument("--rep", type=float, default=100.0, help="do_bench repetition time, ms (default 100)")
    p.add_argument("--sweep-warmup", type=float, default=10.0, help="sweep do_bench warm-up, ms (default 10)")
    p.add_argument("--sweep-rep", type=float, default=40.0, help="sweep do_bench repetition time, ms (default 40)")
    p.add_argument("--sweep-budget", type=float, default=240.0,
                   help="seconds the whole sweep may take; configs beyond it are skipped (default 240)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the random inputs")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else (
            Path(__file__).resolve().parent / "results" / "latest")
    args.sweep = args.sweep or args.sweep_only
    return args


def collect_environment(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {**common.run_environment(device, dtype, bf.git_commit()), "smoke": args.smoke,
            "warmup_ms": args.warmup, "rep_ms": args.rep, "sweep_warmup_ms": args.sweep_warmup,
            "sweep_rep_ms": args.sweep_rep, "seed": args.seed, "sampled_rows": SAMPLED_ROWS}


def self_check_masks() -> list[str]:
    """The Flex mask_mod against attngen.reference's mask on every cell of small geometries."""
    problems = []
    for case in MASK_CHECKS:
        why = check_mask_mod(case, torch.arange(case.L))
        if why:
            problems.append(f"{case.name}: {why}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    picked = common.device_and_dtype("bench_neighborhood.py", args.smoke)
    if picked is None:
        return 2
    device, dtype = picked
    cases = select_cases(args.cases, args.smoke)
    env = collect_environment(args, device, dtype)
    bf.log(f"{env['device']} | torch {env['torch']} | Triton {env['triton']} | attngen {env['attngen']} | "
           f"{env['dtype']} | out: {args.out}")
    problems = self_check_masks()
    for p in problems:
        bf.shout(f"Flex mask_mod self-check: {p}")
    results: list[NAResult] = []
    dense: dict[tuple, DenseResult] = {}
    sweeps: list[SweepResult] = []
    heuristics: dict[str, dict[str, int] | None] = {}
    with torch.no_grad():
        if not args.sweep_only:
            for i, case in enumerate(cases):
                bf.log(f"[{i + 1}/{len(cases)}] {case.key}: {case.name}, density {case.density:.4f}")
                r = guarded_bench_case(case, args.seed + i, device, dtype, args, dense)
                results.append(r)
                heuristics[case.key] = r.attngen_config
                write_results(args.out, env, results, dense, sweeps)
        if args.sweep:
            deadline = time.monotonic() + args.sweep_budget
            for i, case in enumerate(cases):
                bf.log(f"[sweep {i + 1}/{len(cases)}] {case.key}: {case.name}")
                share = (deadline - time.monotonic()) / (len(cases) - i)  # an equal share of what is left
                sweeps.append(guarded_sweep_case(case, args.seed + i, device, dtype, args, time.monotonic() + share,
                                                 heuristics.get(case.key)))
                write_results(args.out, env, results, dense, sweeps)
    if results:
        env["plot"] = plot(args.out, results, dense, f"{env['device']}, {env['dtype']} forward, NATTEN semantics")
        bf.log(f"plot: {env['plot']}")
    md_path, json_path = write_results(args.out, env, results, dense, sweeps)
    bf.log(f"wrote {md_path} and {json_path}\n")
    for s in sweeps:
        bf.log(sweep_markdown(s, top=5, show_failed=False) + "\n")
    bad = [r.case.key for r in results if not r.attngen_ok] + [f"mask self-check ({p})" for p in problems]
    bad += [r.case.key + " (Flex mask)" for r in results if r.mask_check]
    if bad:
        bf.shout("attngen failed or was wrong on: " + ", ".join(bad))
    if results:
        bf.log(markdown_header(env) + "\n\n" + markdown_table(results, dense, judge=bool(env.get("cuda")))
               + "\n\n" + dense_table(dense))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
