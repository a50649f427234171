"""A/B: Triton 3.6's automatic warp specialization on the generated forwards' full-tile loops.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_forward_warp_specialize.py [--rounds N]

Dense and band kernels have it as a launch option (``KernelConfig.warp_specialize``, since
95a952a): each case's configs run with and without it. Neighborhood kernels do not have
the option, so their walk over the full KV boxes is edited into
``tl.range(..., warp_specialize=True)`` (-1% on GNA 2-D at ccbf1df). cuDNN runs in
the same rounds where it computes the same function. Each output is checked against the
first config's.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import replace

import torch
import triton

import attngen as ag
from bench_common import sdpa_fn  # noqa: E402 (benchmarks/ on the path)
from rewritten import call_no_grad, interleaved_ms, print_rates, use_rewritten  # noqa: E402 (this folder)

_NA_FULL_BOXES = (r"for i in range\(0, m0 \* m1 \* m2\):", "for i in tl.range(0, m0 * m1 * m2, warp_specialize=True):")


def _warp_specialize_boxes(src: str) -> str:
    out, n = re.subn(*_NA_FULL_BOXES, src)
    assert n >= 1, "generated source changed: update the experiment"
    return out


def _label(c: ag.KernelConfig) -> str:
    return (f"{'halves ' if c.halves else ''}{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}"
            + (" ws" if c.warp_specialize else ""))


def _pairs(*configs: ag.KernelConfig) -> list[ag.KernelConfig]:
    """Each config without and with warp specialization (4-warp configs: without only)."""
    out = []
    for c in configs:
        c = replace(c, warp_specialize=False)
        out += [c] + ([replace(c, warp_specialize=True)] if c.num_warps == 8 else [])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    C = ag.KernelConfig
    # case: (B, L, D, mask, call kwargs, configs; None = the shipped choice, neighborhood edits)
    cases = {
        "dense D=128": (2, 8192, 128, None, {}, _pairs(C(256, 64, 8, 4, halves=True), C(128, 128, 8, 3))),
        "causal D=128": (2, 8192, 128, ag.causal(), {}, _pairs(C(128, 128, 8, 3), C(256, 64, 8, 3, halves=True))),
        "dense D=64": (4, 4096, 64, None, {}, _pairs(C(128, 64, 8, 3))),
        "causal D=64": (4, 4096, 64, ag.causal(), {}, _pairs(C(64, 64, 4, 3), C(128, 64, 8, 3), C(128, 128, 8, 3))),
        "GNA 2-D": (1, 128 * 128, 128, ag.neighborhood((32, 32), stride=(16, 16)), {"spatial_shape": (128, 128)}, None),
        "blocked 3-D": (1, 16 * 32 * 32, 128, ag.neighborhood((8, 16, 16), stride=(8, 16, 16)),
                        {"spatial_shape": (16, 32, 32)}, None),
    }
    density = {"GNA 2-D": 1 / 16, "blocked 3-D": 1 / 8}
    runs, flops = {}, {}
    for case, (B, L, D, mask, kw, configs) in cases.items():
        q, k, v = (torch.randn(B, 16, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        tag = re.sub(r"\W", "_", case)
        attn = ag.compile(ag.Variant(mask=mask, name=f"ws_{tag}"))
        f = 4 * B * 16 * L * L * D * density.get(case, 0.5 if mask is not None else 1.0)
        if configs is None:  # neighborhoods: the shipped config, the loop edited in a second module
            edited = ag.compile(ag.Variant(mask=mask, name=f"ws_edited_{tag}"))
            use_rewritten(edited, _warp_specialize_boxes)
            variants = {"shipped": (attn, None), "shipped, boxes ws (edited)": (edited, None)}
        else:
            variants = {_label(c): (attn, c) for c in configs}
        ref = None
        for label, (fn, config) in variants.items():
            try:
                with torch.no_grad():
                    out = fn(q, k, v, config=config, **kw)
            except Exception as exc:  # noqa: BLE001 (a kernel Triton cannot compile is reported, not fatal)
                print(f"{case} {label}: FAILED {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}",
                      flush=True)
                continue
            if ref is None:
                ref = out
                print(f"{case}: reference config {fn.last_config} ({fn.last_config_source})", flush=True)
            print(f"{case} {label}: max |diff| to the first {(out.float() - ref.float()).abs().max().item():.1e}",
                  flush=True)
            runs[(case, label)] = (lambda a=fn, c=config, q=q, k=k, v=v, kw=kw: call_no_grad(a, q, k, v, config=c, **kw))
            flops[(case, label)] = f
        if not kw:  # cuDNN only where it computes the same function
            runs[(case, "cudnn")] = sdpa_fn("sdpa_cudnn", q, k, v, causal=mask is not None)
            flops[(case, "cudnn")] = f
    print_rates(interleaved_ms(runs, args.rounds), flops, 42, vs="cudnn")


if __name__ == "__main__":
    main()
