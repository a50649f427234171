"""A/B: Triton 3.6's automatic warp specialization on the generated forward's full-tile loop.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_forward_warp_specialize.py [--rounds N]

Issue 6 asks the tuner's space for the Hopper options Triton 3.6 offers. Session 4 measured
`warp_specialize` on hand-written forwards (dense 128x128 +1.6% with TMA descriptors, causal even,
a compiler assertion at 64x64 on 4 warps). This times it on today's generated kernels, at their
shipped configs: the loop over the tiles every row attends becomes
`tl.range(lo, hi, BLOCK_N, warp_specialize=True)` (for neighborhoods, the walk over the full KV
boxes); the partial tiles' loops stay as they are.
Each output is checked against the unedited kernel's.
"""
from __future__ import annotations

import argparse
import re

import torch
import triton

import attngen as ag
from bench_common import sdpa_fn  # noqa: E402 (benchmarks/ on the path)
from rewritten import interleaved_ms, use_rewritten  # noqa: E402 (this folder)

_FULL_LOOPS = ((r"for start_n in range\((0), (n_full_end), BLOCK_N\):",
                r"for start_n in tl.range(\1, \2, BLOCK_N, warp_specialize=True):"),
               (r"for start_n in range\((full_lo), (full_end), BLOCK_N\):",
                r"for start_n in tl.range(\1, \2, BLOCK_N, warp_specialize=True):"),
               # a neighborhood's walk over its full KV boxes
               (r"for i in range\(0, m0 \* m1 \* m2\):", r"for i in tl.range(0, m0 * m1 * m2, warp_specialize=True):"))


def _warp_specialize(src: str) -> str:
    out, n = src, 0
    for pattern, loop in _FULL_LOOPS:
        out, k = re.subn(pattern, loop, out)
        n += k
    assert n >= 1, "generated source changed: update the experiment"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    gna = ag.neighborhood((32, 32), stride=(16, 16))
    blocked3d = ag.neighborhood((8, 16, 16), stride=(8, 16, 16))
    cases = {"dense D=128": (2, 8192, 128, None, {}), "causal D=128": (2, 8192, 128, ag.causal(), {}),
             "dense D=64": (4, 4096, 64, None, {}), "causal D=64": (4, 4096, 64, ag.causal(), {}),
             "GNA 2-D": (1, 128 * 128, 128, gna, {"spatial_shape": (128, 128)}),
             "blocked 3-D": (1, 16 * 32 * 32, 128, blocked3d, {"spatial_shape": (16, 32, 32)})}
    density = {"GNA 2-D": 1 / 16, "blocked 3-D": 1 / 8}
    runs, flops = {}, {}
    for case, (B, L, D, mask, kw) in cases.items():
        q, k, v = (torch.randn(B, 16, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        tag = re.sub(r"\W", "_", case)
        base = ag.compile(ag.Variant(mask=mask, name=f"ws_base_{tag}"))
        ws = ag.compile(ag.Variant(mask=mask, name=f"ws_on_{tag}"))
        use_rewritten(ws, _warp_specialize)
        with torch.no_grad():
            ref = base(q, k, v, **kw)
            print(f"{case}: config {base.last_config} ({base.last_config_source})", flush=True)
            try:
                err = (ws(q, k, v, **kw).float() - ref.float()).abs().max().item()
            except Exception as exc:  # noqa: BLE001 (a kernel Triton cannot compile is reported, not fatal)
                print(f"{case}: warp_specialize FAILED {type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[-1][:160]}", flush=True)
                ws = None
            else:
                print(f"{case}: warp_specialize max |diff| to base {err:.1e}", flush=True)
        f = 4 * B * 16 * L * L * D * density.get(case, 0.5 if mask is not None else 1.0)
        cudnn = sdpa_fn("sdpa_cudnn", q, k, v, causal=mask is not None and not kw)
        for label, fn in (("base", base), ("warp_specialize", ws)):
            if fn is not None:
                runs[(case, label)] = (lambda a=fn, q=q, k=k, v=v, kw=kw: _no_grad(a, q, k, v, **kw))
                flops[(case, label)] = f
        if not kw:  # cuDNN only where it computes the same function
            runs[(case, "cudnn")] = cudnn
            flops[(case, "cudnn")] = f
    times = interleaved_ms(runs, args.rounds)
    for key, t in times.items():
        rates = [flops[key] / ms / 1e9 for ms in t]
        print(f"{key[0]:13s} {key[1]:16s}: " + " ".join(f"{x:4.0f}" for x in rates)
              + f" TFLOP/s (median {sorted(rates)[len(rates) // 2]:.0f})", flush=True)


def _no_grad(attn, *args, **kwargs):
    with torch.no_grad():
        return attn(*args, **kwargs)


if __name__ == "__main__":
    main()
