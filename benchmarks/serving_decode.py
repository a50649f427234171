"""The decode part of bench_serving.py: one new token per sequence against a long KV cache.

Case (issue 26): Hq=32, Hkv=8, D=128, Lq=1, B = 1 / 8 / 64, Lkv = 4K / 32K / 128K, bf16,
every sequence full (seq_lens = Lkv). Backends, on the same memory:

- ``attngen``: ``attn.decode`` of the dense variant over the contiguous cache, with
  ``check=False`` (a serving loop's setting: the check's host sync would be timed otherwise);
- ``attngen causal``: ``ag.causal()``, which decoding aligns bottom-right (the same function
  at Lq=1: every key), to show what the mask costs;
- ``attngen paged16`` / ``paged64``: the same tokens as pages of 16 / 64, the block table a
  random permutation of the pages (vLLM's layout after some churn);
- ``flex``: ``torch.compile(flex_attention)`` without a block mask (at Lq=1 the bottom-right
  causal mask keeps every key), ``enable_gqa=True``: Flex's decoding kernel;
- ``sdpa_flash`` / ``sdpa_cudnn`` / ``sdpa_efficient``: SDPA pinned to one backend,
  ``enable_gqa=True`` (a backend that refuses shows its reason).

The contiguous backends share one (B, Hkv, Lkv, D) cache per K and V; each page size then
gets its own pages (freed before the next: the largest case, B=64 at 128K, is 2 x 17 GB).
Bandwidth is K and V bytes over the median time, beside the copy bandwidth bench_serving.py
measures. Each backend's output for sequence 0 is checked against float32 attention over
that sequence's keys before it is timed.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import attngen as ag

HQ, HKV, D = 32, 8, 128
BATCHES = (1, 8, 64)
LENGTHS = (4096, 32768, 131072)
QUICK_BATCHES = (1, 64)
QUICK_LENGTHS = (4096, 32768)
PAGE_SIZES = (16, 64)
SDPA_BACKENDS = ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient")
BACKENDS = ("attngen", "attngen causal", *(f"attngen paged{p}" for p in PAGE_SIZES), "flex", *SDPA_BACKENDS)
MAX_REL_ERR = 2e-2

DENSE = ag.Variant(name="serving_dense")
CAUSAL = ag.Variant(mask=ag.causal(), name="serving_causal")

Fn = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class DecodeCase:
    B: int
    L: int
    Hq: int = HQ
    Hkv: int = HKV
    D: int = D

    @property
    def label(self) -> str:
        return f"B={self.B} Lkv={self.L // 1024}K" if self.L >= 1024 else f"B={self.B} Lkv={self.L}"

    def kv_bytes(self, elem: int) -> int:
        """Bytes of K and V a decoding step must read."""
        return 2 * self.B * self.L * self.Hkv * self.D * elem


@dataclass
class Measurement:
    backend: str
    ms: float | None = None
    rel_err: float | None = None
    error: str | None = None
    config: str | None = None
    graph_ms: float | None = None  # replayed in a CUDA graph: the kernels' time, no host time
    graph_error: str | None = None

    def gbps(self, case: DecodeCase, elem: int, graph: bool = False) -> float | None:
        ms = self.graph_ms if graph else self.ms
        return None if ms is None else case.kv_bytes(elem) / (ms * 1e-3) / 1e9


@dataclass
class CaseResult:
    case: DecodeCase
    rows: list[Measurement] = field(default_factory=list)
    sweep: list[Measurement] = field(default_factory=list)
    skipped: str | None = None


def cases(quick: bool, smoke: bool, batches=None, lengths=None) -> list[DecodeCase]:
    if smoke:
        return [DecodeCase(B, L, Hq=4, Hkv=2, D=32) for B, L in ((1, 64), (2, 192))]
    batches = batches or (QUICK_BATCHES if quick else BATCHES)
    lengths = lengths or (QUICK_LENGTHS if quick else LENGTHS)
    return [DecodeCase(B, L) for B in batches for L in lengths]


def short_reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


@dataclass
class Layout:
    """One cache layout's inputs: contiguous (B, Hkv, L, D), or pages of ``page_size``
    tokens (num_pages, page_size, Hkv, D) listed by ``table`` in a random order."""

    q: torch.Tensor          # (B, Hq, 1, D)
    k: torch.Tensor
    v: torch.Tensor
    seq_lens: torch.Tensor   # (B,) int32, every sequence full
    table: torch.Tensor | None = None

    def sequence0(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values sequence 0 attends, (Hkv, L, D)."""
        if self.table is None:
            return self.k[0], self.v[0]
        pages = self.table[0].long()
        return self.k[pages].flatten(0, 1).transpose(0, 1), self.v[pages].flatten(0, 1).transpose(0, 1)


