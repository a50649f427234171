"""Where a second process's first call goes (warm attngen and Triton caches): cProfile of
ag.compile and of the first forward, after imports and CUDA set-up. Run twice with the
same ATTNGEN_CACHE_DIR / TRITON_CACHE_DIR; the second run's profile is the one that counts."""
import cProfile
import pstats
import sys
import time

import torch

import attngen as ag

q, k, v = (torch.randn(1, 8, 4096, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
torch.cuda.synchronize()
variant = ag.Variant(mask=ag.causal(), name="profile_probe")
for label, fn in (("compile", lambda: ag.compile(variant)), ("first forward", None)):
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    if fn is not None:
        attn = fn()
    else:
        with torch.no_grad():
            attn(q, k, v)
        torch.cuda.synchronize()
    prof.disable()
    print(f"== {label}: {time.perf_counter() - t0:.3f} s", flush=True)
    pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(int(sys.argv[1]) if len(sys.argv) > 1 else 25)
