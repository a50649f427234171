"""Which generated kernels does ptxas compile with serialized wgmma?

    PYTHONPATH=.:benchmarks python benchmarks/experiments/wgmma_serialization.py [--cases a,b]

Session 11's SASS of the packed-document backward (dump_dkdv_asm.py) showed every HGMMA of its
dK/dV loop followed by its own `WARPGROUP.DEPBAR` wait, where the causal equivalent issues a
product's eight k-steps back to back and waits once: ptxas had serialized the kernel's
asynchronous matrix products, which it does (with a warning Triton does not show) when it
cannot keep the wgmma pipeline's registers apart. This runs one forward+backward of each case
at the benchmark shapes in a fresh Triton cache, then for every kernel compiled: HGMMA and
`WARPGROUP.DEPBAR` counts from its SASS, registers and spills, and ptxas's own messages from
recompiling its PTX with -v (the serialization warning names the cause).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton-wgmma-"))

import torch  # noqa: E402 (the cache folder must be set before Triton loads)
import triton  # noqa: E402

import attngen as ag  # noqa: E402
from bench_common import alibi_score, alibi_slopes  # noqa: E402 (benchmarks/ on sys.path)

SOFTCAP = 30.0


def softcap_score(score, b, h, q_idx, kv_idx):
    return SOFTCAP * torch.tanh(score / SOFTCAP)


def cases() -> dict:
    """name: (variant, B, H, L, call kwargs)."""
    docs = (torch.arange(8192, device="cuda") // 2048).expand(2, -1).contiguous()
    return {
        "dense": (ag.Variant(), 2, 16, 8192, {}),
        "causal": (ag.Variant(mask=ag.causal()), 2, 16, 8192, {}),
        "window": (ag.Variant(mask=ag.sliding_window(1023, 0)), 2, 16, 8192, {}),
        "documents": (ag.Variant(mask=ag.causal() & ag.document()), 2, 16, 8192, {"document_ids": docs}),
        "alibi": (ag.Variant(score=alibi_score, mask=ag.causal()), 2, 16, 8192, {"slopes": alibi_slopes(16)}),
        "softcap": (ag.Variant(score=softcap_score, mask=ag.causal()), 2, 16, 8192, {}),
        "sigmoid": (ag.Variant(norm=ag.sigmoid()), 2, 16, 8192, {}),
        "na1d": (ag.Variant(mask=ag.neighborhood(2047)), 1, 16, 32768, {"spatial_shape": (32768,)}),
        "na2d": (ag.Variant(mask=ag.neighborhood(31)), 1, 16, 16384, {"spatial_shape": (128, 128)}),
        "na3d": (ag.Variant(mask=ag.neighborhood((7, 15, 15))), 1, 16, 16384, {"spatial_shape": (16, 32, 32)}),
        "gna2d": (ag.Variant(mask=ag.neighborhood(32, stride=16)), 1, 16, 16384, {"spatial_shape": (128, 128)}),
    }


def ptxas_path() -> str:
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(90).path
    except Exception:  # noqa: BLE001 - Triton's internals move between releases
        return shutil.which("ptxas") or "/usr/local/cuda/bin/ptxas"


def sass_of(cubin: Path) -> str:
    for tool in (["cuobjdump", "-sass"], ["nvdisasm", "-c"]):
        exe = shutil.which(tool[0]) or f"/usr/local/cuda/bin/{tool[0]}"
        try:
            done = subprocess.run([exe, *tool[1:], str(cubin)], capture_output=True, text=True)
        except FileNotFoundError:
            continue
        if done.returncode == 0:
            return done.stdout
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(cases()))
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    all_cases = cases()
    ptxas = ptxas_path()
    cache = Path(os.environ["TRITON_CACHE_DIR"])
    for name in args.cases.split(","):
        variant, B, H, L, kwargs = all_cases[name]
        kwargs = dict(kwargs)
        kwargs = {n: t.cuda() if isinstance(t, torch.Tensor) else t for n, t in kwargs.items()}
        attn = ag.compile(variant)
        q, k, v = (torch.randn(B, H, L, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        torch.autograd.grad(attn(q, k, v, **kwargs), (q, k, v), torch.randn_like(q))
        torch.cuda.synchronize()
        for ptx in sorted(cache.rglob(f"{attn.ir.name}_*.ptx")):
            kernel = ptx.stem[len(attn.ir.name) + 1:]
            sass = sass_of(ptx.with_suffix(".cubin"))
            hgmma = len(re.findall(r"\bHGMMA\.", sass))
            waits = len(re.findall(r"WARPGROUP\.DEPBAR", sass))
            arch = re.search(r"\.target\s+(sm_\w+)", ptx.read_text())
            with tempfile.TemporaryDirectory() as tmp:
                done = subprocess.run([ptxas, "-v", f"-arch={arch.group(1) if arch else 'sm_90a'}", str(ptx),
                                       "-o", f"{tmp}/k.cubin"], capture_output=True, text=True)
            notes = [line.strip() for line in (done.stdout + done.stderr).splitlines()
                     if "Used" in line or "spill" in line or "arning" in line]
            warn = [n for n in notes if "arning" in n]
            used = next((n for n in notes if "Used" in n), "")
            spills = next((n for n in notes if "spill" in n), "")
            print(f"{name:9s} {kernel:16s} HGMMA {hgmma:4d} waits {waits:4d}"
                  f" {'SERIALIZED' if hgmma and waits >= hgmma * 0.75 else '':10s} | {used} | {spills}", flush=True)
            for w in warn:
                print(f"    {w}", flush=True)


if __name__ == "__main__":
    main()
