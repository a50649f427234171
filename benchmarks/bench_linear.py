"""Linear-attention benchmark: attngen's chunked kernels against flash-linear-attention.

    PYTHONPATH=. python benchmarks/bench_linear.py --out DIR [--sweep] [--lengths 2048,4096,16384]
    PYTHONPATH=. python benchmarks/bench_linear.py --smoke        # CPU, Triton interpreter, tiny sizes

Case (PEERS.md): B=8, H=32, D=Dv=128, bf16, causal with per-head decay (Lightning Attention's
ALiBi-slope rates), identity feature map, no normalizer: the built-in `lightning` variant,
which is exactly fla's ``chunk_simple_gla(q, k, v, g_gamma=decay_log, scale=1.0)`` (fla does
not normalize, and its g_gamma is the same natural-log per-head decay). Also timed on the
same shape: attngen's causal softmax (``ag.Variant(mask=ag.causal())``).

Inputs live in fla's (B, L, H, D) layout; attngen reads the same memory through
``.transpose(1, 2)`` views (no copies). Before timing, attngen's output and gradients are
compared with fla's, and its output with the float64 reference on a prefix of one batch
(the causal output of the first T tokens depends on those tokens only). Times are medians
of triton.testing.do_bench; "forward" runs under no_grad, "fwd+bwd" is one
``out.backward(dout)`` step. fla is imported if installed, else unpacked from
.whl/fla_core-*.whl into the temp folder (see load_fla). Writes DIR/linear.md and
DIR/linear.json (DIR: --out, else $OUT, else benchmarks/results/linear/; --smoke: a temporary folder).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path
from typing import Callable

import torch

import attngen as ag
from attngen.library import builtin

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import alibi_slopes  # noqa: E402 - benchmarks/ is a folder of scripts
from report import relative_l2, short_reason  # noqa: E402
from result_files import default_out, git_commit  # noqa: E402

MAX_REL_ERR = 2e-2  # bf16 inputs; above this a backend is flagged WRONG


def alibi_decay(heads: int) -> torch.Tensor:
    """Lightning Attention's per-head decay: rates 2^(-8 (h+1) / H) (ALiBi's slopes), as logs."""
    return -alibi_slopes(heads)


def parse_config(text: str | None) -> ag.LinearConfig | None:
    """'chunk,block_k,block_v,warps,stages' -> LinearConfig."""
    if not text:
        return None
    try:
        return ag.LinearConfig(*(int(x) for x in text.split(",")))
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"a config is chunk,block_k,block_v,warps,stages: {exc}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="CPU under the Triton interpreter, tiny sizes")
    p.add_argument("--lengths", default=None, help="comma-separated L (default 2048,4096,16384)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--fwd-config", type=parse_config, default=None, help="chunk,block_k,block_v,warps,stages")
    p.add_argument("--bwd-config", type=parse_config, default=None, help="chunk,block_k,block_v,warps,stages")
    p.add_argument("--sweep", action="store_true", help="also time attngen over a grid of LinearConfigs "
                                                         "at the first length")
    p.add_argument("--sweep-budget", type=float, default=480.0, help="seconds the sweep may take (default 480)")
    p.add_argument("--warmup", type=float, default=25.0)
    p.add_argument("--rep", type=float, default=100.0)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.heads, args.dim = 1, 2, 32
        args.lengths = args.lengths or "64,96"
    args.lengths = [int(x) for x in (args.lengths or "2048,4096,16384").split(",")]
    args.out = args.out or default_out("linear", args.smoke)
    return args


def timer(args: argparse.Namespace, cuda: bool) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds: do_bench on the GPU, perf_counter around a few calls on the CPU."""
    if cuda:
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")

    def cpu(fn):
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return cpu


