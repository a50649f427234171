"""One dense (or causal) attngen forward+backward at B=2 H=16 L=8192 D=128 under the profiler range,
for ncu --profile-from-start off."""
import sys
import torch
import attngen as ag
causal = len(sys.argv) > 1 and sys.argv[1] == "causal"
B, H, L, D = 2, 16, 8192, 128
q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
attn = ag.compile(ag.Variant(mask=ag.causal() if causal else None))
do = torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
for _ in range(2):
    attn(q, k, v).backward(do)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
attn(q, k, v).backward(do)
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
