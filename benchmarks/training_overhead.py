"""Host overhead of one attngen call inside a compiled graph, against a bare Triton launch of
the same kernel (issue 24's target: within 10 us).

Every measurement runs a tiny causal forward (1 x 1 x 128 x 64, bf16, no grad), whose GPU
time is a few microseconds, back to back ``iters`` times and divides the host wall time by
``iters``: the GPU keeps up, so the figure is the host's cost per call.

- bare launch: the generated module's ``launch_forward`` with the config attngen chose (the
  Triton ``kernel[grid](...)`` call plus the few lines that compute its grid); and the same
  through the launch cache (attngen/runtime/fast_launch.py) that eager calls take;
- eager call: ``attn(q, k, v)``;
- graph, attngen: ``torch.compile(fullgraph=True)`` of a function making that one call, once
  per ATTNGEN_GRAPH_LAUNCH: "op" (the graph runs the ``attngen::attention`` custom op) and
  "inductor" (the graph launches the kernel itself: attngen/runtime/inductor_ops.py);
- graph, Triton: the same for a function whose one op Inductor turns into one Triton kernel,
  i.e. the compiled graph's own fixed cost plus one (Inductor's, cheaper) launch.

- graph, 8 attngen calls: a compiled function chaining eight calls (each call's output is the
  next one's q), so that (graph8 - graph1) / 7 is the host cost one more attngen call adds to a
  graph, without the graph's fixed cost (its guards and wrappers, paid once per graph however
  many ops it holds).

The target's figure is that marginal cost minus the bare launch. graph_attngen - bare_launch
is reported too: an upper bound, with the compiled graph's fixed cost in it. ``bare_launch``
reads the runtime's internals (``CompiledAttention.prepare``, ``.module``, ``.last_config``,
``launch_forward``'s arguments as the template writes them): where those change, change it.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

import attngen as ag
from attngen.runtime.fast_launch import fast
from bench_common import graph_launch

SHAPE = (1, 1, 128, 64)
TARGET_US = 10.0


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def host_us_per_call(fn: Callable[[], object], iters: int) -> float:
    for _ in range(min(20, iters)):
        fn()
    _sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync()
    return (time.perf_counter() - start) / iters * 1e6


def bare_launch(attn: ag.CompiledAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                wrap: Callable | None = None) -> Callable[[], None]:
    """The forward kernel's launch with everything the runtime computes per call done once;
    ``wrap``: None for Triton's own launch, attngen/runtime/fast_launch.py's ``fast`` for the
    launch cache that eager calls take."""
    with torch.no_grad():
        attn(q, k, v)  # picks the config
    p, sm_scale, bound, axes = attn.prepare(q, k, v)
    config = attn.last_config
    tiles = attn.tile_lists(p, bound, config, axes)
    module = attn.module(q.device)
    out = torch.empty_like(q)
    return lambda: module.launch_forward(q, k, v, out, None, sm_scale, bound, tiles, config, wrap=wrap)


def measure(device: torch.device, iters: int = 2000) -> dict[str, Any]:
    attn = ag.compile(ag.Variant(mask=ag.causal(), name="overhead_causal"))
    q, k, v = (torch.randn(SHAPE, device=device, dtype=torch.bfloat16) for _ in range(3))
    result: dict[str, Any] = {"shape": list(SHAPE), "iters": iters}
    graph_triton = torch.compile(lambda q, k, v: q * 2.0 + k, fullgraph=True)
    with torch.no_grad():
        result["bare_launch_us"] = host_us_per_call(bare_launch(attn, q, k, v), iters)
        result["cached_launch_us"] = host_us_per_call(bare_launch(attn, q, k, v, fast), iters)
        result["eager_call_us"] = host_us_per_call(lambda: attn(q, k, v), iters)
        result["graph_triton_us"] = host_us_per_call(lambda: graph_triton(q, k, v), iters)
    result["graph_fixed_cost_us"] = result["graph_triton_us"]  # a graph of one Inductor kernel
    lines = []
    for launch in LAUNCHES:  # the opaque op, then kernels that Inductor launches
        torch._dynamo.reset()
        with graph_launch(launch), torch.no_grad():
            one = torch.compile(lambda q, k, v: attn(q, k, v), fullgraph=True)
            chain = torch.compile(lambda q, k, v: chained(attn, q, k, v, CHAIN), fullgraph=True)
            found = {"graph_attngen_us": host_us_per_call(lambda: one(q, k, v), iters),
                     f"graph_attngen_x{CHAIN}_us": host_us_per_call(lambda: chain(q, k, v), iters)}
        # one more attngen call in a graph, without the graph's fixed cost
        marginal = (found[f"graph_attngen_x{CHAIN}_us"] - found["graph_attngen_us"]) / (CHAIN - 1)
        extra = marginal - result["bare_launch_us"]
        found.update(graph_marginal_call_us=marginal, attngen_in_graph_beyond_bare_launch_us=extra,
                     graph_call_beyond_bare_launch_us=found["graph_attngen_us"] - result["bare_launch_us"],
                     within_target=extra <= TARGET_US)
        result[launch] = found
        lines.append(f"ATTNGEN_GRAPH_LAUNCH={launch}: one more attngen call in a compiled graph costs {marginal:.1f} "
                     f"us of host time, {extra:.1f} us beyond the bare launch ({'met' if extra <= TARGET_US else 'NOT met'}); "
                     f"a graph of one call {found['graph_attngen_us']:.1f} us")
    result["within_target"] = any(result[launch]["within_target"] for launch in LAUNCHES)
    result["summary"] = (f"bare Triton launch of the kernel {result['bare_launch_us']:.1f} us, through the launch "
                         f"cache {result['cached_launch_us']:.1f} us (target: within "
                         f"{TARGET_US:g} us of it), eager call {result['eager_call_us']:.1f} us, a compiled graph of "
                         f"one Inductor kernel {result['graph_triton_us']:.1f} us. " + "; ".join(lines) + ".")
    return result


CHAIN = 8
LAUNCHES = ("op", "inductor")  # ATTNGEN_GRAPH_LAUNCH (attngen/runtime/graph_launch.py)


def chained(attn: ag.CompiledAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` attngen calls in a row, each one's output the next one's q (no two are the same op
    call, so a graph keeps all of them)."""
    for _ in range(n):
        q = attn(q, k, v)
    return q