def load_fla():
    """fla's chunk_simple_gla: installed, else unpacked from .whl/fla_core-*.whl (a pure-Python
    wheel; the GPU machine has no network). fla.ops/__init__ imports every op and some need
    einops; chunk_simple_gla does not, so without einops fla.ops is entered as a bare package."""
    if not torch.cuda.is_available():
        raise RuntimeError("fla's kernels need CUDA")
    try:
        import fla  # noqa: F401
    except ModuleNotFoundError:
        wheels = sorted((Path(__file__).resolve().parent.parent / ".whl").glob("fla_core-*.whl"))
        if not wheels:
            raise
        target = Path(tempfile.gettempdir()) / wheels[-1].stem
        if not (target / "fla").is_dir():
            zipfile.ZipFile(wheels[-1]).extractall(target)
        sys.path.insert(0, str(target))
        import fla  # noqa: F401
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ModuleNotFoundError as exc:
        if exc.name != "einops":
            raise
        ops = types.ModuleType("fla.ops")
        ops.__path__ = [str(Path(fla.__file__).parent / "ops")]
        sys.modules["fla.ops"] = ops
        from fla.ops.simple_gla.chunk import chunk_simple_gla
    return chunk_simple_gla


def make_backends(args, decay_log):
    """name -> (forward fn(q, k, v) -> out in (B, L, H, D) memory order) for each backend."""
    lightning = ag.compile(builtin("lightning"))
    softmax = ag.compile(ag.Variant(mask=ag.causal()))
    backends = {
        "attngen": lambda q, k, v: lightning(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             decay_log=decay_log, config=args.fwd_config,
                                             backward_config=args.bwd_config).transpose(1, 2),
        "attngen softmax": lambda q, k, v: softmax(q.transpose(1, 2), k.transpose(1, 2),
                                                   v.transpose(1, 2)).transpose(1, 2),
    }
    try:
        fla = load_fla()
        backends["fla"] = lambda q, k, v: fla(q, k, v, g_gamma=decay_log, scale=1.0)[0]
    except Exception as exc:  # recorded, the run goes on
        backends["fla"] = exc
    return backends, lightning


def measure_length(args, L: int, device: str, dtype: torch.dtype, bench) -> dict:
    B, H, D = args.batch, args.heads, args.dim
    gen = torch.Generator(device=device).manual_seed(L)
    q, k, v = (torch.randn(B, L, H, D, generator=gen, device=device, dtype=dtype).requires_grad_()
               for _ in range(3))
    dout = torch.randn(B, L, H, D, generator=gen, device=device, dtype=dtype)
    decay_log = alibi_decay(H).to(device)
    backends, lightning = make_backends(args, decay_log)
    row = {"L": L, "backends": {}}
    outputs, grads = {}, {}
    for name, fn in backends.items():
        cell = row["backends"][name] = {}
        if isinstance(fn, Exception):
            cell["error"] = short_reason(fn)
            continue
        try:
            for t in (q, k, v):
                t.grad = None
            out = fn(q, k, v)
            out.backward(dout)
            outputs[name], grads[name] = out.detach(), [t.grad.clone() for t in (q, k, v)]
            with torch.no_grad():
                cell["fwd_ms"] = bench(lambda: fn(q, k, v))
            cell["fwd_bwd_ms"] = bench(lambda: fn(q, k, v).backward(dout))
        except Exception as exc:
            cell["error"] = short_reason(exc)
        print(f"L={L} {name}: {cell}", flush=True)
    row["attngen_config"] = f"fwd {lightning.last_config}, bwd {lightning.last_backward_config}"
    # correctness: attngen against fla (same semantics) and against the float64 reference
    if "attngen" in outputs and "fla" in outputs:
        row["err_vs_fla"] = {"out": relative_l2(outputs["attngen"], outputs["fla"])}
        row["err_vs_fla"].update({f"d{n}": relative_l2(a, b) for n, a, b in
                                  zip("qkv", grads["attngen"], grads["fla"])})
    T = min(L, 1024)
    with torch.no_grad():
        qs, ks, vs = (t[:1, :T, :min(H, 4)].transpose(1, 2) for t in (q, k, v))
        ref = ag.reference(lightning.variant)(qs, ks, vs, decay_log=decay_log[:min(H, 4)])
        if "attngen" in outputs:
            row["err_vs_reference"] = relative_l2(outputs["attngen"][:1, :T, :min(H, 4)].transpose(1, 2), ref)
        if "fla" in outputs:
            row["fla_err_vs_reference"] = relative_l2(outputs["fla"][:1, :T, :min(H, 4)].transpose(1, 2), ref)
    return row


