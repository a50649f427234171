"""``CompiledLinearAttention``: what ``ag.compile`` returns for linear-attention variants.

The generated module (templates/linear_attention.py.j2) holds the chunked kernels and their
launchers; this module validates a call's inputs, picks launch configurations, and wraps the
forward and backward launches in a ``torch.autograd.Function`` (gradients of q, k, v and of
the learnable ``decay_log``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import triton

from ..ir.kernel import BAND, KernelIR
from ..ir.nodes import Variant
from . import ops
from .compiled import CompiledKernel, device_guard
from .fast_launch import launch_wrap
from .validate import Problem, check_out, check_qkv, check_runtime_tensors, in_graph


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@dataclass(frozen=True)
class LinearConfig:
    """Launch configuration of the chunked linear-attention kernels.

    ``chunk``: tokens per chunk (the intra-chunk products are chunk x chunk); ``block_k``:
    the feature columns one dq/dk program owns; ``block_v``: the value columns one forward
    or dv program owns (both capped at the head dims, rounded up to powers of two; a
    smaller block means more programs, each recomputing the chunk x chunk products).
    """

    chunk: int = 64
    block_k: int = 64
    block_v: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("chunk", "block_k", "block_v"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 16 or val & (val - 1):
                raise ValueError(f"LinearConfig.{name} must be a power of two >= 16, got {val!r}")
        if self.num_stages < 1 or self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"LinearConfig: num_stages must be >= 1 and num_warps a power of two <= 16, "
                             f"got {self.num_stages} and {self.num_warps}")

    def smaller(self) -> "LinearConfig | None":
        """The next configuration to try when this one does not fit the GPU (fewer stages,
        then narrower column blocks, then shorter chunks); None when nothing smaller is left."""
        if self.num_stages > 1:
            return LinearConfig(self.chunk, self.block_k, self.block_v, self.num_warps, self.num_stages - 1)
        if max(self.block_k, self.block_v) > 32:
            return LinearConfig(self.chunk, min(self.block_k, 32), min(self.block_v, 32), self.num_warps, 1)
        if self.chunk > 16:
            return LinearConfig(self.chunk // 2, self.block_k, self.block_v, self.num_warps, 1)
        return None


def choose_linear_config(device: torch.device, dtype: torch.dtype, D: int, DV: int,
                         light: bool = True) -> LinearConfig:
    """A configuration by heuristic (no timing runs) for the forward or the backward.

    Under the Triton interpreter every program and loop step costs Python time: whole head
    dims per program and 32-token chunks. On the GPU: 64-token chunks and 64-wide column
    blocks, so a program's fp32 state is a 128 x 64 (or 64 x 128) tile and B*H*2 programs
    share the machine (512 at the benchmark's B=8, H=32, D=128); fp32 inputs and head dims
    over 128 halve the chunk. ``light``: identity feature map, no normalizer and no
    decay_log gradient. From ptxas -v for sm_90a (Triton 3.9 without a GPU, bf16, D=128;
    benchmarks/NOTES.md): light kernels take 244-255 registers at 4 warps without spilling
    (2 programs per SM); elu1 with a normalizer spills 100-350 bytes at 4 warps and 0-100 at
    8, the decay_log gradient 700 at 4 and 200 at 8, fp32 inputs 130-200 at 4, hence 8 warps
    for those. Not timed on the H100 yet: benchmarks/bench_linear.py --sweep.
    """
    if device.type != "cuda":
        return LinearConfig(32, _pow2(D), _pow2(DV), 4, 1)
    big = max(D, DV) > 128
    fp32 = dtype == torch.float32
    # Triton 3.6 on the H100 computes dK wrongly (relative error 10-100, or an illegal
    # address) with 64-token chunks when a head dim is padded to a power of two (D/Dv =
    # 24/40, 32/48, 32/40, 40/24 in bf16); 32-token chunks are right (benchmarks/NOTES.md)
    padded = _pow2(D) != D or _pow2(DV) != DV
    return LinearConfig(32 if fp32 or big or padded else 64, 64, 64, 4 if light and not (big or fp32) else 8, 2)


def _launch(fn: Callable[[LinearConfig], object], config: LinearConfig, fixed: bool, what: str):
    """Run ``fn(config)``, stepping down to smaller configs while the GPU refuses it (unless
    the caller fixed the config). Returns (result, config used)."""
    while True:
        try:
            return fn(config), config
        except triton.runtime.errors.OutOfResources as exc:
            smaller = None if fixed else config.smaller()
            if smaller is None:
                raise RuntimeError(f"{what}: launch configuration {config} does not fit this GPU ({exc})") from exc
            config = smaller


@dataclass(frozen=True)
class LinearCall:
    """A call's fixed launch configurations (None: the heuristic's, stepping down on failure)."""

    config: LinearConfig | None = None
    backward_config: LinearConfig | None = None


class LinearAttentionFunction(torch.autograd.Function):
    """out = linear_attention(q, k, v, decay_log) for eager calls: the kernel's
    ``forward_impl`` and ``backward_impl`` (which the custom ops run under graphs too)."""

    @staticmethod
    def forward(ctx, kernel, call, q, k, v, decay_log):
        out, den = kernel.forward_impl(call, q, k, v, decay_log)
        ctx.kernel, ctx.call = kernel, call
        # the backward reads out only for the normalizer's gradient (den is None without one)
        ctx.save_for_backward(q, k, v, out if den is not None else None, den, decay_log)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, den, decay_log = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[2:6])
        grads = ctx.kernel.backward_impl(ctx.call, q, k, v, out, den, dout, decay_log, needs)
        return (None, None, *(g if need else None for g, need in zip(grads, needs)))


class CompiledLinearAttention(CompiledKernel):
    """A compiled linear-attention variant. Call it like ``attn(q, k, v, **tensors)``.

    Same surface as ``CompiledAttention``: ``variant``, ``ir``, ``source``, ``path``, ``key``,
    ``from_cache``, ``last_config``. ``scale`` is rejected (linear attention is unscaled:
    scale q yourself) and so is ``return_lse=True`` (there is no log-sum-exp).
    """

    config_type = LinearConfig

    def __init__(self, variant: Variant, ir: KernelIR, module_path: Path, key: str, from_cache: bool) -> None:
        super().__init__(variant, ir, module_path, key, from_cache)
        self.causal = ir.strategy == BAND
        self.decay = ir.norm.decay
        self.normalize = ir.norm.normalize
        self._light = ir.norm.feature_map == "identity" and not self.normalize  # see choose_linear_config
        self.last_config: LinearConfig | None = None  # what the latest forward launched with
        self.last_backward_config: LinearConfig | None = None  # and the latest backward
        self._fitted: dict[tuple, LinearConfig] = {}

    def __repr__(self) -> str:
        return f"CompiledLinearAttention({self.ir.name!r}, causal={self.causal}, path='{self.path}')"

    def config_for(self, device: torch.device, dtype: torch.dtype, D: int, DV: int, Lq: int = 0, Lkv: int = 0,
                   decay_grad: bool = False) -> LinearConfig:
        """The launch configuration the heuristic picks at these sizes (lengths do not matter;
        ``decay_grad``: for a backward that computes decay_log's gradient)."""
        return choose_linear_config(torch.device(device), dtype, D, DV, self._light and not decay_grad)

    def prepare(self, q, k, v, scale=None, **tensors) -> tuple[Problem, torch.Tensor | None]:
        """Validate a call's inputs; returns the problem sizes and decay_log (None without decay)."""
        p = check_qkv(q, k, v)
        if scale is not None:
            raise ValueError(f"scale: linear attention has no scale (phi(q) . phi(k) is used unscaled, "
                             f"SEMANTICS.md); leave scale=None and scale q yourself, got scale={scale!r}")
        bound = check_runtime_tensors(self._params, tensors, self._captured, p, self.ir.name)
        if self.causal and p.Lq != p.Lkv:
            raise ValueError(f"k has {p.Lkv} positions but q has {p.Lq}: causal linear attention needs Lq == Lkv "
                             "(self-attention)")
        decay_log = bound.get("decay_log")
        if self.decay:
            if not decay_log.is_floating_point():
                raise TypeError(f"decay_log must be a floating tensor (the log of each head's decay), "
                                f"got {decay_log.dtype}")
            if tuple(decay_log.shape) != (p.HQ,):
                raise ValueError(f"decay_log must have shape (Hq,) = ({p.HQ},), got {tuple(decay_log.shape)}")
        return p, decay_log

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                 return_lse: bool = False, config: LinearConfig | None = None,
                 backward_config: LinearConfig | None = None, out: torch.Tensor | None = None,
                 **tensors: torch.Tensor) -> torch.Tensor:
        """Linear attention over q (B, Hq, L, D), k (B, Hkv, L, D), v (B, Hkv, L, Dv); returns
        (B, Hq, L, Dv) in q's dtype. Decay variants take ``decay_log`` (Hq,), values <= 0 (not
        checked: that would cost a device sync). ``config`` / ``backward_config``: fixed
        launch configurations instead of the heuristic's. ``out``: where to write (no autograd)."""
        if not isinstance(return_lse, bool):
            raise TypeError(f"return_lse must be a bool, got {return_lse!r}")
        if return_lse:
            raise ValueError("return_lse: linear attention has no log-sum-exp; call without return_lse=True")
        for name, cfg in (("config", config), ("backward_config", backward_config)):
            if cfg is not None and not isinstance(cfg, LinearConfig):
                raise TypeError(f"{name} must be an attngen LinearConfig, got {type(cfg).__name__}")
        p, decay_log = self.prepare(q, k, v, scale, **tensors)
        inputs = (q, k, v) + ((decay_log,) if decay_log is not None else ())
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        if out is not None:
            if needs_grad:
                raise ValueError("out= cannot be used when q, k, v or decay_log require grad")
            check_out(out, p, (q, k, v))
        call = LinearCall(config, backward_config)
        if in_graph(q, k, v):  # the custom op a graph records (torch.compile, torch.export)
            result = torch.ops.attngen.linear_attention(self.key, q, k, v, decay_log, ops.encode_config(config),
                                                        ops.encode_config(backward_config))[0]
            return result if out is None else out.copy_(result)
        if needs_grad:
            return LinearAttentionFunction.apply(self, call, q, k, v, decay_log)
        return self.forward_impl(call, q, k, v, decay_log, out=out)[0]

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, state=None,
                config: LinearConfig | None = None, **tensors: torch.Tensor):
        """Serving: (out, ag.LinearState after the prompt), continuing ``state`` if given
        (causal variants, no autograd; runtime/linear_state.py, docs/varlen.md)."""
        from .linear_state_call import prefill

        return prefill(self, q, k, v, state=state, config=config, **tensors)

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state, **tensors: torch.Tensor):
        """Serving: (out, state) for T new tokens; ``state`` advances in place (runtime/linear_state.py)."""
        from .linear_state_call import step

        return step(self, q, k, v, state, **tensors)

    def call_settings(self, config: str, backward_config: str) -> LinearCall:
        """The LinearCall the custom ops' arguments describe (their JSON texts)."""
        return LinearCall(ops.decode_config(config, LinearConfig), ops.decode_config(backward_config, LinearConfig))

    def forward_impl(self, call: LinearCall, q, k, v, decay_log, out: torch.Tensor | None = None):
        """Launch the forward on validated inputs; returns (out, den or None)."""
        B, HQ, Lq, D = q.shape
        DV = v.shape[3]
        module = self.module(q.device)
        if out is None:
            out = torch.empty((B, HQ, Lq, DV), dtype=q.dtype, device=q.device)
        den = torch.empty((B, HQ, Lq), dtype=torch.float32, device=q.device) if self.normalize else None
        self.poison(out, den)
        cls = (q.device, q.dtype, D, DV, "forward")
        start = call.config or self._fitted.get(cls) or self.config_for(q.device, q.dtype, D, DV)
        wrap = launch_wrap(q.device)
        with device_guard(q.device):
            _, used = _launch(lambda c: module.launch_forward(q, k, v, out, den, decay_log, c, wrap=wrap), start,
                              call.config is not None, f"variant '{self.ir.name}' forward")
        if call.config is None:
            self._fitted[cls] = used
        self.last_config = used
        return out, den

    def backward_impl(self, call: LinearCall, q, k, v, out, den, dout, decay_log, needs: tuple[bool, ...]):
        """(dq, dk, dv, d decay_log) for the four ``needs`` flags (None where not needed)."""
        D, DV = q.shape[3], v.shape[3]
        module = self.module(q.device)
        cls = (q.device, q.dtype, D, DV, "backward", needs[3])
        start = (call.backward_config or self._fitted.get(cls)
                 or self.config_for(q.device, q.dtype, D, DV, decay_grad=needs[3]))
        wrap = launch_wrap(q.device)
        with device_guard(q.device):
            grads, used = _launch(lambda c: module.launch_backward(q, k, v, out, den, dout, decay_log, c, needs,
                                                                   wrap=wrap),
                                  start, call.backward_config is not None, f"variant '{self.ir.name}' backward")
        if call.backward_config is None:
            self._fitted[cls] = used
        self.last_backward_config = used
        dq, dk, dv, dgamma = (g if need else None for g, need in zip(grads, needs))  # dq may serve dgamma only
        if dgamma is not None:
            dgamma = dgamma.to(decay_log.dtype)
        return dq, dk, dv, dgamma
