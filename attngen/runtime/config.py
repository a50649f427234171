"""Launch configurations (tile sizes, warps, pipeline stages) chosen by heuristic.

Measured choices for the H100 live here until the autotuner owns them. Under the Triton
interpreter the tiles are as large as the problem allows, since each program costs a
fixed Python overhead there.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import triton

DIALECTS = ("tl", "gluon")  # the kernel languages a forward config can name (KernelConfig.dialect)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes, warps and pipeline stages of the forward kernel.

    ``q_box`` / ``kv_box`` (neighborhood variants only): the query and KV tiles as boxes of
    the grid, three powers of two with products ``block_m`` / ``block_n``; None lets the
    planner choose (runtime/neighborhood.py ``plan``). The tuner sets them explicitly.

    ``halves`` (dense, band and neighborhood masks; not tile lists): run the forward kernel
    that splits each query tile (box) into two halves sharing every K/V load, whose matrix
    products and softmaxes interleave (templates/attention_fwd.py.j2, ``_fwd_halves``); needs
    ``block_m >= 32``. A neighborhood's query box splits row-major: its first half of rows
    and its second.

    ``warp_specialize`` (dense and band masks, 8 warps): compile the loop over the KV tiles
    every row attends with Triton's automatic warp specialization
    (``tl.range(..., warp_specialize=True)``): producer warps issue the K/V loads while the
    others compute. H100, causal D=128 at 128x128, 8 warps, 3 stages: +1.5-1.8%, ahead in
    10 of 10 interleaved rounds (benchmarks/NOTES.md, Forward, "warp specialization as a config option"); dense tiles even or -1.5%.
    Triton 3.6's pass asserts on 4-warp kernels (WSLowerToken.cpp), so only 8 warps take it.

    ``dialect``: "tl" (the ``triton.language`` kernels, every GPU and the interpreter) or
    "gluon" (the Hopper forward of templates/attention_fwd_gluon.py.j2, sm90 only: dense,
    band and one-run-per-tile tile-list masks, softmax). A Gluon program owns 128 query rows, 64 per consumer warpgroup,
    so ``block_m`` is 128 and ``num_warps`` 4 (per warpgroup); ``block_n`` is 64 or 128 and
    ``num_stages`` (2 or 3) is the depth of its K/V ring in shared memory. ``pingpong`` (Gluon
    only): the two consumer warpgroups take turns issuing their products (FlashAttention-3's
    ping-pong schedule), so that one's softmax always runs under the other's products.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    q_box: tuple[int, int, int] | None = None
    kv_box: tuple[int, int, int] | None = None
    halves: bool = False
    warp_specialize: bool = False
    dialect: str = "tl"
    pingpong: bool = False

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(f"KernelConfig.dialect must be one of {DIALECTS}, got {self.dialect!r}")
        if self.dialect == "gluon":
            self._check_gluon()
        elif self.pingpong:
            raise ValueError("KernelConfig.pingpong needs dialect='gluon' (the tl kernels have one consumer)")
        for name in ("block_m", "block_n"):
            val = getattr(self, name)
            if val < 16 or val & (val - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= 16, got {val}")
        if self.num_stages < 1 or self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"KernelConfig: num_stages must be >= 1 and num_warps a power of two <= 16, "
                             f"got {self.num_stages} and {self.num_warps}")
        if self.halves and self.block_m < 32:
            raise ValueError(f"KernelConfig.halves needs block_m >= 32, got block_m={self.block_m}")
        if self.warp_specialize and self.num_warps != 8:
            raise ValueError(f"KernelConfig.warp_specialize needs num_warps=8 (Triton 3.6's warp-specialization "
                             f"pass fails on other counts), got num_warps={self.num_warps}")
        for name, block in (("q_box", self.block_m), ("kv_box", self.block_n)):
            box = getattr(self, name)
            if box is None:
                continue
            box = tuple(box)  # records come back from JSON as lists; keep the config hashable
            object.__setattr__(self, name, box)
            if len(box) != 3 or any(not isinstance(b, int) or b < 1 or b & (b - 1) for b in box) \
                    or box[0] * box[1] * box[2] != block:
                raise ValueError(f"KernelConfig.{name} must be three powers of two with product {block}, got {box}")

    def _check_gluon(self) -> None:
        if self.block_m != 128 or self.num_warps != 4 or self.block_n not in (64, 128) \
                or self.num_stages not in (2, 3) or self.halves or self.warp_specialize or self.q_box or self.kv_box:
            raise ValueError("KernelConfig(dialect='gluon') needs block_m=128, num_warps=4, block_n 64 or 128 "
                             "and num_stages 2 or 3, without halves, warp_specialize or boxes; got "
                             f"{self}")

    def smaller(self) -> "KernelConfig | None":
        """The next configuration to try when this one does not fit (the same tiles without
        warp specialization, whose producer warps take registers of their own; then fewer
        stages, then narrower KV tiles, then one tile instead of two halves, then shorter
        query tiles); None when nothing smaller is left.
        Boxes survive a change of stages only: a narrower tile needs the planner's boxes.
        A Gluon config steps down its ring, then its KV tile; past that the caller goes back
        to a ``tl`` config."""
        if self.dialect == "gluon":
            if self.num_stages > 2:
                return replace(self, num_stages=self.num_stages - 1)
            return replace(self, block_n=64) if self.block_n > 64 else None
        if self.warp_specialize:
            return replace(self, warp_specialize=False)
        if self.num_stages > 1:
            return KernelConfig(self.block_m, self.block_n, self.num_warps, self.num_stages - 1,
                                self.q_box, self.kv_box, self.halves)
        if self.block_n > 16:
            return KernelConfig(self.block_m, self.block_n // 2, self.num_warps, 2, halves=self.halves)
        if self.halves:
            return KernelConfig(self.block_m // 2, self.block_n, self.num_warps, 2)
        if self.block_m > 16:
            return KernelConfig(self.block_m // 2, self.block_n, min(self.num_warps, 4), 2)
        return None


def choose_config(device: torch.device, dtype: torch.dtype, d: int, dv: int, lq: int, lkv: int,
                  tile_reads: bool = False, masked: bool = False, sigmoid: bool = False, halves: bool = False,
                  score_mod: bool = False, causal_like: bool = False) -> KernelConfig:
    """A good-enough configuration for this problem (no timing runs).

    ``tile_reads``: the score or mask reads a tensor per (query, key) pair, a
    BLOCK_M x BLOCK_N gather that the software pipeline also stages in shared memory.
    ``masked``: the mask skips tiles (band or tile lists), where smaller tiles waste less
    work on the band's edges.

    H100 bf16 measurements behind the choices (benchmarks/NOTES.md, 2026-11-24):
    dense D=128: 128x128, 8 warps, 3 stages 500 TFLOP/s (128x64x8: 477);
    dense D=64: 128x64, 8 warps 434 (128x128x8: 354);
    causal D=64: 64x64x4 370. Causal D=128 (``causal_like``, plain score): 128x128, 8 warps,
    3 stages 472 against 449 for 64x64 on 4 warps, six interleaved rounds beside cuDNN
    (NOTES.md, Forward, 2026-11-24; it had won 7 of 8 earlier rounds and lost 2 of 3 before those);
    with warp specialization on sm90 (``KernelConfig.warp_specialize``; NOTES.md, Forward: 453 -> 460).
    ``sigmoid``: sigmoid attention, dense D=128: 128x64, 8 warps 1.98 ms (128x128x8: 2.11-2.17;
    results in benchmarks/NOTES.md, "Normalizations").
    ``halves``: the kernel has the two-halves forward (dense and band masks). On the H100 at
    64 < D <= 128 it wins unmasked and, for sigmoid, on causal-like (one-sided) bands
    (``causal_like``): four interleaved rounds (NOTES.md, Forward, "config rounds after the halves"), 256x64 halves, 8 warps,
    4 stages against the earlier choice: dense softmax 544 vs 504 TFLOP/s, sigmoid 603 vs
    528, causal sigmoid 525 vs 480; causal softmax 437 vs 438 and windows 0.78x (not taken).
    ``score_mod``: the score is more than ``qk * scale``; unmasked, D=128, the smaller
    64x64 tiles on 4 warps leave the score's code registers: tanh soft-capping 326 vs 267
    TFLOP/s with 128x128 on 8 warps (four rounds, the same NOTES entry).
    """
    major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else None
    return _choose_config(major, dtype, d, dv, lq, lkv, tile_reads, masked, sigmoid, halves, score_mod, causal_like)


@functools.lru_cache(maxsize=1024)  # a pure function of its arguments, asked on every backward's setup
def _choose_config(major: int | None, dtype: torch.dtype, d: int, dv: int, lq: int, lkv: int, tile_reads: bool,
                   masked: bool, sigmoid: bool, halves: bool, score_mod: bool, causal_like: bool) -> KernelConfig:
    """choose_config for a device of compute capability ``major`` (None: the interpreter)."""
    if major is None:
        bm = min(64, max(16, triton.next_power_of_2(lq)))
        bn = min(64, max(16, triton.next_power_of_2(lkv)))
        return KernelConfig(bm, bn, 4, 1)
    dmax = max(d, dv)
    if dtype != torch.float32 and d % 16 and dv % 16:
        # Triton 3.6 on the H100 computes wrong fp16/bf16 results when both head dims
        # are padded (D=40/56/72 with Dv=24) for every BLOCK_N >= 64 we tried; BLOCK_N=32
        # is right (benchmarks/NOTES.md, "padded head dims").
        return KernelConfig(64, 32, 4, 2)
    if tile_reads:
        return KernelConfig(128 if dtype != torch.float32 else 64, 64, 4, 2)
    if dtype == torch.float32:
        return KernelConfig(64, 32 if dmax > 128 else 64, 4, 2)
    if dmax > 128:
        return KernelConfig(64, 64, 4, 2)
    if major >= 9:
        wide = 64 < dmax <= 128
        if halves and wide and not score_mod and (not masked or (sigmoid and causal_like)):
            return KernelConfig(256, 64, 8, 4, halves=True)
        if masked and causal_like and wide and not score_mod and not sigmoid:
            # warp specialization measured on the H100 only (NOTES.md, Forward, 2026-11-25)
            return KernelConfig(128, 128, 8, 3, warp_specialize=major == 9)
        if masked:
            return KernelConfig(64, 64, 4, 3)
        if score_mod and wide and not sigmoid:
            return KernelConfig(64, 64, 4, 3)
        if dmax <= 64 or sigmoid:
            return KernelConfig(128, 64, 8, 3)
        return KernelConfig(128, 128, 8, 3)
    return KernelConfig(128, 64, 4, 2)


def config_to_dict(c: KernelConfig) -> dict:
    """The JSON form of a config (tuning records, and the custom ops' ``config`` argument);
    fields at their defaults are left out, so older records read the same."""
    out = {"block_m": c.block_m, "block_n": c.block_n, "num_warps": c.num_warps, "num_stages": c.num_stages}
    for name in ("q_box", "kv_box"):
        if getattr(c, name) is not None:
            out[name] = list(getattr(c, name))
    for flag in ("halves", "warp_specialize"):
        if getattr(c, flag):
            out[flag] = True
    if c.dialect != "tl":
        out["dialect"] = c.dialect
    if c.pingpong:
        out["pingpong"] = True
    return out


def config_from_dict(d: object) -> KernelConfig:
    """Parse a stored config; ValueError/TypeError when it is not one."""
    if not isinstance(d, dict):
        raise TypeError(f"a config must be an object, got {type(d).__name__}")
    fields = {k: d[k] for k in ("block_m", "block_n", "num_warps", "num_stages")}
    for k in ("q_box", "kv_box"):
        if d.get(k) is not None:
            fields[k] = tuple(d[k])
    if not all(isinstance(v, int) and not isinstance(v, bool) for k, v in fields.items() if not k.endswith("box")):
        raise TypeError(f"config fields must be integers: {d}")
    flags = {flag: d.get(flag, False) for flag in ("halves", "warp_specialize", "pingpong")}
    for flag, val in flags.items():
        if not isinstance(val, bool):
            raise TypeError(f"config field {flag} must be true or false: {d}")
    dialect = d.get("dialect", "tl")
    if not isinstance(dialect, str):
        raise TypeError(f"config field dialect must be a string: {d}")
    return KernelConfig(**fields, **flags, dialect=dialect)