def sweep_grid(small: bool) -> list[tuple[str, ag.LinearConfig]]:
    """(kind, config) points, the heuristic's neighbourhood first: forward over chunk,
    block_v, warps and stages; backward over chunk, block_k, block_v, warps and stages."""
    if small:
        return [(kind, ag.LinearConfig(32, b, b, 4, 1)) for kind in ("forward", "backward") for b in (16, 32)]
    fwd = [ag.LinearConfig(c, 64, bv, w, s) for c, bv, w, s in
           itertools.product((64, 128), (64, 128, 32), (4, 8), (2, 3, 1))]
    bwd = [ag.LinearConfig(c, bk, bv, w, s) for c, bk, bv, w, s in
           itertools.product((64, 128), (64, 128, 32), (64, 128), (4, 8), (2, 3))]
    return [("forward", c) for c in fwd] + [("backward", c) for c in bwd]


def sweep(args, L: int, device: str, dtype: torch.dtype, bench) -> list[dict]:
    """attngen's forward and backward over a grid of LinearConfigs (until --sweep-budget
    seconds have passed), each checked against the heuristic's output or gradients."""
    B, H, D = args.batch, args.heads, args.dim
    q, k, v = (torch.randn(B, H, L, D, device=device, dtype=dtype).requires_grad_() for _ in range(3))
    dout = torch.randn_like(q)
    decay_log = alibi_decay(H).to(device)
    attn = ag.compile(builtin("lightning"))
    with torch.no_grad():
        want = attn(q, k, v, decay_log=decay_log)
    attn(q, k, v, decay_log=decay_log).backward(dout)
    want_grads = [t.grad.clone() for t in (q, k, v)]
    points, start = [], time.monotonic()
    for kind, cfg in sweep_grid(args.smoke):
        point = {"kind": kind, "config": str(cfg)}
        points.append(point)
        if time.monotonic() - start > args.sweep_budget:
            point["error"] = "skipped (sweep budget)"
            continue
        try:
            if kind == "forward":
                with torch.no_grad():
                    point["err"] = relative_l2(attn(q, k, v, decay_log=decay_log, config=cfg), want)
                    point["ms"] = bench(lambda: attn(q, k, v, decay_log=decay_log, config=cfg))
            else:
                for t in (q, k, v):
                    t.grad = None
                attn(q, k, v, decay_log=decay_log, backward_config=cfg).backward(dout)
                point["err"] = max(relative_l2(t.grad, g) for t, g in zip((q, k, v), want_grads))
                point["ms"] = bench(lambda: attn(q, k, v, decay_log=decay_log, backward_config=cfg).backward(dout))
        except Exception as exc:
            point["error"] = short_reason(exc)
        print(f"sweep {point}", flush=True)
    return points


def cell(row: dict, name: str, key: str) -> str:
    c = row["backends"].get(name, {})
    if "error" in c:
        return f"n/a ({c['error'][:60]})"
    ms, ours = c.get(key), row["backends"].get("attngen", {}).get(key)
    if ms is None:
        return "-"
    return f"{ms:.3f}" + (f" (x{ms / ours:.2f})" if name != "attngen" and ours else "")


