"""The generated Gluon forward (templates/attention_fwd_gluon.py.j2) against the generated `tl`
forward and SDPA (cuDNN) on one GPU: max error against float64 SDPA math, then timings at
B=2 H=16 L=8192 D=128 bf16 (issue 27's shape). Needs an sm90 GPU.

    PYTHONPATH=.:benchmarks python3 benchmarks/experiments/gluon_forward_check.py [--configs 128x128x2,128x128x3]
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import attngen as ag
from attngen.codegen.render_gluon import render_gluon
from attngen.runtime.config import KernelConfig

LOG2E = 1.4426950408889634


def gluon_module(attn):
    path = Path(tempfile.mkdtemp()) / f"{attn.ir.name}_gluon.py"
    path.write_text(render_gluon(attn.ir))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variants():
    from bench_common import alibi_score as alibi
    from compare_cases import softcap_score as softcap

    return {
        "dense": (ag.Variant(name="g_dense"), {}, False),
        "causal": (ag.Variant(mask=ag.causal(), name="g_causal"), {}, True),
        "window1024": (ag.Variant(mask=ag.sliding_window(1024), name="g_window"), {}, None),
        "alibi_causal": (ag.Variant(score=alibi, mask=ag.causal(), name="g_alibi"), {"slopes": "slopes"}, None),
        "softcap": (ag.Variant(score=softcap, name="g_softcap"), {}, None),
        "sinks_window": (ag.Variant(mask=ag.sliding_window(128), norm=ag.softmax(sink=True), name="g_sinks"),
                         {"sinks": "sinks"}, None),
    }


def runtime_tensors(names, H, device):
    out = {}
    for n in names:
        out[n] = (torch.rand(H, device=device) * 0.1) if n == "slopes" else torch.randn(H, device=device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="128x128x2,128x128x3,128x128x2p",
                    help="BMxBNxSTAGES[p] list for the Gluon kernel (p: the consumers take turns, pingpong)")
    ap.add_argument("--families", default=None, help="comma list (default: all)")
    args = ap.parse_args()
    from triton.testing import do_bench
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", __import__("triton").__version__)
    configs = [KernelConfig(*map(int, c.rstrip("p").split("x")[:2]), 4, int(c.rstrip("p").split("x")[2]),
                            dialect="gluon", pingpong=c.endswith("p")) for c in args.configs.split(",")]
    fams = variants()
    if args.families:
        fams = {k: fams[k] for k in args.families.split(",")}
    for fam, (variant, tnames, sdpa_causal) in fams.items():
        attn = ag.compile(variant)
        mod = gluon_module(attn)
        # correctness at ragged shapes, GQA, Lq != Lkv
        for (B, HQ, HKV, Lq, Lkv, D) in [(1, 4, 2, 1000, 1000, 128), (2, 2, 1, 77, 300, 64), (1, 2, 2, 300, 300, 256)]:
            q = torch.randn(B, HQ, Lq, D, device=dev, dtype=torch.bfloat16)
            k = torch.randn(B, HKV, Lkv, D, device=dev, dtype=torch.bfloat16)
            v = torch.randn(B, HKV, Lkv, D, device=dev, dtype=torch.bfloat16)
            t = runtime_tensors(tnames, HQ, dev)
            ref, ref_lse = ag.reference(variant)(q, k, v, return_lse=True, **t)
            cfg = KernelConfig(128, 64 if D > 128 else 128, 4, 2, dialect="gluon")
            out = torch.empty(B, HQ, Lq, D, device=dev, dtype=torch.bfloat16)
            lse = torch.empty(B, HQ, Lq, device=dev, dtype=torch.float32)
            mod.launch_forward(q, k, v, out, lse, D ** -0.5, t, None, cfg)
            torch.cuda.synchronize()
            err = (out.double() - ref.double()).abs().max().item()
            fin = torch.isfinite(ref_lse)
            lerr = (lse[fin].double() - ref_lse[fin].double()).abs().max().item() if fin.any() else 0.0
            tl_out = attn(q, k, v, **t)
            tl_err = (tl_out.double() - ref.double()).abs().max().item()
            print(f"{fam:13s} B={B} HQ={HQ} HKV={HKV} Lq={Lq} Lkv={Lkv} D={D}: gluon err {err:.2e} lse err {lerr:.2e} "
                  f"(tl err {tl_err:.2e})", flush=True)
        B, H, L, D = 2, 16, 8192, 128
        q, k, v = (torch.randn(B, H, L, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        t = runtime_tensors(tnames, H, dev)
        out = torch.empty_like(q)
        line = f"{fam:13s} B={B} H={H} L={L} D={D}:"
        for cfg in configs:
            ms = do_bench(lambda: mod.launch_forward(q, k, v, out, None, D ** -0.5, t, None, cfg))
            line += f" gluon {cfg.block_m}x{cfg.block_n}x{cfg.num_stages}{'p' if cfg.pingpong else ''} {ms:.3f} ms;"
        with torch.no_grad():
            ms_tl = do_bench(lambda: attn(q, k, v, **t))
        line += f" tl {ms_tl:.3f} ms ({attn.last_config});"
        if sdpa_causal is not None:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ms_c = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=sdpa_causal))
            line += f" cudnn {ms_c:.3f} ms"
        print(line, flush=True)


if __name__ == "__main__":
    main()
