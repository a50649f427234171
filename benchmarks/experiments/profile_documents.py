"""Where the document-mask backward spends its time, kernel by kernel, next to Flex's.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/profile_documents.py [DOCS] [--host]

H100, bf16, B=2 H=16 L=8192 D=128, DOCS causal packed documents (default 16). Prints the
CUDA time per kernel (torch.profiler) of 10 forward+backward steps for attngen and Flex,
and the wall time per step; ``--host`` adds a cProfile of attngen's host side.
"""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import attngen as ag
from bench_common import compiled_flex, flex_block_mask  # noqa: E402

B, H, L, D = 2, 16, 8192, 128


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    docs = int(args[0]) if args else 16
    doc = (torch.arange(L, device="cuda") // (L // docs)).expand(B, L).contiguous()
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    attn = ag.compile(ag.Variant(mask=ag.document() & ag.causal()))
    flex = compiled_flex()
    mask = flex_block_mask(lambda b, h, qi, ki: (qi >= ki) & (doc[b, qi] == doc[b, ki]), L, "cuda", B=B)
    steps = {
        "attngen": lambda: torch.autograd.grad(attn(q, k, v, document_ids=doc), (q, k, v), do),
        "flex": lambda: torch.autograd.grad(flex(q, k, v, block_mask=mask), (q, k, v), do),
    }
    for name, step in steps.items():
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        print(f"=== {name}: {(time.perf_counter() - start) / 20 * 1e3:.3f} ms per fwd+bwd (wall)", flush=True)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60),
              flush=True)
        if name == "attngen" and "--host" in sys.argv:
            import cProfile
            import pstats

            host = cProfile.Profile()
            host.enable()
            for _ in range(20):
                step()
            host.disable()
            torch.cuda.synchronize()
            pstats.Stats(host).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
