"""Neighborhood benchmark cases: the geometries timed, their attended-entry counts, and the
float64 oracle on sampled query rows that every backend is checked against.

Geometry follows NATTEN's semantics (shared/SEMANTICS.md); ``axis_window`` writes its per-axis
rule in plain Python so that counts and the oracle do not depend on attngen's own code paths
beyond ``attngen.reference``'s mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import attngen as ag  # first: without a GPU it selects the Triton interpreter before triton is imported
from attngen.reference import neighborhood_matrix

Tensor = torch.Tensor

SAMPLED_ROWS = 256  # query rows of the float64 oracle (64 first, 64 last, the rest random)


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
