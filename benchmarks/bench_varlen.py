"""Serving benchmark, variable-length batches and the linear-attention decode step (the
decode and paged-cache parts are benchmarks/bench_serving.py).

    PYTHONPATH=. python benchmarks/bench_varlen.py [--quick] [--backward] [--out DIR]
    PYTHONPATH=. python benchmarks/bench_varlen.py --smoke     # CPU, Triton interpreter, tiny sizes

1. Varlen prefill (issue 26): 16 sequences of random lengths (seeded) totalling 32768 tokens,
   causal, bf16, H=16, D=128, packed (total, H, D). attngen's ``ag.varlen_attention`` against
   ``torch.compile(flex_attention)`` on the same tokens as one (1, H, total, D) sequence with
   the equivalent BlockMask (same sequence & causal, built once: its creation time is
   reported apart), and SDPA (flash, cuDNN) over the padded batch (16, H, max_len, D) with
   is_causal (the attention alone: padding and unpadding untimed, in SDPA's favor). attngen
   is timed three ways: ``steady`` (the same cu_seqlens tensors every call, as the layers of a
   model see them: checked and planned once), ``check=False``, and ``new batch`` (a fresh
   cu_seqlens tensor every call: the offsets check's host sync and the tile plans each time),
   and at three other launch configs (``CONFIGS``; not with --quick), which tell whether the
   tile-list kernels' default (64x64, measured on packed documents) suits varlen's causal-like
   plans. ``--backward`` adds forward+backward for attngen and Flex.
2. Linear decode step: the built-in ``lightning`` variant (identity feature map, per-head
   decay, no normalizer), H=32, D=Dv=128, bf16 tokens, fp32 state, one new token per sequence
   at B = 1, 8, 64: ``attn.step`` time and the state traffic it achieves (read + write of
   B*H*D*Dv*4 bytes) against the measured device copy bandwidth; fla's
   ``fused_recurrent_simple_gla`` beside it when fla is importable (or its wheel is under
   .whl/, as benchmarks/bench_linear.py loads it). Also the prefill's cost of writing the
   final state: ``attn.prefill`` against ``attn(q, k, v)`` at B=8, H=32, L=4096.

Outputs are checked before timing (relative L2 against a peer or the chunked kernel; over 2e-2
is flagged WRONG and the exit status is 1). Times are triton.testing.do_bench medians.
Results: DIR/varlen.md and DIR/varlen.json (DIR: --out, else $OUT, else
benchmarks/results/serving/; --smoke: a temporary folder). A backend that fails is recorded
with its reason and the run goes on. About 1.5 minutes on an H100 (--quick: about half).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

import attngen as ag
from attngen.library import builtin
from attngen.varlen import varlen_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import alibi_slopes, compiled_flex, run_environment, sdpa_fn, timed_block_mask  # noqa: E402
from report import relative_l2, short_reason  # noqa: E402
from result_files import default_out, git_commit, write_atomic  # noqa: E402

MAX_REL_ERR = 2e-2
# launch configs timed beside the selected one (the tile-list kernels' shipped default is
# 64x64 on 4 warps, measured on packed documents; closed-form varlen plans are causal-like)
CONFIGS = (ag.KernelConfig(128, 128, 8, 3), ag.KernelConfig(128, 64, 8, 3), ag.KernelConfig(128, 64, 4, 3))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default $OUT, else benchmarks/results/serving/)")
    p.add_argument("--smoke", action="store_true", help="CPU under the Triton interpreter, tiny sizes, no peers")
    p.add_argument("--quick", action="store_true", help="shorter timing runs, decode at B=1 and 64 only")
    p.add_argument("--backward", action="store_true", help="also time varlen forward+backward (attngen, Flex)")
    p.add_argument("--total", type=int, default=32768, help="packed tokens of the varlen batch (default 32768)")
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--decode-heads", type=int, default=32)
    p.add_argument("--decode-batches", default="1,8,64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=float, default=25.0)
    p.add_argument("--rep", type=float, default=100.0)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.rep, args.decode_batches = 10.0, 40.0, "1,64"
    if args.smoke:
        args.total, args.sequences, args.heads, args.dim, args.decode_heads, args.decode_batches = 200, 4, 2, 32, 2, "1"
    args.decode_batches = [int(b) for b in args.decode_batches.split(",")]
    args.out = args.out or default_out("serving", args.smoke)
    return args


def timer(args, cuda: bool) -> Callable[[Callable[[], object]], float]:
    """Median ms: do_bench on the GPU; on the CPU one call's wall time (no performance figure)."""
    if cuda:
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median"))

    def once(fn):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return once


