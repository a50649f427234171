"""One forward+backward under the CUDA profiler range, passes one after the other, for
``ncu --profile-from-start off -k regex:bwd_dkdv``: the dK/dV pass of the 1-D neighborhood
(B=1 H=16 L=32768 D=128, kernel 2047), of causal attention (B=2 H=16 L=8192), of packed causal
documents (B=2 H=16 L=8192, 4 x 2048), of their causal equivalent
(B=8 H=16 L=2048) or of the 2-D neighborhood (B=1 H=16 128x128, kernel 31x31), bf16.
Prints the registers and spills of the backward kernels.

    PYTHONPATH=. ncu --profile-from-start off -k regex:bwd_dkdv --section ... python3 ncu_dkdv.py na1d|na2d|causal|docs|causal2k
"""
import sys

import torch

import attngen as ag

case = sys.argv[1] if len(sys.argv) > 1 else "na1d"
if case == "na1d":
    B, H, L, D, extra = 1, 16, 32768, 128, {"spatial_shape": (32768,)}
    attn = ag.compile(ag.Variant(mask=ag.neighborhood(2047)))
elif case == "na2d":
    B, H, L, D, extra = 1, 16, 16384, 128, {"spatial_shape": (128, 128)}
    attn = ag.compile(ag.Variant(mask=ag.neighborhood(31)))
elif case == "docs":
    B, H, L, D = 2, 16, 8192, 128
    extra = {"document_ids": (torch.arange(L, device="cuda") // 2048).expand(B, L).contiguous()}
    attn = ag.compile(ag.Variant(mask=ag.causal() & ag.document()))
else:
    B, H, L, D, extra = (8, 16, 2048, 128, {}) if case == "causal2k" else (2, 16, 8192, 128, {})
    attn = ag.compile(ag.Variant(mask=ag.causal()))
q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
do = torch.randn_like(q)
attn.module(q.device).CONCURRENT_PASSES = False
for _ in range(2):
    torch.autograd.grad(attn(q, k, v, **extra), (q, k, v), do)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
torch.autograd.grad(attn(q, k, v, **extra), (q, k, v), do)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
module = attn.module(q.device)
for name in dir(module):
    fn = getattr(module, name)
    for caches in getattr(fn, "device_caches", {}).values():
        for kernel in caches[0].values():
            print(f"{case} {name}: {kernel.n_regs} registers, {kernel.n_spills} spills", flush=True)
