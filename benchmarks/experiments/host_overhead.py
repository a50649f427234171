"""Host time per call on a problem too small for the GPU to matter (H100).

    PYTHONPATH=.:benchmarks python benchmarks/experiments/host_overhead.py

B=1 H=1 L=256 D=64 bf16: the wall time per call is the host's (Python, argument
binding, launches). Forward under no_grad and forward+backward, attngen and Flex.
"""
import time

import torch

import attngen as ag
from bench_common import compiled_flex, flex_block_mask  # noqa: E402

B, H, L, D = 1, 1, 256, 64
CALLS = 300


def per_call(fn) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / CALLS * 1e6


def main() -> None:
    doc = (torch.arange(L, device="cuda") // (L // 4)).view(1, L).contiguous()
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    flex = compiled_flex()
    for name, variant, kw, mod in (
            ("dense", ag.Variant(), {}, None),
            ("causal", ag.Variant(mask=ag.causal()), {}, lambda b, h, qi, ki: qi >= ki),
            ("documents", ag.Variant(mask=ag.document() & ag.causal()), {"document_ids": doc},
             lambda b, h, qi, ki: (qi >= ki) & (doc[b, qi] == doc[b, ki]))):
        attn = ag.compile(variant)
        mask = flex_block_mask(mod, L, "cuda", B=1) if mod else None

        def fwd():
            with torch.no_grad():
                attn(q, k, v, **kw)

        def step():
            torch.autograd.grad(attn(q, k, v, **kw), (q, k, v), do)

        def flex_fwd():
            with torch.no_grad():
                flex(q, k, v, block_mask=mask)

        def flex_step():
            torch.autograd.grad(flex(q, k, v, block_mask=mask), (q, k, v), do)

        print(f"{name:10s} attngen fwd {per_call(fwd):6.0f} us, fwd+bwd {per_call(step):6.0f} us | "
              f"Flex fwd {per_call(flex_fwd):6.0f} us, fwd+bwd {per_call(flex_step):6.0f} us", flush=True)
    dense = ag.compile(ag.Variant())
    with torch.no_grad():
        dense(q, k, v)
    module, config = dense.module(q.device), dense.last_config
    out = torch.empty_like(q)
    lse = torch.empty((B, H, L), device="cuda", dtype=torch.float32)
    print(f"launch_forward alone (dense): {per_call(lambda: module.launch_forward(q, k, v, out, lse, 0.125, {}, None, config)):.0f} us")


if __name__ == "__main__":
    main()
