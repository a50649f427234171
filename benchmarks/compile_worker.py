"""The measured side of the compile-time benchmark: one fresh process per measurement times its
own imports, the variant's declaration, the inputs (CUDA initialization), the first call and
the steady state, stage by stage, and prints the timings as JSON on its last stdout line.

Standard library only at module level: torch, attngen and triton are imported inside the
functions, after the clock for their import started.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from compile_variants import (GPU_SIZES, SMOKE_SIZES, Inputs, Sizes, attngen_call_kwargs, attngen_variant,
                              flex_mods, make_inputs)

def short_reason(exc: BaseException) -> str:
    """One line naming the exception: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


class StageFailed(Exception):
    """A stage raised; its reason is in ``Stopwatch.errors`` and later stages are skipped."""


class Stopwatch:
    """Times named stages, each ending with a device synchronization (set once CUDA is up)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.sync: Callable[[], None] = lambda: None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
            self.sync()
        except Exception as exc:
            self.errors[name] = short_reason(exc)
            traceback.print_exc()  # the parent keeps stderr in compile_logs/
            raise StageFailed(name) from exc
        self.times[name] = time.perf_counter() - start


def device_sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def forward_backward(fn: Callable, inputs: Inputs) -> None:
    """One training step's attention: a forward with gradients, then its backward."""
    q, k, v = (t.detach().requires_grad_() for t in (inputs.q, inputs.k, inputs.v))
    fn(q, k, v).backward(inputs.dout)


def attngen_worker(variant: str, sizes: Sizes, backward: bool) -> dict[str, Any]:
    watch, result = Stopwatch(), {"from_cache": None}
    try:
        with watch.stage("import_torch"):
            import torch
        with watch.stage("import_library"):
            import attngen as ag
        with watch.stage("declare"):
            declared = attngen_variant(ag, variant, sizes)
        with watch.stage("setup"):
            inputs = make_inputs(variant, sizes)
            watch.sync = device_sync(sizes.device)
        with watch.stage("compile"):
            attn = ag.compile(declared)
        result["from_cache"] = attn.from_cache
        kwargs = attngen_call_kwargs(variant, sizes, inputs)
        with torch.no_grad():
            for stage in ("first_fwd", "second_fwd"):
                with watch.stage(stage):
                    attn(inputs.q, inputs.k, inputs.v, **kwargs)
        if backward:
            with watch.stage("first_fwd_bwd"):
                forward_backward(lambda q, k, v: attn(q, k, v, **kwargs), inputs)
    except StageFailed:
        pass
    return {**result, "times": watch.times, "errors": watch.errors}


def flex_worker(variant: str, sizes: Sizes, backward: bool) -> dict[str, Any]:
    watch = Stopwatch()
    try:
        with watch.stage("import_torch"):
            import torch
        with watch.stage("import_library"):
            # Dynamo and Inductor too: torch.compile imports them lazily, and imports are
            # reported apart from the first call for attngen as well.
            import torch._dynamo
            import torch._inductor.compile_fx
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        with watch.stage("setup"):
            inputs = make_inputs(variant, sizes)
            watch.sync = device_sync(sizes.device)
        with watch.stage("declare"):
            score_mod, mask_mod = flex_mods(variant, sizes, inputs.tensors)
        L = sizes.seq_len(variant)
        with watch.stage("block_mask"):  # documents depend on the batch; the others broadcast
            block_mask = create_block_mask(mask_mod, sizes.B if variant == "documents" else None, None, L, L,
                                           device=sizes.device)
        with watch.stage("compile"):  # lazy: the work happens in the first call
            flex = torch.compile(flex_attention, dynamic=False)

        def call(q, k, v):
            return flex(q, k, v, score_mod=score_mod, block_mask=block_mask)

        with torch.no_grad():
            for stage in ("first_fwd", "second_fwd"):
                with watch.stage(stage):
                    call(inputs.q, inputs.k, inputs.v)
        if backward:
            with watch.stage("first_fwd_bwd"):
                forward_backward(call, inputs)
    except StageFailed:
        pass
    return {"times": watch.times, "errors": watch.errors}


def primer_worker(sizes: Sizes) -> dict[str, Any]:
    """Triton's one-time setup in a fresh Triton cache (its driver utilities, built with a C
    compiler). A new variant on a machine that has run Triton before does not pay it, so it
    runs once here, is reported apart, and its cache seeds every scenario's."""
    watch = Stopwatch()
    try:
        with watch.stage("import_torch"):
            import torch  # noqa: F401 - Triton's driver takes the current device and stream from torch
        with watch.stage("triton_setup"):
            import triton

            triton.runtime.driver.active.get_current_device()
    except StageFailed:
        pass
    return {"times": watch.times, "errors": watch.errors}


def worker_environment(sizes: Sizes) -> dict[str, Any]:
    """Versions and device, read after the timed stages."""
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as exc:
        env["triton"] = f"n/a ({short_reason(exc)})"
    if "attngen" in sys.modules:
        env["attngen"] = sys.modules["attngen"].__version__
    if sizes.device == "cuda":
        env["device"] = torch.cuda.get_device_name()
    else:
        env["device"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores), Triton interpreter"
    return env


def worker_main(args: argparse.Namespace) -> int:
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    backward = not args.no_backward
    if args.worker == "primer":
        result = primer_worker(sizes)
    elif args.worker == "attngen":
        result = attngen_worker(args.variant, sizes, backward)
    else:
        result = flex_worker(args.variant, sizes, backward)
    try:
        result["environment"] = worker_environment(sizes)
    except Exception as exc:  # a broken torch import is already in result["errors"]
        result["environment"] = {"error": short_reason(exc)}
    print(json.dumps(result), flush=True)  # the last stdout line is what the parent reads
    return 0
