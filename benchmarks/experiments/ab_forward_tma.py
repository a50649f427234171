"""A/B: K and V through TMA tensor descriptors in the generated forwards, at the shipped 4-warp
64x64 configs (windows, score_mods, causal D=64) and the 8-warp ones.

    PYTHONPATH=.:benchmarks:benchmarks/experiments python benchmarks/experiments/ab_forward_tma.py [--rounds N]

The hand-written forwards of 987419b measured TMA descriptors: +1% at 128x128 on 8 warps, but
+11% (dense) and +8% (causal) at 64x64 on 4 warps, where the pointer tiles take registers;
the templates kept pointer loads because 64x64 only caught up with 128x128 there. Several
families still ship 64x64 on 4 warps (sliding windows, score_mods at D=128, causal D=64), so
the gain would land where it was never measured. Here the generated module is edited: the
kernel builds device-side descriptors for this (batch, head)'s K [Lkv, D] and V [Lkv, Dv]
(out-of-bounds rows read as zeros), and the KV tile function loads them with
``desc.load([start_n, 0])``. Each edited output is checked against the unedited one's.
"""
from __future__ import annotations

import argparse
import re

import torch
import triton

import attngen as ag
from bench_common import alibi_score, alibi_slopes, sdpa_fn  # noqa: E402 (benchmarks/ on the path)
from compare_cases import softcap_score  # noqa: E402 (the comparison's soft-capping at 30)
from rewritten import call_no_grad, interleaved_ms, print_rates, use_rewritten  # noqa: E402 (this folder)


def _tma(src: str) -> str:
    """The module with K/V loads through tensor descriptors (dense and band kernels)."""
    out = src
    n_total = 0
    # the kernel: K/V bases become descriptors of this (batch, head)'s [L, D] slice
    for t, length, dim, block, stride in (("k", "Lkv", "D", "BLOCK_D", "stride_kn"),
                                          ("v", "Lkv", "DV", "BLOCK_DV", "stride_vn")):
        pattern = rf"(\n    ){t}_base = ({t.upper()} \+ off_b\.to\(tl\.int64\) \* stride_{t}b \+ off_hkv\.to\(tl\.int64\) \* stride_{t}h)\n"
        repl = (rf"\1{t}_base = tl.make_tensor_descriptor(\2, shape=[{length}, {dim}], strides=[{stride}, 1], "
                rf"block_shape=[BLOCK_N, {block}])\n")
        out, n = re.subn(pattern, repl, out)
        n_total += n
    # the tile function: the tile's first key as a scalar beside its offsets
    out, n = re.subn(r"start_n \+ offs_n_tile, offs_d, offs_dv,", "start_n + offs_n_tile, start_n, offs_d, offs_dv,", out)
    n_total += n
    out, n = re.subn(r"(def _\w+_kv_tile\(\n(?:.*\n)*?    )offs_n, offs_d, offs_dv,", r"\1offs_n, n0, offs_d, offs_dv,", out)
    n_total += n
    # loads: every branch of the pointer loads becomes one descriptor load
    for t, d in (("k", "D"), ("v", "DV")):
        pattern = (rf"    if MASKED:\n        {t} = tl\.load\({t}_ptrs, [^\n]*\n    elif EVEN_{d}:\n        {t} = tl\.load\({t}_ptrs\)\n"
                   rf"    else:\n        {t} = tl\.load\({t}_ptrs, [^\n]*\n")
        out, n = re.subn(pattern, f"    {t} = {t}_base.load([n0, 0])\n", out)
        n_total += n
    out, n = re.subn(r"    [kv]_ptrs = [kv]_base \+ offs_n\[:, None\] \* stride_[kv]n \+ offs_dv?\[None, :\] \* stride_[kv]d\n", "", out)
    n_total += n
    assert n_total >= 8, f"generated source changed: update the experiment ({n_total} edits)"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    # device-side descriptors need a global scratch allocation per launch
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    C = ag.KernelConfig
    # case: (B, L, D, variant kwargs, density, configs)
    cases = {
        "window 1024 causal D=128": (2, 8192, 128, {"mask": ag.causal() & ag.sliding_window(1024)}, 1024.5 / 8192,
                                     [C(64, 64, 4, 3), C(128, 64, 8, 3)]),
        "softcap dense D=128": (2, 8192, 128, {"score": softcap_score}, 1.0, [C(64, 64, 4, 3), C(128, 128, 8, 3)]),
        "alibi causal D=128": (2, 8192, 128, {"score": alibi_score, "mask": ag.causal()}, 0.5, [C(64, 64, 4, 3)]),
        "causal D=64": (4, 4096, 64, {"mask": ag.causal()}, 0.5, [C(64, 64, 4, 3)]),
        "dense D=128": (2, 8192, 128, {}, 1.0, [C(128, 128, 8, 3)]),
        "causal D=128": (2, 8192, 128, {"mask": ag.causal()}, 0.5, [C(128, 128, 8, 3, warp_specialize=True),
                                                                  C(64, 64, 4, 3)]),
    }
    runs, flops = {}, {}
    for case, (B, L, D, kw, density, configs) in cases.items():
        q, k, v = (torch.randn(B, 16, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        extra = {"slopes": alibi_slopes(16).cuda()} if "alibi" in case else {}
        tag = re.sub(r"\W", "_", case)
        base = ag.compile(ag.Variant(**kw, name=f"tma_base_{tag}"))
        tma = ag.compile(ag.Variant(**kw, name=f"tma_on_{tag}"))
        use_rewritten(tma, _tma)
        for c in configs:
            label = f"{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}{' ws' if c.warp_specialize else ''}"
            with torch.no_grad():
                ref = base(q, k, v, config=c, **extra)
                try:
                    err = (tma(q, k, v, config=c, **extra).float() - ref.float()).abs().max().item()
                except Exception as exc:  # noqa: BLE001 (a kernel Triton cannot compile is reported, not fatal)
                    print(f"{case} {label}: TMA FAILED {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}",
                          flush=True)
                    err = None
            print(f"{case} {label}: TMA max |diff| to pointer loads {err}", flush=True)
            f = 4 * B * 16 * L * L * D * density
            for name, fn in (("pointers", base), ("tma", tma if err is not None else None)):
                if fn is not None:
                    runs[(case, f"{label} {name}")] = (lambda a=fn, c=c, q=q, k=k, v=v, e=extra: call_no_grad(a, q, k, v, config=c, **e))
                    flops[(case, f"{label} {name}")] = f
        if not kw.get("score") and "window" not in case:
            runs[(case, "cudnn")] = sdpa_fn("sdpa_cudnn", q, k, v, causal="mask" in kw)
            flops[(case, "cudnn")] = 4 * B * 16 * L * L * D * density
    print_rates(interleaved_ms(runs, args.rounds), flops, 52, vs="cudnn")


if __name__ == "__main__":
    main()
