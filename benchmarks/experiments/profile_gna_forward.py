"""One GNA 2-D forward (128x128 tokens, kernel 32x32, stride 16x16, B=1 H=16 D=128, bf16, no_grad)
or one dense forward on the same shape under the profiler range, for

    ncu --profile-from-start off -k regex:_fwd --section ... python3 profile_gna_forward.py gna|dense
"""
import sys

import torch

import attngen as ag

case = sys.argv[1] if len(sys.argv) > 1 else "gna"
q, k, v = (torch.randn(1, 16, 128 * 128, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
mask = ag.neighborhood((32, 32), stride=(16, 16)) if case == "gna" else None
attn = ag.compile(ag.Variant(mask=mask, name=f"profile_{case}"))
kwargs = {"spatial_shape": (128, 128)} if case == "gna" else {}
with torch.no_grad():
    for _ in range(3):
        attn(q, k, v, **kwargs)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    attn(q, k, v, **kwargs)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