def profile_paths(device: torch.device, iters: int = 500, top: int = 22) -> None:
    """cProfile of the bare launch, the eager call and the compiled graph's call: where the host
    time of each goes (functions by their own time)."""
    import cProfile
    import pstats

    attn = ag.compile(ag.Variant(mask=ag.causal(), name="overhead_causal"))
    q, k, v = (torch.randn(SHAPE, device=device, dtype=torch.bfloat16) for _ in range(3))
    graph_attngen = torch.compile(lambda q, k, v: attn(q, k, v), fullgraph=True)
    # a decoding step (bench_serving.py's B=1, Lkv=32K case, no content check)
    qd = torch.randn(1, 32, 1, 128, device=device, dtype=torch.bfloat16)
    kd, vd = (torch.randn(1, 8, 32768, 128, device=device, dtype=torch.bfloat16) for _ in range(2))
    lens = torch.full((1,), 32768, device=device, dtype=torch.int32)
    with torch.no_grad():
        for label, fn in (("bare launch", bare_launch(attn, q, k, v)),
                          ("bare launch through the launch cache", bare_launch(attn, q, k, v, fast)),
                          ("eager call", lambda: attn(q, k, v)),
                          ("compiled graph", lambda: graph_attngen(q, k, v)),
                          ("decode B=1 Lkv=32K", lambda: attn.decode(qd, kd, vd, lens, check=False))):
            print(f"{label}: {host_us_per_call(fn, 300):.1f} us per call", flush=True)
            host_us_per_call(fn, 50)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(iters):
                fn()
            profiler.disable()
            torch.cuda.synchronize()
            print(f"\n== {label}: {iters} calls", flush=True)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":  # the measurement alone: python benchmarks/training_overhead.py [--profile]
    import json
    import sys

    if not torch.cuda.is_available():
        raise SystemExit("training_overhead: needs a GPU")
    found = measure(torch.device("cuda"))
    print(json.dumps(found, indent=1))
    if "--profile" in sys.argv[1:]:
        profile_paths(torch.device("cuda"))
