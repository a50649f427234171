"""What the two training examples share: the residual block, the training loop with its
timing, the command line, and the JSON they write.

A run trains one model on a fixed list of batches from a given initial state, so that two
backends (or a backend and a perturbed copy of itself) see the same data and start from the
same weights. Nothing in the loop reads a value back to the host: losses stay on the device
until the run ends, and step times come from CUDA events (wall clock on the CPU).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

Tensor = torch.Tensor
Batch = tuple[Tensor, Tensor]
TIMING_WARMUP = 5  # steps after the first (compile) step left out of the median step time


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); any (B, ..., dim) layout."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def small_normal_init(model: nn.Module, std: float = 0.02) -> None:
    """GPT-2's initialization (N(0, 0.02) weights, zero biases) for Linear, Conv and Embedding."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


@dataclass
class Run:
    """One training run: per-step losses and step times (ms); step 0 includes compilation."""

    backend: str
    losses: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    first_step_s: float = 0.0

    @property
    def median_step_ms(self) -> float | None:
        timed = self.step_ms[1 + TIMING_WARMUP:]
        return statistics.median(timed) if timed else None

    def to_dict(self) -> dict:
        return {**asdict(self), "median_step_ms": self.median_step_ms}


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


class Trainer:
    """A model, compiled once (or not), trained from any initial state on a list of batches.

    ``model(inputs, targets)`` returns the scalar loss. ``amp``: bf16 autocast with float32
    weights and optimizer state (the usual mixed-precision recipe; see bench_training.py).
    """

    def __init__(self, model: nn.Module, compile: bool, amp: bool, fullgraph: bool = True) -> None:
        self.model, self.amp = model, amp
        self.device = next(model.parameters()).device
        self.forward = torch.compile(model, fullgraph=fullgraph) if compile else model

    def run(self, backend: str, init_state: dict[str, Tensor], batches: Sequence[Batch], lr: float,
            warmup: int) -> Run:
        self.model.load_state_dict(init_state)
        self.model.train()
        opt = self._optimizer(lr)
        cuda = self.device.type == "cuda"
        losses, times = [], []
        for step, (inputs, targets) in enumerate(batches):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, len(batches), lr, warmup)
            timer = _CudaTimer() if cuda and step > 0 else _WallTimer(self.device)
            loss = self._step(opt, inputs, targets)
            times.append(timer.stop())
            losses.append(loss)
        step_ms = [t() if callable(t) else t for t in times]
        run = Run(backend, torch.stack(losses).float().cpu().tolist(), step_ms, first_step_s=step_ms[0] / 1000.0)
        if not all(math.isfinite(x) for x in run.losses):
            raise FloatingPointError(f"{backend}: loss is not finite at step "
                                     f"{next(i for i, x in enumerate(run.losses) if not math.isfinite(x))}")
        return run

    def _optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)

    def _step(self, opt: torch.optim.Optimizer, inputs: Tensor, targets: Tensor) -> Tensor:
        """One training step; returns the (detached) loss, left on the device."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.forward(inputs, targets)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def time_steps(self, batches: Sequence[Batch], lr: float) -> float:
        """Median ms of one training step over ``batches``, continuing from the current weights
        with a fresh optimizer (its first step, which creates the optimizer state, is left out):
        bench_training.py's interleaved timing rounds."""
        self.model.train()
        opt = self._optimizer(lr)
        cuda = self.device.type == "cuda"
        times = []
        for inputs, targets in batches:
            timer = _CudaTimer() if cuda else _WallTimer(self.device)
            self._step(opt, inputs, targets)
            times.append(timer.stop())
        step_ms = [t() if callable(t) else t for t in times]
        return statistics.median(step_ms[1:] or step_ms)


class _CudaTimer:
    """Events around a step; read after the run (no sync inside the loop)."""

    def __init__(self) -> None:
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.start.record()

    def stop(self) -> Callable[[], float]:
        self.end.record()
        return lambda: (self.end.synchronize(), self.start.elapsed_time(self.end))[1]