def attempt(record: dict, name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a failure is recorded under ``record[name]`` and the run goes on."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a peer that fails is a result, not a crash
        record[name] = {"error": short_reason(exc)}
        return None


# --------------------------------------------------------------------------- 1. varlen prefill
def random_lengths(total: int, n: int, seed: int) -> list[int]:
    """n lengths >= 1 summing to total: n - 1 distinct random cut points."""
    gen = torch.Generator().manual_seed(seed)
    cuts = (torch.randperm(total - 1, generator=gen)[: n - 1] + 1).sort().values.tolist()
    return [b - a for a, b in zip([0] + cuts, cuts + [total])]


def bench_varlen(args, device: torch.device, dtype: torch.dtype, bench) -> dict:
    lengths = random_lengths(args.total, args.sequences, args.seed)
    T, H, D, longest = args.total, args.heads, args.dim, max(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    q, k, v = (torch.randn(T, H, D, generator=gen, device=device, dtype=dtype) for _ in range(3))
    entries = sum(L * (L + 1) // 2 for L in lengths)
    flops = 4.0 * H * D * entries
    result: dict[str, Any] = {"case": f"varlen causal, {len(lengths)} sequences, total {T}, H={H}, D={D}",
                              "lengths": lengths, "attended_entries": entries, "backends": {}}
    backends = result["backends"]
    attn = ag.compile(ag.Variant(mask=ag.causal(), name="causal"))

    def varlen(cu_q=cu, check=True):
        return ag.varlen_attention(attn, q, k, v, cu_q, cu_q, longest, longest, check=check)

    with torch.no_grad():
        start = time.perf_counter()
        out = varlen()
        backends["attngen"] = {"setup_s": time.perf_counter() - start}
        ref = out.float()
        variants = {"attngen": lambda: varlen(), "attngen check=False": lambda: varlen(check=False),
                    "attngen new batch": lambda: varlen(cu_q=cu.clone())}
        for name, fn in variants.items():
            backends.setdefault(name, {})["ms"] = bench(fn)
        launched = varlen_kernel(attn).last_config
        backends["attngen"]["config"] = None if launched is None else (
            f"{launched.block_m}x{launched.block_n} w{launched.num_warps} s{launched.num_stages}")
        for config in ([] if args.quick or device.type != "cuda" else CONFIGS):
            name = f"attngen {config.block_m}x{config.block_n} w{config.num_warps} s{config.num_stages}"

            def timed(config=config, name=name):
                fn = lambda: ag.varlen_attention(attn, q, k, v, cu, cu, longest, longest, config=config)  # noqa: E731
                backends[name] = {"rel_err_vs_attngen": relative_l2(fn().float(), ref)}
                backends[name]["ms"] = bench(fn)

            attempt(backends, name, timed)
        if device.type == "cuda":
            peers = peer_backends(args, q, k, v, lengths, cu, backends)
            for name, (fn, unpack) in peers.items():
                got = attempt(backends, name, lambda: unpack(fn()))
                if got is None:
                    continue
                backends[name]["rel_err_vs_attngen"] = relative_l2(got.float(), ref)
                backends[name]["ms"] = bench(fn)
    for name, entry in backends.items():
        if "ms" in entry:
            entry["tflops"] = flops / entry["ms"] / 1e9
    if args.backward:
        result["fwd+bwd"] = bench_varlen_backward(args, attn, q, k, v, cu, longest, flops, bench, device)
    return result


def peer_backends(args, q, k, v, lengths, cu, backends) -> dict:
    """name -> (timed fn, fn's output -> packed (T, H, D)) for FlexAttention and SDPA."""
    T, H, D = q.shape
    longest, B = max(lengths), len(lengths)
    peers = {}
    seq_ids = torch.repeat_interleave(torch.arange(B, device=q.device), torch.tensor(lengths, device=q.device))

    def same_sequence_causal(b, h, q_idx, kv_idx):
        return (seq_ids[q_idx] == seq_ids[kv_idx]) & (q_idx >= kv_idx)

    def flex():
        block_mask, seconds = timed_block_mask(same_sequence_causal, T, q.device)
        _, again = timed_block_mask(same_sequence_causal, T, q.device)
        backends["flex"] = {"block_mask_s_first": seconds, "block_mask_s": again}
        q4, k4, v4 = (x.permute(1, 0, 2)[None].contiguous() for x in (q, k, v))
        flex_fn = compiled_flex()
        return lambda: flex_fn(q4, k4, v4, block_mask=block_mask)

    fn = attempt(backends, "flex", flex)
    if fn is not None:
        peers["flex"] = (fn, lambda o: o[0].permute(1, 0, 2))
    padded = [torch.zeros(B, H, longest, D, dtype=q.dtype, device=q.device) for _ in range(3)]
    for s, (a, L) in enumerate(zip(cu[:-1].tolist(), lengths)):
        for dst, src in zip(padded, (q, k, v)):
            dst[s, :, :L] = src[a:a + L].transpose(0, 1)

    def unpad(o):
        return torch.cat([o[s, :, :L].transpose(0, 1) for s, L in enumerate(lengths)])

    for name in ("sdpa_flash", "sdpa_cudnn"):
        peers[f"{name} padded"] = (sdpa_fn(name, *padded, causal=True), unpad)
        backends[f"{name} padded"] = {"computed_entries": B * longest * (longest + 1) // 2}
    return peers


def bench_varlen_backward(args, attn, q, k, v, cu, longest, flops, bench, device) -> dict:
    """attngen and Flex forward+backward (one backward of a random dout per call)."""
    result: dict[str, Any] = {}
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    dout = torch.randn_like(q)

    def attngen_step():
        ag.varlen_attention(attn, q, k, v, cu, cu, longest, longest).backward(dout)

    attempt(result, "attngen", lambda: result.setdefault("attngen", {"ms": bench(attngen_step)}))
    if device.type == "cuda":
        lengths = (cu[1:] - cu[:-1]).tolist()
        seq_ids = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))

        def flex_step_fn():
            block_mask, _ = timed_block_mask(lambda b, h, i, j: (seq_ids[i] == seq_ids[j]) & (i >= j), q.shape[0], device)
            q4, k4, v4 = (x.detach().permute(1, 0, 2)[None].contiguous().requires_grad_() for x in (q, k, v))
            d4 = dout.permute(1, 0, 2)[None].contiguous()
            flex_fn = compiled_flex()
            return lambda: flex_fn(q4, k4, v4, block_mask=block_mask).backward(d4)

        step = attempt(result, "flex", flex_step_fn)
        if step is not None:
            attempt(result, "flex", lambda: result.setdefault("flex", {"ms": bench(step)}))
    for entry in result.values():
        if "ms" in entry:
            entry["tflops"] = 3.5 * flops / entry["ms"] / 1e9
    return result


# --------------------------------------------------------------------------- 2. linear decode
def copy_bandwidth(device: torch.device, bench) -> float | None:
    """GB/s of a 512 MiB device-to-device copy (read + write), the ceiling of a step."""
    if device.type != "cuda":
        return None
    src = torch.empty(128 << 20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / bench(lambda: dst.copy_(src)) / 1e6


def load_fla_recurrent():
    """fla's fused_recurrent_simple_gla, through bench_linear's loader (installed or .whl/)."""
    from bench_linear import load_fla

    load_fla()
    try:
        from fla.ops.simple_gla import fused_recurrent_simple_gla
    except ModuleNotFoundError:  # without einops fla.ops is a bare package (see load_fla)
        from fla.ops.simple_gla.fused_recurrent import fused_recurrent_simple_gla
    return fused_recurrent_simple_gla


def bench_decode(args, device: torch.device, dtype: torch.dtype, bench) -> dict:
    H, D = args.decode_heads, args.dim
    lightning = ag.compile(builtin("lightning"))
    decay_log = -alibi_slopes(H).to(device)
    result: dict[str, Any] = {"case": f"lightning decode step, H={H}, D=Dv={D}, one new token per sequence",
                              "copy_GBps": copy_bandwidth(device, bench), "batches": {}}
    fla = None
    if device.type == "cuda":
        try:
            fla = load_fla_recurrent()
        except Exception as exc:  # noqa: BLE001
            result["fla"] = f"not importable: {short_reason(exc)}"
    with torch.no_grad():
        result["check_rel_err"] = check_decode(lightning, H, D, dtype, device, decay_log)
        for B in args.decode_batches:
            q, k, v = (torch.randn(B, H, 1, D, device=device, dtype=dtype) for _ in range(3))
            state = ag.LinearState.zeros(B, H, D, D, normalize=False, device=device)
            state.kv.normal_()
            entry = {"ms": bench(lambda: lightning.step(q, k, v, state, decay_log=decay_log))}
            entry["state_GBps"] = 2 * B * H * D * D * 4 / entry["ms"] / 1e6
            if fla is not None:
                qf, kf, vf = (x.transpose(1, 2).contiguous() for x in (q, k, v))
                fla_state = state.kv.clone()
                attempt(entry, "fla", lambda: entry.setdefault("fla_ms", bench(
                    lambda: fla(qf, kf, vf, g_gamma=decay_log, scale=1.0, initial_state=fla_state,
                                output_final_state=True))))
            result["batches"][B] = entry
        result["prefill"] = bench_prefill_overhead(args, lightning, decay_log, dtype, device, bench)
    return result


def check_decode(lightning, H, D, dtype, device, decay_log) -> float:
    """A 63-token prefill and one step against the chunked forward over all 64 tokens."""
    q, k, v = (torch.randn(1, H, 64, D, device=device, dtype=dtype) for _ in range(3))
    full = lightning(q, k, v, decay_log=decay_log)
    _, state = lightning.prefill(q[:, :, :63], k[:, :, :63], v[:, :, :63], decay_log=decay_log)
    last, _ = lightning.step(q[:, :, 63:], k[:, :, 63:], v[:, :, 63:], state, decay_log=decay_log)
    return relative_l2(last.float(), full[:, :, 63:].float())


def bench_prefill_overhead(args, lightning, decay_log, dtype, device, bench) -> dict:
    B, L = (8, 4096) if device.type == "cuda" else (1, 64)
    q, k, v = (torch.randn(B, args.decode_heads, L, args.dim, device=device, dtype=dtype) for _ in range(3))
    return {"shape": f"B={B} H={args.decode_heads} L={L}",
            "forward_ms": bench(lambda: lightning(q, k, v, decay_log=decay_log)),
            "prefill_ms": bench(lambda: lightning.prefill(q, k, v, decay_log=decay_log))}


# --------------------------------------------------------------------------- report
def markdown(env: dict, varlen: dict, decode: dict) -> str:
    lines = [f"# Serving: varlen prefill and linear decode ({env['device']}, {env['dtype']})", "",
             f"{env['date_utc']} UTC; torch {env['torch']}, Triton {env['triton']}, CUDA {env['cuda']}, "
             f"attngen {env['attngen']} at {env['commit']}. Generated by benchmarks/bench_varlen.py.", "",
             f"## {varlen['case']}", "", f"Lengths: {varlen['lengths']}.", "",
             "| backend | ms | TFLOP/s (attended entries) | this / attngen (steady) time | rel. err. vs attngen | note |",
             "|---|---|---|---|---|---|"]
    base = varlen["backends"].get("attngen", {}).get("ms")
    for name, e in varlen["backends"].items():
        if "error" in e:
            lines.append(f"| {name} | - | - | - | - | failed: {e['error'][:80]} |")
            continue
        speedup = f"x{e['ms'] / base:.2f}" if base and "ms" in e and name != "attngen" else "-"
        err = f"{e['rel_err_vs_attngen']:.1e}" if "rel_err_vs_attngen" in e else "-"
        note = (f"block mask: {e['block_mask_s']:.3f} s (first {e['block_mask_s_first']:.1f} s)" if "block_mask_s" in e
                else f"computes {e['computed_entries']} entries" if "computed_entries" in e
                else f"config {e['config']}" if e.get("config") else "")
        lines.append(f"| {name} | {e.get('ms', float('nan')):.3f} | {e.get('tflops', float('nan')):.0f} | {speedup} | "
                     f"{err} | {note} |")
    for name, e in varlen.get("fwd+bwd", {}).items():
        lines.append(f"| {name} fwd+bwd | {e.get('ms', float('nan')):.3f} | {e.get('tflops', float('nan')):.0f} | "
                     f"- | - | {e.get('error', '')[:80]} |")
    lines += ["", f"## {decode['case']}", "",
              f"Device copy bandwidth: {decode['copy_GBps']:.0f} GB/s." if decode["copy_GBps"] else "",
              f"Check (prefill 63 + step vs chunked 64): rel. err. {decode['check_rel_err']:.1e}."
              + (f" fla: {decode['fla']}." if "fla" in decode else ""), "",
              "| B | attngen step ms | state GB/s | fla step ms |", "|---|---|---|---|"]
    for B, e in decode["batches"].items():
        fla = f"{e['fla_ms']:.4f}" if "fla_ms" in e else e.get("fla", {}).get("error", "-")[:60]
        lines.append(f"| {B} | {e['ms']:.4f} | {e['state_GBps']:.0f} | {fla} |")
    p = decode["prefill"]
    lines += ["", f"Prefill writing the final state, {p['shape']}: {p['prefill_ms']:.3f} ms against the forward's "
              f"{p['forward_ms']:.3f} ms.", ""]
    return "\n".join(lines)


def wrong(varlen: dict, decode: dict) -> list[str]:
    bad = [n for n, e in varlen["backends"].items() if e.get("rel_err_vs_attngen", 0.0) > MAX_REL_ERR]
    return bad + (["linear decode"] if decode["check_rel_err"] > MAX_REL_ERR else [])


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("bench_varlen.py needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    env = run_environment(device, dtype, git_commit())
    bench = timer(args, cuda)
    varlen = bench_varlen(args, device, dtype, bench)
    decode = bench_decode(args, device, dtype, bench)
    text = markdown(env, varlen, decode)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "varlen.json", json.dumps({"environment": env, "varlen": varlen, "decode": decode},
                                                       indent=1, default=str))
    write_atomic(args.out / "varlen.md", text)
    print(text)
    flagged = wrong(varlen, decode)
    if flagged:
        print(f"WRONG results (relative L2 > {MAX_REL_ERR}): {', '.join(flagged)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