def markdown(env: dict, rows: list[dict], points: list[dict]) -> str:
    lines = [
        "# attngen linear attention benchmark", "",
        f"- date (UTC): {env['date_utc']}; device: {env['device']}; torch {env['torch']}, Triton {env['triton']}, "
        f"attngen {env.get('attngen', '?')} (commit {env.get('commit', '?')})",
        f"- B={env['B']} H={env['H']} D=Dv={env['D']}, {env['dtype']}, causal, per-head decay (Lightning/ALiBi "
        "rates), no feature map, no normalizer (attngen `lightning` = fla chunk_simple_gla(g_gamma, scale=1.0))",
        "- ms: median of do_bench; (xR) = that backend's time / attngen linear's (R > 1: attngen faster)",
        "- err: relative L2, attngen vs fla (out, dq, dk, dv) and vs the float64 reference (out, prefix of 1024 "
        "tokens, 4 heads)", "",
        "| L | attngen fwd | fla fwd | attngen softmax fwd | attngen fwd+bwd | fla fwd+bwd | "
        "attngen softmax fwd+bwd | err vs fla (out/dq/dk/dv) | err vs ref | attngen config |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fla_err = "/".join(f"{r['err_vs_fla'][k]:.1e}" for k in ("out", "dq", "dk", "dv")) if "err_vs_fla" in r else "-"
        ref_err = f"{r['err_vs_reference']:.1e}" if "err_vs_reference" in r else "-"
        lines.append(f"| {r['L']} | {cell(r, 'attngen', 'fwd_ms')} | {cell(r, 'fla', 'fwd_ms')} | "
                     f"{cell(r, 'attngen softmax', 'fwd_ms')} | {cell(r, 'attngen', 'fwd_bwd_ms')} | "
                     f"{cell(r, 'fla', 'fwd_bwd_ms')} | {cell(r, 'attngen softmax', 'fwd_bwd_ms')} | {fla_err} | "
                     f"{ref_err} | {r['attngen_config']} |")
    if points:
        lines += ["", f"## LinearConfig sweep at L={env['sweep_L']} (err against the heuristic's result; "
                  "backward rows time forward+backward with the heuristic's forward)", "",
                  "| kind | config | ms | err |", "|---|---|---|---|"]
        ok = sorted((p for p in points if "ms" in p), key=lambda p: (p["kind"], p["ms"]))
        lines += [f"| {p['kind']} | {p['config']} | {p['ms']:.3f} | {p['err']:.1e} |" for p in ok]
        lines += [f"| {p['kind']} | {p['config']} | n/a ({p['error'][:60]}) | |" for p in points if "error" in p]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if args.smoke and torch.cuda.is_available():
        print("--smoke runs the CPU path; on a GPU machine run without it")
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)  # interpreter: no bf16 dots
    import triton

    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
           "device": torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter)",
           "torch": torch.__version__, "triton": triton.__version__, "attngen": ag.__version__,
           "commit": git_commit(), "B": args.batch, "H": args.heads,
           "D": args.dim, "dtype": str(dtype).replace("torch.", ""), "lengths": args.lengths,
           "fwd_config": str(args.fwd_config), "bwd_config": str(args.bwd_config)}
    bench = timer(args, cuda)
    rows = [measure_length(args, L, device, dtype, bench) for L in args.lengths]
    points = []
    if args.sweep:
        env["sweep_L"] = args.lengths[0]
        points = sweep(args, args.lengths[0], device, dtype, bench)
    failures = [r["L"] for r in rows if r.get("err_vs_reference", 0.0) >= MAX_REL_ERR
                or any(e >= MAX_REL_ERR for e in r.get("err_vs_fla", {}).values())]
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(env, rows, points)
    (args.out / "linear.md").write_text(text)
    (args.out / "linear.json").write_text(json.dumps({"environment": env, "rows": rows, "sweep": points},
                                                     indent=2) + "\n")
    print(text)
    print(f"wrote {args.out / 'linear.md'} and linear.json")
    if failures:
        print(f"!!! attngen disagrees with fla or the reference at L={failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