class _WallTimer:
    """Host wall clock, synchronizing the device at both ends (the first step, and the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sync()
        self.start = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stop(self) -> float:
        self._sync()
        return (time.perf_counter() - self.start) * 1000.0


def perturbed(state: dict[str, Tensor], relative: float, seed: int) -> dict[str, Tensor]:
    """``state`` with every floating tensor multiplied by (1 + u), u uniform in +-``relative``:
    a run from it measures how far training drifts from rounding-sized differences."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if t.is_floating_point():
            noise = (torch.rand(t.shape, generator=gen, dtype=torch.float64) * 2 - 1) * relative
            t = (t.double() * (1 + noise)).to(t.dtype)
        out[name] = t
    return out


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def add_arguments(parser: argparse.ArgumentParser, backends: Sequence[str], default_backends: Sequence[str]) -> None:
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", nargs="+", choices=list(backends), default=list(default_backends),
                        help="backends to train, one run each, same seed, init and data")
    parser.add_argument("--preset", choices=("tiny", "full"), default=None,
                        help="model and data sizes (default: full on CUDA, tiny on the CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: on CUDA only)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on CUDA only; the CPU runs float32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for the run's JSON")


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU")
    args.preset = args.preset or ("full" if cuda else "tiny")
    args.compile = cuda if args.compile is None else args.compile
    args.amp = cuda if args.amp is None else args.amp
    return args


def train_backends(make_model: Callable[[str], nn.Module], backends: Sequence[str], batches: Sequence[Batch],
                   args: argparse.Namespace, lr: float, warmup: int, report: Callable[[list[Run]], None]) -> list[Run]:
    """One run per backend from the same initial weights (the first backend's model, built
    under ``args.seed``); ``report`` sees the runs so far after each one."""
    torch.manual_seed(args.seed)
    init = cpu_state(make_model(backends[0]))
    runs: list[Run] = []
    for backend in backends:
        torch._dynamo.reset()  # each backend compiles its own graphs from scratch
        trainer = Trainer(make_model(backend), args.compile, args.amp)
        runs.append(trainer.run(backend, init, batches, lr, warmup))
        report(runs)
    return runs


def script_main(script: str, doc: str, backends: Sequence[str], default_backends: Sequence[str], presets: dict,
                make_batches: Callable, make_model: Callable, describe: Callable, argv: list[str] | None) -> dict:
    """A training example's command line: parse, generate the batches, train each backend,
    print a summary and write ``<out>/<script>.json`` after every run (partial results survive
    a failure). ``make_batches(cfg, steps, seed, device)``, ``make_model(backend, cfg, device)``,
    ``describe(cfg) -> str``. Returns the JSON payload."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_arguments(parser, backends, default_backends)
    args = resolve_defaults(parser.parse_args(argv))
    cfg = presets[args.preset]
    steps = args.steps or cfg.steps
    device = torch.device(args.device)
    batches = make_batches(cfg, steps, args.seed, device)
    print(f"{describe(cfg)} ({args.preset}); {steps} steps on {device}, compile={args.compile}, "
          f"bf16 autocast={args.amp}")
    payload = {"script": script, "config": asdict(cfg), "steps": steps, "device": str(device),
               "compile": args.compile, "amp": args.amp, "seed": args.seed, "runs": {}}

    def report(runs: list[Run]) -> None:
        payload["runs"] = {r.backend: r.to_dict() for r in runs}
        write_json(args.out, script, payload)

    print_runs(train_backends(lambda b: make_model(b, cfg, device), args.backend, batches, args, cfg.lr,
                              cfg.warmup, report))
    return payload


def print_runs(runs: Sequence[Run]) -> None:
    for run in runs:
        median = run.median_step_ms
        print(f"{run.backend:>8}: loss {run.losses[0]:.4f} -> {run.losses[-1]:.4f} over {len(run.losses)} steps; "
              f"first step {run.first_step_s:.1f} s; median step "
              f"{'-' if median is None else f'{median:.2f} ms'}")


def write_json(out_dir: Path | None, name: str, payload: dict) -> Path | None:
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