def make_layout(case: DecodeCase, device: torch.device, dtype: torch.dtype, page_size: int = 0) -> Layout:
    """Random inputs in one layout (one layout at a time in memory: the largest case's cache
    is 2 x 17 GB)."""
    gen = torch.Generator(device=device).manual_seed(page_size)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, generator=gen)

    q = randn(case.B, case.Hq, 1, case.D)
    seq_lens = torch.full((case.B,), case.L, dtype=torch.int32, device=device)
    if not page_size:
        return Layout(q, randn(case.B, case.Hkv, case.L, case.D), randn(case.B, case.Hkv, case.L, case.D), seq_lens)
    n = case.B * case.L // page_size
    table = torch.randperm(n, device=device, generator=gen).view(case.B, case.L // page_size).to(torch.int32)
    return Layout(q, randn(n, page_size, case.Hkv, case.D), randn(n, page_size, case.Hkv, case.D), seq_lens, table)


def reference(layout: Layout) -> torch.Tensor:
    """float32 attention of sequence 0's query (Hq, 1, D) over its keys."""
    q = layout.q[0].float()
    k, v = layout.sequence0()
    group = q.shape[0] // k.shape[0]
    k = k.float().repeat_interleave(group, 0)
    v = v.float().repeat_interleave(group, 0)
    return torch.softmax(q @ k.transpose(1, 2) * q.shape[-1] ** -0.5, dim=-1) @ v


def build(backend: str, layout: Layout, config: ag.DecodeConfig | None = None) -> Fn:
    q, k, v, lens, table = layout.q, layout.k, layout.v, layout.seq_lens, layout.table
    if backend.startswith("attngen"):
        attn = ag.compile(CAUSAL if backend == "attngen causal" else DENSE)
        return lambda: attn.decode(q, k, v, lens, table, config=config, check=False)
    if backend == "flex":
        from bench_common import compiled_flex

        flex = compiled_flex()
        return lambda: flex(q, k, v, enable_gqa=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pinned = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
              "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]

    def sdpa() -> torch.Tensor:
        with sdpa_kernel(pinned):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return sdpa


@dataclass(frozen=True)
class Timers:
    """``eager``: do_bench's median (a call's host time shows when it exceeds the GPU's);
    ``graph``: the call replayed in a CUDA graph (GPU time only), None without a GPU."""

    eager: Callable[[Fn], float]
    graph: Callable[[Fn], float] | None = None


def measure(backend: str, layout: Layout, ref: torch.Tensor, timers: Timers,
            config: ag.DecodeConfig | None = None) -> Measurement:
    """Check ``backend`` on sequence 0, then time it; failures (a refusal, OOM) are recorded."""
    m = Measurement(backend)
    if backend.startswith("attngen"):
        m.config = config_label(config or heuristic_config(layout))
    try:
        with torch.no_grad():
            fn = build(backend, layout, config)
            m.rel_err = relative_l2(fn()[0].float(), ref)
            m.ms = timers.eager(fn)
            if timers.graph is not None:
                try:
                    m.graph_ms = timers.graph(fn)
                except Exception as exc:  # noqa: BLE001 - a backend that cannot be captured
                    m.graph_error = short_reason(exc)
    except Exception as exc:  # noqa: BLE001 - a peer's failure is a result, not a crash
        m.error = short_reason(exc)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return m


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def config_label(c: ag.DecodeConfig) -> str:
    return f"m{c.block_m} n{c.block_n} w{c.num_warps} s{c.num_stages} x{c.num_splits}"


def heuristic_config(layout: Layout) -> ag.DecodeConfig:
    """The configuration attn.decode chooses for this layout's shapes."""
    from attngen.runtime.decode_config import choose_decode_config

    q, v, B = layout.q, layout.v, layout.q.shape[0]
    hkv, capacity = (v.shape[1], v.shape[2]) if layout.table is None else (v.shape[2], layout.table.shape[1] * v.shape[1])
    return choose_decode_config(q.device, q.dtype, q.shape[3], v.shape[3], q.shape[1] // hkv * q.shape[2], B * hkv,
                                capacity, paged=layout.table is not None)


def sweep_configs(base: ag.DecodeConfig, paged: bool) -> list[ag.DecodeConfig]:
    """Tiles, warps and stages around the heuristic, at half, the same and twice its splits
    (paged caches: more stages, which their block-table loads take a share of)."""
    if paged:
        tiles = [(64, 4, 5), (64, 4, 3), (64, 4, 6), (64, 8, 5), (128, 4, 5), (32, 4, 6)]
    else:
        tiles = [(64, 4, 3), (64, 4, 4), (64, 8, 3), (128, 4, 3), (128, 8, 3), (32, 4, 4)]
    splits = sorted({max(1, min(64, s)) for s in (base.num_splits // 2, base.num_splits, base.num_splits * 2)})
    return [ag.DecodeConfig(base.block_m, bn, w, st, s) for (bn, w, st), s in itertools.product(tiles, splits)]


def sweep(result: CaseResult, backend: str, layout: Layout, ref: torch.Tensor, timers: Timers,
          budget_s: float) -> None:
    """Time attngen over ``sweep_configs`` on this layout for at most ``budget_s`` seconds."""
    start = time.perf_counter()
    for config in sweep_configs(heuristic_config(layout), paged=layout.table is not None):
        if time.perf_counter() - start > budget_s:
            break
        result.sweep.append(measure(backend, layout, ref, timers, config))


def run_case(case: DecodeCase, device: torch.device, dtype: torch.dtype, timers: Timers,
             peers: bool, sweep_budget_s: float = 0.0) -> CaseResult:
    """Every backend on ``case``: the contiguous layout (attngen, its causal variant, the
    peers), then each page size; with a sweep budget, a third of it per layout."""
    result = CaseResult(case)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        need = case.kv_bytes(torch.finfo(dtype).bits // 8) * 1.15  # the cache, scratch, a peer's temporaries
        if need > free:
            result.skipped = f"needs {need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"
            return result
    layout = make_layout(case, device, dtype)
    ref = reference(layout)
    contiguous = [b for b in BACKENDS if "paged" not in b and (peers or b.startswith("attngen"))]
    for backend in contiguous:
        result.rows.append(measure(backend, layout, ref, timers))
    budget = sweep_budget_s / (1 + len(PAGE_SIZES))
    if budget > 0:
        sweep(result, "attngen", layout, ref, timers, budget)
    for page_size in PAGE_SIZES:
        del layout
        _release(device)
        layout = make_layout(case, device, dtype, page_size)
        ref = reference(layout)
        result.rows.append(measure(f"attngen paged{page_size}", layout, ref, timers))
        if budget > 0:
            sweep(result, f"attngen paged{page_size}", layout, ref, timers, budget)
    del layout
    _release(device)
    return result


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
