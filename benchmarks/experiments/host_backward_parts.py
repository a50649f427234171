"""Host time of the backward by part (tiny causal problem, H100): the autograd backward, launch_backward, each Triton launch.

    PYTHONPATH=. python benchmarks/experiments/host_backward_parts.py
"""
import time, torch, attngen as ag, triton
import attngen.runtime.autograd as AG
B,H,L,D=1,1,256,64
q,k,v=(torch.randn(B,H,L,D,device="cuda",dtype=torch.bfloat16,requires_grad=True) for _ in range(3)); do=torch.randn_like(q)
attn=ag.compile(ag.Variant(mask=ag.causal()))
module=attn.module(q.device)
T={}
def timed(name, fn):
    def w(*a, **k):
        t=time.perf_counter(); r=fn(*a, **k); T[name]=T.get(name,0)+time.perf_counter()-t; return r
    return w
orig_bwd=AG.AttentionFunction.backward
AG.AttentionFunction.backward=staticmethod(timed("backward(total)", orig_bwd))
module.launch_backward=timed("launch_backward", module.launch_backward)
for kname in ("causal_bwd_dkdv","causal_bwd_dq","causal_bwd_preprocess"):
    pass
jits=[n for n,o in vars(module).items() if hasattr(o,"run") and "bwd" in n and not n.startswith("_")]
print(jits)
for n in jits:
    fn=getattr(module,n); fn.run=timed("run "+n, fn.run)
def step():
    out=attn(q,k,v); torch.autograd.grad(out,(q,k,v),do)
for _ in range(20): step()
torch.cuda.synchronize(); T.clear()
N=300
t=time.perf_counter()
for _ in range(N): step()
torch.cuda.synchronize()
tot=time.perf_counter()-t
print(f"step {tot/N*1e6:.0f} us")
for k_,v_ in T.items(): print(f"{k_:40s} {v_/N*1e6:.0f} us")
t=time.perf_counter()
for _ in range(N):
    out=attn(q,k,v)
torch.cuda.synchronize(); print(f"fwd with grad (no backward) {(time.perf_counter()-t)/N*1e6:.0f} us")
out=attn(q,k,v)
t=time.perf_counter()
for _ in range(N):
    torch.autograd.grad(out,(q,k,v),do, retain_graph=True)
torch.cuda.synchronize(); print(f"grad only {(time.perf_counter()-t)/N*1e6:.0f} us")

# The forward with gradients enabled, by part.
import attngen.runtime.attention as AT
T.clear()
AT.CompiledAttention._backward_setup = timed("_backward_setup", AT.CompiledAttention._backward_setup)
AG.AttentionFunction.apply = timed("AttentionFunction.apply", AG.AttentionFunction.apply)
AT.CompiledAttention.prepare = timed("prepare", AT.CompiledAttention.prepare)
AT.CompiledAttention._launch_with_fallback = timed("_launch_with_fallback", AT.CompiledAttention._launch_with_fallback)
fwd_kernel = [o for n, o in vars(module).items() if n.endswith("_fwd")][0]
fwd_kernel.run = timed("run fwd kernel", fwd_kernel.run)
t = time.perf_counter()
for _ in range(N):
    out = attn(q, k, v)
torch.cuda.synchronize()
print(f"fwd with grad {(time.perf_counter() - t) / N * 1e6:.0f} us; parts:")
for k_, v_ in T.items():
    print(f"  {k_:40s} {v_ / N * 1e6:.0f} us")
T.clear()
with torch.no_grad():
    t = time.perf_counter()
    for _ in range(N):
        out = attn(q, k, v)
    torch.cuda.synchronize()
print(f"fwd no grad {(time.perf_counter() - t) / N * 1e6:.0f} us; parts:")
for k_, v_ in T.items():
    print(f"  {k_:40s} {v_ / N * 1e6:.0f} us")
