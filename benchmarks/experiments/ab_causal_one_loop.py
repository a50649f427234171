"""A/B: the causal forward's full and masked KV tiles walked in one loop, against cuDNN.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_causal_one_loop.py [--rounds N]

The generated causal forward (128x128 tiles, 8 warps, 3 stages at D=128) walks the KV tiles
every row sees in one loop and the diagonal tile in a second. Triton 3.6 pipelines each loop on
its own: the first drains its products and loads before the second issues its first load, so
every program pays one pipeline fill twice. Causal programs walk 32.5 tiles on average (dense:
64), so a bubble of ~1-2 us per program would be 2-3% of the causal forward (0.83-0.85x cuDNN,
target 0.85x). Edits of the generated kernel, timed in interleaved rounds with SDPA's cuDNN:

    base        the generated kernel (two loops)
    one_loop    one loop over [full_lo, end): K, Q.K^T, V and P.V outside, the weights under a
                run-time `if start_n >= full_end` (masked) / else (unmasked)
    one_loop_rev  the same, walked from the diagonal down: the masked tile first, so every row's
                running max is finite after the first step
    mask_all    one loop, the causal test on every tile (no branch; costs a compare and a select
                per score)
    diag_unpipelined  the two loops kept, the diagonal tile's loop not software-pipelined
                (`tl.range(..., num_stages=1)`): no prologue and epilogue around its one step

Measured on 2026-11-25 at ccbf1df (benchmarks/NOTES.md, "Forward"): Triton 3.6's pipeliner
fails on the two edits with a run-time `if` in the loop ("Pipeline failed while executing
TritonGPUPipeline"), so they are reported and skipped. Since 95a952a the base kernel walks its
full tiles with warp specialization on sm90 (the shipped causal D=128 config); the one-loop
edits walk a plain loop.

The one-loop edits load K and V without bounds masks, so they are valid only for L a multiple
of BLOCK_N (as here); the experiment checks each output against the base kernel's.
"""
from __future__ import annotations

import argparse

import torch
import triton

import attngen as ag
from bench_common import sdpa_fn  # noqa: E402 (benchmarks/ on the path)
from rewritten import edit_kernel, interleaved_ms, use_rewritten  # noqa: E402 (this folder)

_TWO_LOOPS_START = "    for start_n in tl.range(full_lo, full_end, BLOCK_N, warp_specialize=WARP_SPECIALIZE):\n"
_TWO_LOOPS_END = "    # 3. Normalize"


def _loop_body(prefix: str, masked: str) -> str:
    """One KV tile at ``start_n``; ``masked`` is the weights' MASKED argument: True, False or
    the run-time test (then the weights run under an if/else)."""
    weights = ("_{p}weights(qk, l_i, m_i, offs_n, q_idx, off_b, off_h, Lq, Lkv, sm_scale, qk_scale, "
               "SCALE_POSITIVE, {m})")
    lines = [
        "        offs_n = start_n + offs_n_tile\n",
        "        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd)\n",
        "        qk = tl.dot(q, tl.trans(k))\n",
    ]
    if masked in ("True", "False"):
        lines.append("        p, alpha, l_i, m_i = " + weights.format(p=prefix, m=masked) + "\n")
    else:
        lines += [
            f"        if {masked}:\n",
            "            p, alpha, l_i, m_i = " + weights.format(p=prefix, m="True") + "\n",
            "        else:\n",
            "            p, alpha, l_i, m_i = " + weights.format(p=prefix, m="False") + "\n",
        ]
    lines += [
        "        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd)\n",
        "        acc = acc * alpha[:, None]\n",
        "        acc = tl.dot(p.to(v.dtype), v, acc)\n",
        "\n",
    ]
    return "".join(lines)


def _one_loop(prefix: str, reverse: bool, mask_all: bool):
    def edit(src: str) -> str:
        start = src.index(_TWO_LOOPS_START)
        end = src.index(_TWO_LOOPS_END, start)
        if reverse:
            head = ("    n_tiles = (n_end_up - full_lo) // BLOCK_N\n"
                    "    for i in range(0, n_tiles):\n"
                    "        start_n = n_end_up - BLOCK_N - i * BLOCK_N\n")
        else:
            head = "    for start_n in range(full_lo, end, BLOCK_N):\n"
        body = _loop_body(prefix, "True" if mask_all else "start_n >= full_end")
        return src[:start] + head + body + src[end:]
    return edit


def _diag_unpipelined(src: str) -> str:
    old = "    for start_n in range(full_end, end, BLOCK_N):\n"
    assert src.count(old) == 1, "generated source changed: update the experiment"
    return src.replace(old, "    for start_n in tl.range(full_end, end, BLOCK_N, num_stages=1):\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    B, H, L, D = 2, 16, 8192, 128
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__,
          f"B={B} H={H} L={L} D={D}", flush=True)
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cudnn = sdpa_fn("sdpa_cudnn", q, k, v, causal=True)
    runs = {"cudnn": cudnn}
    edits = {"base": None,
             "one_loop": dict(reverse=False, mask_all=False),
             "one_loop_rev": dict(reverse=True, mask_all=False),
             "mask_all": dict(reverse=False, mask_all=True),
             "diag_unpipelined": _diag_unpipelined}
    outs = {}
    for label, edit in edits.items():
        attn = ag.compile(ag.Variant(mask=ag.causal(), name=f"causal_{label}"))
        if isinstance(edit, dict):
            # The kernel's helpers carry the variant's name: the loop calls _<name>_weights.
            use_rewritten(attn, lambda src, e=_one_loop(f"{attn.ir.name}_", **edit): edit_kernel(src, "_fwd", e))
        elif edit is not None:
            use_rewritten(attn, lambda src, e=edit: edit_kernel(src, "_fwd", e))
        try:
            with torch.no_grad():
                outs[label] = attn(q, k, v)
        except Exception as exc:  # noqa: BLE001 (a kernel Triton cannot compile is reported, not fatal)
            print(f"{label}: FAILED {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}", flush=True)
            continue
        print(f"{label}: config {attn.last_config} ({attn.last_config_source})", flush=True)
        if attn.last_config.halves:
            print(f"{label}: the shipped config runs the halves kernel; the edit does not apply", flush=True)
        runs[label] = (lambda a=attn: _no_grad(a, q, k, v))
    ref = cudnn().float()
    for label, out in outs.items():
        print(f"{label}: max |out - cuDNN| {(out.float() - ref).abs().max().item():.1e}, "
              f"max |out - base| {(out.float() - outs['base'].float()).abs().max().item():.1e}", flush=True)
    times = interleaved_ms(runs, args.rounds)
    flops = 4 * B * H * L * L * D * 0.5
    for label, t in times.items():
        rates = [flops / ms / 1e9 for ms in t]
        ratios = sorted(c / ms for c, ms in zip(times["cudnn"], t))
        print(f"{label:14s}: " + " ".join(f"{x:4.0f}" for x in rates)
              + f" TFLOP/s; x cuDNN median {ratios[len(ratios) // 2]:.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f})",
              flush=True)


def _no_grad(attn, *args):
    with torch.no_grad():
        return attn(*args)


if __name__ == "__main__":
    main()
