"""Does a second process reload the kernels' binaries through the cache entry's index?

    PYTHONPATH=. python benchmarks/experiments/second_process_binaries.py

Runs the same causal forward in two fresh processes on one temporary cache (attngen and
Triton). Each reports what attngen's binary index did (debug log), who called Triton's
``triton_key()`` (a stack per call) and how long the first call took.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent("""
    import logging, sys, time, traceback
    import torch
    import attngen as ag
    import triton.runtime.cache as triton_cache

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("attngen.runtime.triton_binaries").setLevel(logging.DEBUG)
    real_key = triton_cache.triton_key

    def traced_key():
        print("triton_key() called from:", "".join(traceback.format_stack(limit=8)[:-1]), file=sys.stderr)
        return real_key()

    triton_cache.triton_key = traced_key
    q, k, v = (torch.randn(1, 8, 4096, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    attn = ag.compile(ag.Variant(mask=ag.causal(), name="causal"))
    t1 = time.perf_counter()
    attn(q, k, v)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(f"compile {t1 - t0:.3f} s, first fwd {t2 - t1:.3f} s, from_cache={attn.from_cache}", file=sys.stderr)
""")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, ATTNGEN_CACHE_DIR=os.path.join(tmp, "attngen"), TRITON_CACHE_DIR=os.path.join(tmp, "triton"))
        for process in ("first", "second"):
            print(f"--- {process} process", flush=True)
            proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
            print(proc.stderr[-6000:], flush=True)
        for root, _, files in os.walk(os.path.join(tmp, "attngen")):
            for name in files:
                if name == "binaries.json":
                    print(open(os.path.join(root, name)).read())


if __name__ == "__main__":
    main()
