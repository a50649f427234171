"""Linear attention: Lightning Attention's decayed kernel and elu(x)+1 attention, forward and backward.

    PYTHONPATH=. python examples/linear_attention.py

Compiles the built-in `lightning` variant (causal, per-head decay exp(decay_log[h] (i - j)),
no feature map, no normalizer) and a normalized elu(x)+1 variant, runs them with gradients,
and compares output and gradients with the float64 reference. GPU: bfloat16 and a timing;
CPU: float32 under the Triton interpreter, small shapes.
"""
from __future__ import annotations

import sys

import torch

import attngen as ag
from attngen.library import builtin
from attngen.testing import relative_error


def alibi_decay(heads: int) -> torch.Tensor:
    """Lightning Attention's per-head decay rates (ALiBi's slopes 2^(-8 (h+1) / H)), as logs."""
    return -torch.exp2(-8.0 * torch.arange(1, heads + 1) / heads)


def check(variant: ag.Variant, q, k, v, **tensors) -> bool:
    attn = ag.compile(variant)
    leaves = [t.detach().requires_grad_() for t in (q, k, v, *tensors.values())]
    q, k, v, *rest = leaves
    tensors = dict(zip(tensors, rest))
    out = attn(q, k, v, **tensors)
    ref = ag.reference(variant)(q, k, v, **tensors)
    dout = torch.randn_like(ref)
    got = torch.autograd.grad((out.double() * dout).sum(), leaves)
    want = torch.autograd.grad((ref * dout).sum(), leaves)
    errors = {"out": relative_error(out.detach(), ref.detach())}
    errors.update({f"d{name}": relative_error(a, b) for name, a, b in zip(["q", "k", "v", *tensors], got, want)})
    tol = 2e-2 if q.dtype == torch.bfloat16 else 1e-4
    ok = all(e < (5 * tol if name != "out" else tol) for name, e in errors.items())
    print(f"{variant.label}: " + ", ".join(f"{name} {e:.1e}" for name, e in errors.items())
          + f" -> {'OK' if ok else 'FAIL'}")
    return ok


def main() -> int:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    B, H, L, D = (1, 8, 2048, 128) if cuda else (1, 2, 200, 32)
    where = "GPU: " + torch.cuda.get_device_name() if cuda else "CPU, Triton interpreter"
    print(f"{where}, {dtype}, B={B} H={H} L={L} D={D}")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(device, dtype) for _ in range(3))
    decay_log = alibi_decay(H).to(device)

    lightning = builtin("lightning")
    print(f"variant:\n{lightning.to_text()}")
    ok = check(lightning, q, k, v, decay_log=decay_log)
    elu1 = ag.Variant(mask=ag.causal(), norm=ag.linear("elu1", normalize=True), name="elu1_causal")
    ok &= check(elu1, q, k, v)

    if cuda:
        import triton

        attn = ag.compile(lightning)
        # the benchmark's shape (benchmarks/bench_linear.py has the comparison with fla)
        B, H, L = 8, 32, 2048
        q, k, v = (torch.randn(B, H, L, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        decay_log = alibi_decay(H).to(device)
        dout = torch.randn_like(q)
        with torch.no_grad():
            fwd = triton.testing.do_bench(lambda: attn(q, k, v, decay_log=decay_log), return_mode="median")
        step = triton.testing.do_bench(lambda: attn(q, k, v, decay_log=decay_log).backward(dout),
                                       return_mode="median")
        print(f"lightning B={B} H={H} L={L} D={D}: forward {fwd:.3f} ms, forward+backward {step:.3f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
