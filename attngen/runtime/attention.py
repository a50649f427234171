"""``CompiledAttention``: the callable that ``ag.compile`` returns."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import sympy
import torch
import triton

from ..codegen.render_gluon import gluon_backward_unsupported, gluon_unsupported
from ..ir.kernel import DENSE, NEIGHBORHOOD, TILES, KernelIR
from ..ir.nodes import Variant
from . import inductor_ops, ops  # inductor_ops declares attngen::attention_kernels
from .autograd import AttentionFunction, BackwardSetup, run_backward
from .compiled import CompiledKernel, device_guard
from .config import DIALECTS, KernelConfig, choose_config
from .decode import decode as _decode
from .decode_config import DecodeConfig
from .fast_launch import launch_wrap
from .gluon import (default_gluon_backward_config, default_gluon_config, device_reason, gluon_backward_reason,
                    gluon_reason, load_gluon_backward_module, load_gluon_module)
from .graph_launch import kernel_launch_reason
from .neighborhood import plan as plan_neighborhood, prefers_dense_tiles
from .tiles import TileCache
from .validate import (Problem, check_call_options, check_out, check_qkv, check_runtime_tensors, check_scale, in_graph,
                       resolve_spatial)


def _mask_tensor_names(ir: KernelIR) -> frozenset[str]:
    """Tensors the tile classification reads (through CSE temporaries too)."""
    if ir.tile_pred is None:
        return frozenset()
    temps = dict(ir.temps)
    todo, seen, names = [ir.tile_pred], set(), set()
    while todo:
        e = todo.pop()
        names |= {str(r.base.label) for r in e.atoms(sympy.Indexed)}
        for s in e.free_symbols & set(temps) - seen:
            seen.add(s)
            todo.append(temps[s])
    return frozenset(names)


def _reads_per_tile(ir: KernelIR) -> bool:
    """Whether the score reads a tensor at positions that depend on kv_idx (a gather in
    every KV tile). The mask's reads do not count: they run in partial tiles only, which
    structured masks such as documents have few of."""
    from ..ir.expr import KV_IDX

    per_kv = {KV_IDX}
    for sym, expr in ir.temps:  # temporaries are in dependency order
        if expr.free_symbols & per_kv:
            per_kv.add(sym)
    score = ir.score_log2
    for sym, expr in reversed(ir.temps):  # the score with its temporaries expanded
        score = score.xreplace({sym: expr})
    return any(r.free_symbols & per_kv for r in score.atoms(sympy.Indexed))


NOT_RUNS = ("this call's mask does not keep one run of KV tiles per query tile (the tile lists the Gluon "
            "forward walks: packed documents, prefix-LM); the tl forward walks any lists")


def _one_run_per_tile(tiles) -> bool:
    """Whether the Gluon forward can walk ``tiles``: no lists (dense, bands) or lists whose
    every query tile is one run (``TileLists.runs``)."""
    return tiles is None or getattr(tiles, "runs", None) is not None


def _wrap(config: KernelConfig, device: torch.device) -> dict:
    """The tl launchers' ``wrap`` for an eager launch (runtime/fast_launch.py); the Gluon
    launchers take none."""
    wrap = None if config.dialect == "gluon" else launch_wrap(device)
    return {} if wrap is None else {"wrap": wrap}


@dataclass(frozen=True)
class AttentionCall:
    """A call's settings besides its tensors: what the eager path and the custom ops
    (runtime/ops.py) hand to ``forward_impl`` / ``backward_impl``.

    ``scale``: None for 1/sqrt(D). ``spatial_shape``: the neighborhood's grid (None without
    one). ``config``: a fixed launch config, or None to select one. ``store_lse``: the
    forward writes the log-sum-exp (a backward or the caller reads it). ``return_lse``: the
    caller reads it, so its gradient can reach the backward. ``deterministic``: gradients of
    score tensors without atomics."""

    scale: float | None = None
    spatial_shape: tuple[int, ...] | None = None
    config: KernelConfig | None = None
    store_lse: bool = False
    return_lse: bool = False
    deterministic: bool = False
    # keep tile classifications in the variant's TileCache: eager calls do; calls from a
    # compiled graph's ops do not, since a graph's memory (a CUDA graph's pool) must not be
    # held by the cache between its replays, and a graph's tensors are new each step anyway
    cache_tiles: bool = True


class CompiledAttention(CompiledKernel):
    """A compiled softmax or sigmoid variant. Call it like
    ``attn(q, k, v, scale=None, return_lse=False, **tensors)``; attributes as CompiledKernel's."""

    config_type = KernelConfig

    def __init__(self, variant: Variant, ir: KernelIR, module_path: Path, key: str, from_cache: bool) -> None:
        super().__init__(variant, ir, module_path, key, from_cache)
        self._tiles = TileCache()
        self._mask_tensors = _mask_tensor_names(ir)
        self._tile_reads = _reads_per_tile(ir)
        self._score_mod = not ir.plain_score
        self._has_halves = f"def {ir.name}_fwd_halves(" in self.source  # templates/attention_fwd.py.j2
        # dense and band kernels: the full-tile loop can be warp-specialized (KernelConfig.warp_specialize)
        self._has_warp_specialize = "WARP_SPECIALIZE: tl.constexpr" in self.source
        self._has_backward = "def launch_backward(" in self.source  # templates/attention_bwd.py.j2
        self._fitted: dict[tuple, tuple[KernelConfig, str]] = {}
        self._calls: dict[tuple, AttentionCall] = {}  # call_settings' memo
        self._problems: dict[tuple, tuple] = {}  # _problem's memo
        self._gluon_module = None
        self._gluon_backward_module = None
        self.last_config: KernelConfig | None = None  # what the latest call launched with
        # where it came from: "explicit" (config=), "record" (user tuning record), "shipped"
        # (autotune/<gpu>.json) or "heuristic" (choose_config)
        self.last_config_source: str | None = None
        self.last_backward_dialect: str | None = None  # "tl" or "gluon": which backward the latest one ran

    def __repr__(self) -> str:
        return f"CompiledAttention({self.ir.name!r}, tiles={self.ir.strategy}, path='{self.path}')"

    def prepare(self, q, k, v, scale=None, spatial_shape=None, captured=None, **tensors):
        """Validate a call's inputs; returns the problem sizes, the scale, every tensor and
        the neighborhood's axes at ``spatial_shape`` (None without a neighborhood).
        ``captured``: the captured tensors to read (default: the variant's)."""
        p = check_qkv(q, k, v)
        sm_scale = check_scale(scale, p.D)
        bound = check_runtime_tensors(self._params, tensors, self._captured if captured is None else captured, p,
                                      self.ir.name)
        axes = None
        if self.ir.neighborhood is not None:
            axes = resolve_spatial(self.variant.mask, spatial_shape, p)[0]
        elif spatial_shape is not None:
            raise TypeError(f"spatial_shape is only taken by neighborhood variants; '{self.ir.name}' has none")
        return p, sm_scale, bound, axes

    def tile_lists(self, p: Problem, bound: dict[str, torch.Tensor], config: KernelConfig, axes=None,
                   cache: bool = True):
        """What the kernel walks besides the KV range: the classifier's full/partial tile
        lists (cached unless ``cache`` is False), the neighborhood's box plan, or None."""
        if self.ir.strategy == NEIGHBORHOOD:
            return plan_neighborhood(axes, config.block_m, config.block_n, config.q_box, config.kv_box)
        if self.ir.strategy != TILES:
            return None
        mask_tensors = {n: t for n, t in bound.items() if n in self._mask_tensors}
        return self._tiles.get(self.module(p.device), mask_tensors, p.B, p.HQ, p.Lq, p.Lkv, config, p.device, axes,
                               cache=cache)

    def captured_tensors(self) -> dict[str, torch.Tensor]:
        """The captured tensors a call reads (bound to live objects: in-place updates are seen)."""
        return dict(self._captured)

    def decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               seq_lens: torch.Tensor | None = None, block_table: torch.Tensor | None = None, *,
               scale: float | None = None, return_lse: bool = False, num_splits: int | None = None,
               config: DecodeConfig | None = None, check: bool = True, **tensors: torch.Tensor):
        """Attention of q's Lq new tokens (B, Hq, Lq, D), the last ones of each sequence,
        against its KV cache: contiguous (B, Hkv, Lmax, D), or pages (num_pages, page_size,
        Hkv, D) with ``block_table`` (B, max_pages) int32. ``seq_lens`` (B,) int32: tokens
        per sequence, new ones included (None: Lmax). Masks and scores see bottom-right
        positions (q_idx = seq_len - Lq + i). Split-KV kernels; no autograd. The
        implementation and every argument: runtime/decode.py, docs/serving.md."""
        return _decode(self, q, k_cache, v_cache, seq_lens, block_table, scale=scale, return_lse=return_lse,
                       num_splits=num_splits, config=config, check=check, **tensors)

    def call_with_captures(self, captured: dict[str, torch.Tensor], q: torch.Tensor, k: torch.Tensor,
                           v: torch.Tensor, **kwargs):
        """A call that reads ``captured`` instead of the variant's captured tensors (the same
        names): ``ag.flex_attention`` passes the tensors its mods' closures hold now."""
        return self._run(captured, q, k, v, **kwargs)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                 return_lse: bool = False, config: KernelConfig | None = None,
                 spatial_shape: tuple[int, ...] | None = None, out: torch.Tensor | None = None,
                 deterministic: bool | None = None, dialect: str | None = None, **tensors: torch.Tensor):
        """Attention over q (B, Hq, Lq, D), k (B, Hkv, Lkv, D), v (B, Hkv, Lkv, Dv).

        ``spatial_shape``: the grid of a neighborhood variant. ``out``: where to write the
        output (B, Hq, Lq, Dv), any strides (``ag.na2d`` passes a view of NATTEN's layout).
        ``config``: a fixed launch configuration instead of the heuristic.
        ``dialect``: "gluon" forces the Hopper forward (ValueError saying why when this call
        cannot take it), "tl" the ``triton.language`` one; None selects (``select_config``).
        ``deterministic``: compute gradients of score tensors without atomics (slower;
        default: ``torch.are_deterministic_algorithms_enabled()``). q, k, v gradients are
        always deterministic.

        Under ``torch.compile`` / ``torch.export`` the launch is the custom op
        ``attngen::attention`` (runtime/ops.py); eager calls run the same implementation
        without the dispatcher.
        """
        return self._run(self._captured, q, k, v, scale=scale, return_lse=return_lse, config=config,
                         spatial_shape=spatial_shape, out=out, deterministic=deterministic, dialect=dialect,
                         **tensors)

    def _run(self, captured: dict[str, torch.Tensor], q, k, v, *, scale=None, return_lse=False, config=None,
             spatial_shape=None, out=None, deterministic=None, dialect=None, **tensors):
        p, _, bound, axes = self.prepare(q, k, v, scale, spatial_shape, captured, **tensors)
        deterministic = check_call_options(return_lse, config, deterministic, self.ir.algorithm, self.ir.name,
                                           KernelConfig)
        if dialect is not None:
            config = self._dialect_config(dialect, config, p, axes, q, k, v, out)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *bound.values()))
        if needs_grad and not self._has_backward:
            raise NotImplementedError(f"variant '{self.ir.name}': no backward kernel could be generated for its "
                                      "score_mod's derivative; run under torch.no_grad() or detach the inputs")
        if out is not None:
            if needs_grad:
                raise ValueError("out= cannot be used when q, k, v or a runtime tensor require grad")
            check_out(out, p, (q, k, v))
        spatial = None if axes is None else tuple(spatial_shape if isinstance(spatial_shape, (tuple, list))
                                                  else (spatial_shape,))
        call = AttentionCall(scale, spatial, config, needs_grad or return_lse, return_lse, deterministic)
        if in_graph(q, k, v):
            return self._through_ops(call, q, k, v, bound, out)
        if needs_grad:
            out, lse = AttentionFunction.apply(self, call, q, k, v, *bound.values())
        else:
            out, lse = self.forward_impl(call, q, k, v, bound, out=out)
        return (out, lse) if return_lse else out

    def _dialect_config(self, dialect: object, config: KernelConfig | None, p: Problem, axes, q, k, v,
                        out) -> KernelConfig:
        """The config a call with ``dialect=`` launches: ``config`` when given (it must name
        the same dialect), else the dialect's default for this problem."""
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS} or None, got {dialect!r}")
        if config is not None:
            if config.dialect != dialect:
                raise ValueError(f"dialect={dialect!r} but config.dialect is {config.dialect!r}")
            return config
        if dialect == "gluon":
            reason = gluon_reason(self._gluon_plan_reason, q, k, v, out)
            if reason is not None:
                raise ValueError(f"dialect='gluon': {reason}")
            return default_gluon_config(p.D, p.DV)
        config = self._fitted_config(p, axes)[0]
        return config if config.dialect == "tl" else self.heuristic_config(p, axes)

    @functools.cached_property
    def _gluon_plan_reason(self) -> str | None:
        """Why this variant's plan has no Gluon forward (None: it has one); computed once."""
        return gluon_unsupported(self.ir)

    def gluon_module(self):
        """The Gluon (sm90) forward module, rendered on first use (runtime/gluon.py)."""
        if self._gluon_module is None:
            self._gluon_module = load_gluon_module(self.ir, self.key)
        return self._gluon_module

    @property
    def gluon_source(self) -> str:
        """The generated Gluon forward (sm90) of this variant; ValueError when its plan has none."""
        from ..codegen.render_gluon import render_gluon  # only asked for by people reading it

        return render_gluon(self.ir)

    def _through_ops(self, call: AttentionCall, q, k, v, bound: dict[str, torch.Tensor], out):
        """The call as the custom op a graph records (torch.compile, torch.export)."""
        common = (self.key, q, k, v, list(bound.values()), call.scale, ops.encode_spatial(call.spatial_shape),
                  ops.encode_config(call.config))
        if kernel_launch_reason(self, call, q, k, v, bound, out) is None:  # Inductor launches the kernels
            out, lse = torch.ops.attngen.attention_kernels(*common, call.store_lse, call.return_lse, call.deterministic)
        elif out is not None:
            lse = (torch.empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32, device=q.device)
                   if call.return_lse else None)
            torch.ops.attngen.attention_into(*common, out, lse)
        else:
            out, lse = torch.ops.attngen.attention(*common, call.store_lse, call.return_lse, call.deterministic)
        return (out, lse) if call.return_lse else out

    def call_settings(self, scale: float | None, spatial_shape: str, config: str, store_lse: bool,
                      return_lse: bool, deterministic: bool) -> AttentionCall:
        """The AttentionCall the custom ops' arguments describe (decoded once per distinct call)."""
        key = (scale, spatial_shape, config, store_lse, return_lse, deterministic)
        call = self._calls.get(key)
        if call is None:
            call = AttentionCall(scale, ops.decode_spatial(spatial_shape) or None,
                                 ops.decode_config(config, KernelConfig), store_lse, return_lse, deterministic,
                                 cache_tiles=False)
            if len(self._calls) >= 64:  # a scale that changes every call: keep the memo bounded
                self._calls.clear()
            self._calls[key] = call
        return call

    def bind(self, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The variant's tensors by name, from the list the custom ops take (in ``prepare``'s order)."""
        return dict(zip(self._names, tensors))

    def _problem(self, call: AttentionCall, q, k, v) -> tuple[Problem, float, object]:
        """Sizes, scale and neighborhood axes of a validated call; memoized per shape, since
        a graph's op calls them on every step (host time is the budget there)."""
        signature = (q.shape, k.shape, v.shape[3], q.dtype, q.device, call.spatial_shape, call.scale)
        found = self._problems.get(signature)
        if found is None:
            B, HQ, Lq, D = q.shape
            p = Problem(B, HQ, k.shape[1], Lq, k.shape[2], D, v.shape[3], q.dtype, q.device)
            axes = None
            if self.ir.neighborhood is not None:
                axes = resolve_spatial(self.variant.mask, call.spatial_shape, p)[0]
            found = (p, (D ** -0.5 if call.scale is None else call.scale), axes)
            if len(self._problems) >= 64:  # dynamic shapes: keep the memo bounded
                self._problems.clear()
            self._problems[signature] = found
        return found

    def forward_impl(self, call: AttentionCall, q, k, v, bound: dict[str, torch.Tensor],
                     out: torch.Tensor | None = None, lse: torch.Tensor | None = None):
        """Launch the forward on validated inputs; returns (out, lse or None)."""
        p, sm_scale, axes = self._problem(call, q, k, v)
        module = self.module(p.device)
        if out is None:
            out = torch.empty((p.B, p.HQ, p.Lq, p.DV), dtype=p.dtype, device=p.device)
        # The log-sum-exp is written only where something reads it: a backward, or the caller.
        if lse is None and call.store_lse:
            lse = torch.empty((p.B, p.HQ, p.Lq), dtype=torch.float32, device=p.device)
        self.poison(out, lse)
        with device_guard(p.device):
            if call.config is not None:  # the caller's choice: no fallback
                reason = gluon_reason(self._gluon_plan_reason, q, k, v, out) if call.config.dialect == "gluon" else None
                if reason is not None:
                    raise ValueError(f"config.dialect='gluon': {reason}")
                tiles = self.tile_lists(p, bound, call.config, axes, call.cache_tiles)
                if call.config.dialect == "gluon":
                    if not _one_run_per_tile(tiles):
                        raise ValueError(f"config.dialect='gluon': {NOT_RUNS}")
                    module = self.gluon_module()
                module.launch_forward(q, k, v, out, lse, sm_scale, bound, tiles, call.config,
                                      **_wrap(call.config, p.device))
                self.last_config, self.last_config_source = call.config, "explicit"
            else:
                self.last_config = self._launch_with_fallback(module, p, q, k, v, out, lse, sm_scale, bound, axes,
                                                              call.cache_tiles)
        return out, lse

    def backward_impl(self, call: AttentionCall, q, k, v, out, lse, dout, dlse, bound: dict[str, torch.Tensor],
                      learnable: tuple[str, ...]):
        """(dq, dk, dv, {name: gradient or None}) for the tensors named in ``learnable``."""
        p, sm_scale, axes = self._problem(call, q, k, v)
        forward_config = call.config if call.config is not None else self._fitted_config(p, axes)[0]
        with device_guard(p.device):
            if forward_config.dialect == "gluon":  # the backward follows the forward's dialect where it can
                grads = self._gluon_backward(q, k, v, out, lse, dout, dlse, sm_scale, bound, learnable)
                if grads is not None:
                    self.last_backward_dialect = "gluon"
                    return grads
            self.last_backward_dialect = "tl"
            module = self.module(p.device)
            setup = self._backward_setup(module, p, sm_scale, bound, axes, learnable, call.deterministic,
                                         call.spatial_shape, call.cache_tiles)
            return run_backward(setup, forward_config, q, k, v, out, lse, dout, dlse)

    @functools.cached_property
    def _gluon_backward_plan_reason(self) -> str | None:
        """Why this variant's plan has no Gluon backward (None: it has one); computed once."""
        return gluon_backward_unsupported(self.ir)

    def _gluon_backward(self, q, k, v, out, lse, dout, dlse, sm_scale: float, bound: dict[str, torch.Tensor],
                        learnable: tuple[str, ...]):
        """(dq, dk, dv, grads) from the Gluon backward, or None where this call cannot take it
        (runtime/gluon.py's gluon_backward_reason; the GPU refusing its tiles): the tl backward
        then runs."""
        if gluon_backward_reason(self._gluon_backward_plan_reason, q, k, v) is not None:
            return None
        module = self.gluon_backward_module()  # rendered once the cheaper checks passed
        score_grads = tuple(n for n in learnable if n not in module.HOST_GRAD_TENSORS)
        if score_grads:  # gradients of tensors the score reads: the tl backward's atomics
            return None
        buffers = {n: torch.zeros(bound[n].shape, dtype=torch.float32, device=q.device) for n in learnable}
        if dout is None:
            dout = torch.zeros_like(out)
        try:
            dq, dk, dv = module.launch_backward_gluon(q, k, v, out, lse, dout, dlse, sm_scale, bound,
                                                      default_gluon_backward_config(q.shape[3], v.shape[3]),
                                                      buffers)
        except triton.runtime.errors.OutOfResources:
            return None
        return dq, dk, dv, {n: b.to(bound[n].dtype) for n, b in buffers.items()}

    def gluon_backward_module(self):
        """The Gluon (sm90) backward module, rendered on first use (runtime/gluon.py)."""
        if self._gluon_backward_module is None:
            self._gluon_backward_module = load_gluon_backward_module(self.ir, self.key)
        return self._gluon_backward_module

    def _backward_setup(self, module, p: Problem, sm_scale: float, bound: dict[str, torch.Tensor], axes,
                        learnable: tuple[str, ...], deterministic: bool, spatial_shape,
                        cache_tiles: bool = True) -> BackwardSetup:
        computed = set(module.HOST_GRAD_TENSORS) if deterministic else set(module.GRAD_TENSORS)
        in_kernel = frozenset(learnable) & computed

        def tiles_for(config: tuple[KernelConfig, KernelConfig]):
            kv_cfg, q_cfg = config
            if self.ir.strategy == NEIGHBORHOOD:
                return (plan_neighborhood(axes, kv_cfg.block_m, kv_cfg.block_n),
                        plan_neighborhood(axes, q_cfg.block_m, q_cfg.block_n))
            if self.ir.strategy == TILES:
                return (self.tile_lists(p, bound, kv_cfg, axes, cache_tiles).transposed(),
                        self.tile_lists(p, bound, q_cfg, axes, cache_tiles))
            return None, None

        def tensor_grads_in_torch(names, q, k, v, out, lse, dout, dlse):
            from .tensor_grads import score_tensor_grads  # the reference's evaluator: only when asked

            return score_tensor_grads(self.variant, names, q, k, v, out, lse, dout, dlse, sm_scale, bound,
                                      spatial_shape)

        # mostly whole tiles take the large backward tiles: dense, one-sided (causal-like) bands,
        # neighborhoods whose forward takes the dense kernel's tiles (wide windows) and tile
        # lists that the forward found to be runs of mostly full tiles (packed documents)
        if self.ir.strategy == NEIGHBORHOOD:
            small = not self.neighborhood_prefers_dense(p, axes)
        else:
            small = self.ir.strategy != DENSE and not self.ir.causal_like

        def small_tiles(forward_config: KernelConfig) -> bool:
            if self.ir.strategy == TILES:  # the forward's classification, cached by now
                return not self.tile_lists(p, bound, forward_config, axes, cache_tiles).mostly_full_runs
            return small

        return BackwardSetup(module, sm_scale, bound, small_tiles, learnable, in_kernel, tiles_for,
                             tensor_grads_in_torch)

    def config_for(self, device: torch.device, dtype: torch.dtype, D: int, DV: int, Lq: int, Lkv: int,
                   spatial_shape: tuple[int, ...] | None = None) -> KernelConfig:
        """The launch configuration the heuristic picks for this kernel at these sizes
        (neighborhood variants: at ``spatial_shape``)."""
        device = torch.device(device)
        if self.ir.strategy == NEIGHBORHOOD:
            if spatial_shape is None:
                raise TypeError("config_for: spatial_shape is required for neighborhood variants")
            probe = Problem(1, 1, 1, Lq, Lkv, D, DV, dtype, device)
            return self._neighborhood_config(probe, resolve_spatial(self.variant.mask, spatial_shape, probe)[0])
        return choose_config(device, dtype, D, DV, Lq, Lkv, tile_reads=self._tile_reads,
                             masked=self.ir.strategy != DENSE, sigmoid=self.ir.algorithm == "sigmoid",
                             halves=self._has_halves, score_mod=self._score_mod,
                             causal_like=self.ir.causal_like)

    @property
    def score_kind(self) -> str:
        """How the score is computed, as the shipped defaults' key names it: "reads" (a
        tensor read per (query, key) pair), "mod" (another score_mod) or "plain" (qk * scale)."""
        return "reads" if self._tile_reads else "mod" if self._score_mod else "plain"

    def neighborhood_prefers_dense(self, p: Problem, axes) -> bool:
        """Whether this grid runs with the dense kernel's tiles (else the masked ones)."""
        dense = choose_config(p.device, p.dtype, p.D, p.DV, p.Lq, p.Lkv, tile_reads=self._tile_reads)
        return prefers_dense_tiles(axes, dense.block_m, dense.block_n)

    def neighborhood_class(self, p: Problem, axes) -> str:
        """How this grid's forward runs: "masked" (the masked variants' small tiles: 2-D/3-D
        windows), "sparse" (block-sparse boxes, no shell of partial boxes even for two-halves
        query boxes, which it takes: H100 blocked 3-D 470 against 425 TFLOP/s, GNA 2-D 422
        against 378; benchmarks/NOTES.md, Neighborhoods, "two-halves query boxes") or "dense" (the dense kernel's tiles:
        1-D windows, where the halves lost 6%)."""
        if not self.neighborhood_prefers_dense(p, axes):
            return "masked"
        if self._has_halves and not self._score_mod:
            halves = choose_config(p.device, p.dtype, p.D, p.DV, p.Lq, p.Lkv, tile_reads=self._tile_reads,
                                   halves=True)
            if halves.halves and not plan_neighborhood(axes, halves.block_m, halves.block_n).has_partial:
                return "sparse"
        return "dense"

    def _neighborhood_config(self, p: Problem, axes) -> KernelConfig:
        kind = self.neighborhood_class(p, axes)
        return choose_config(p.device, p.dtype, p.D, p.DV, p.Lq, p.Lkv, tile_reads=self._tile_reads,
                             masked=kind == "masked", halves=kind == "sparse")

    def heuristic_config(self, p: Problem, axes) -> KernelConfig:
        """choose_config's pick for this call (the tuner's baseline and the last resort)."""
        return (self._neighborhood_config(p, axes) if self.ir.strategy == NEIGHBORHOOD
                else self.config_for(p.device, p.dtype, p.D, p.DV, p.Lq, p.Lkv))

    def _launch_with_fallback(self, module, p: Problem, q, k, v, out, lse, sm_scale, bound, axes,
                              cache_tiles: bool = True) -> KernelConfig:
        """Launch with the selected config (tuning record, shipped default or heuristic:
        attngen/autotune/select.py), stepping down while it does not fit the GPU (shared
        memory, registers); the config that fits is remembered for this problem class, so
        records are read once per class and later calls cost one dict lookup."""
        config, source = self._fitted_config(p, axes)
        remember = True
        if config.dialect == "gluon" and gluon_reason(self._gluon_plan_reason, q, k, v, out) is not None:
            # these inputs (strides, dtype) cannot take the Gluon forward; others of the class can
            config, source, remember = self.heuristic_config(p, axes), "heuristic", False
        self.last_config_source = source
        while True:
            tiles = self.tile_lists(p, bound, config, axes, cache_tiles)
            launcher = module
            if config.dialect == "gluon":
                if not _one_run_per_tile(tiles):  # this call's mask: tile lists the Gluon forward cannot walk
                    config, source, remember = self.heuristic_config(p, axes), "heuristic", False
                    self.last_config_source = source
                    continue
                launcher = self.gluon_module()
            try:
                launcher.launch_forward(q, k, v, out, lse, sm_scale, bound, tiles, config, **_wrap(config, p.device))
            except triton.runtime.errors.OutOfResources as exc:
                smaller = config.smaller()
                if smaller is None and config.dialect == "gluon":
                    smaller = self.heuristic_config(p, axes)
                if smaller is None:
                    raise RuntimeError(f"variant '{self.ir.name}': no launch configuration fits this GPU "
                                       f"({exc})") from exc
                config = smaller
                continue
            if remember:
                self._fitted[self._problem_class(p, axes)] = (config, source)
            return config

    @staticmethod
    def _problem_class(p: Problem, axes) -> tuple:
        # Lq/Lkv enter as their power-of-two bucket, the granularity of tuning records.
        return (p.device, p.dtype, p.D, p.DV, (p.Lq - 1).bit_length(), (p.Lkv - 1).bit_length(), axes)

    def _fitted_config(self, p: Problem, axes) -> tuple[KernelConfig, str]:
        """The config (and its source) a forward of this problem class launches with: the one
        that fitted before, else the selected one (record, shipped default or heuristic)."""
        fitted = self._fitted.get(self._problem_class(p, axes))
        if fitted is not None:
            return fitted
        from ..autotune.select import select_config  # deferred: the autotune package imports this module

        return select_config(self, p, axes, self._gluon_plan_reason is None and device_reason(p.device) is None)
