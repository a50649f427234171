"""Dump the compiled dK/dV kernels (PTX, and SASS where nvdisasm exists) of the 1-D neighborhood
(B=1 H=16 L=32768, kernel 2047), the 2-D one (128x128, kernel 31x31) and of causal attention (B=2 H=16 L=8192) to $OUT, with a count
of instructions by opcode, to see what the neighborhood's loop executes in excess (ncu: 62% more
instructions for the same attended entries). Also packed causal documents (B=2 L=8192, 4 x 2048)
and their causal equivalent (B=8 L=2048), and the dQ pass with ``--pass dq``.

    PYTHONPATH=. python3 benchmarks/experiments/dump_dkdv_asm.py [--cases na1d,na2d,causal,docs,causal2k] [--pass dkdv|dq]
"""
import argparse
import collections
import os
import re
import subprocess
from pathlib import Path

import torch

import attngen as ag

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--cases", default="na1d,na2d,causal")
ap.add_argument("--pass", dest="which", default="dkdv", choices=("dkdv", "dq"))
args = ap.parse_args()
out = Path(os.environ.get("OUT", "."))
docs = (torch.arange(8192, device="cuda") // 2048).expand(2, 8192).contiguous()
cases = {"na1d": (ag.Variant(mask=ag.neighborhood(2047)), 1, 32768, {"spatial_shape": (32768,)}),
         "na2d": (ag.Variant(mask=ag.neighborhood((31, 31))), 1, 16384, {"spatial_shape": (128, 128)}),
         "causal": (ag.Variant(mask=ag.causal()), 2, 8192, {}),
         "docs": (ag.Variant(mask=ag.causal() & ag.document()), 2, 8192, {"document_ids": docs}),
         "causal2k": (ag.Variant(mask=ag.causal()), 8, 2048, {})}
for name in args.cases.split(","):
    variant, B, L, extra = cases[name]
    attn = ag.compile(variant)
    q, k, v = (torch.randn(B, 16, L, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    torch.autograd.grad(attn(q, k, v, **extra), (q, k, v), torch.randn_like(q))
    torch.cuda.synchronize()
    # the compiled kernels land in Triton's file cache: find this variant's dK/dV pass there
    cache = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    ptxs = sorted(cache.rglob(f"{attn.ir.name}_bwd_{args.which}.ptx"))
    print(f"{name}: {len(ptxs)} {args.which} binaries in {cache}")
    for i, ptx in enumerate(ptxs):
        (out / f"{args.which}_{name}_{i}.ptx").write_text(ptx.read_text())
        cubin = ptx.with_suffix(".cubin")
        sass = subprocess.run(["nvdisasm", "-c", str(cubin)], capture_output=True, text=True)
        if sass.returncode:
            sass = subprocess.run(["cuobjdump", "-sass", str(cubin)], capture_output=True, text=True)
        text = sass.stdout
        (out / f"{args.which}_{name}_{i}.sass").write_text(text)
        ops = collections.Counter(m.group(1).split(".")[0] for m in
                                  re.finditer(r"^\s+(?:/\*[0-9a-f]+\*/\s+)?(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)\s", text, re.M))
        print(f"{name}[{i}] sass: {sum(ops.values())} instructions; top: {ops.most_common(30)}", flush=True)
