"""Which head-dim pairs and launch configs give wrong results on this GPU.

Seen on the H100 (Triton 3.6): fp16/bf16 with D=40 and Dv=24 gives wrong outputs or an
illegal memory access, while other pairs are fine. Each (D, Dv, dtype, config) case runs
in its own process, because an illegal access poisons the CUDA context for what follows.
Prints one line per case and a summary; exit status 1 if any case is wrong.

    PYTHONPATH=. python benchmarks/diagnose_head_dims.py [--all]

The default (float16, dense: 60 cases, a few seconds each) fits one device call; --all
adds bfloat16 and causal (four times as many).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import subprocess
import sys

PAIRS = [(40, 24), (40, 40), (48, 24), (64, 24), (24, 40), (40, 32), (40, 64), (56, 24), (72, 24), (40, 16)]
CONFIGS = [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (64, 64, 4, 2), (128, 128, 8, 3), (64, 32, 4, 2)]
DTYPES = ["float16", "bfloat16"]

CASE = r"""
import json, sys, torch, attngen as ag
from attngen.testing import relative_error
D, DV, dtype, cfg, mask = json.loads(sys.argv[1])
dtype = getattr(torch, dtype)
v = ag.Variant(mask=ag.causal()) if mask == "causal" else ag.Variant()
g = torch.Generator().manual_seed(0)
q = torch.randn(1, 2, 256, D, generator=g).to("cuda", dtype)
k = torch.randn(1, 2, 256, D, generator=g).to("cuda", dtype)
val = torch.randn(1, 2, 256, DV, generator=g).to("cuda", dtype)
out = ag.compile(v)(q, k, val, config=ag.KernelConfig(*cfg))
torch.cuda.synchronize()
print(json.dumps({"err": relative_error(out, ag.reference(v)(q, k, val))}))
"""


def run_case(D: int, DV: int, dtype: str, cfg: tuple, mask: str) -> str:
    proc = subprocess.run([sys.executable, "-c", CASE, json.dumps([D, DV, dtype, cfg, mask])],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"CRASH {last[:90]}"
    err = json.loads(proc.stdout.strip().splitlines()[-1])["err"]
    return f"{'ok   ' if err < 2e-2 else 'WRONG'} {err:.1e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also bfloat16 and the causal mask")
    parser.add_argument("--jobs", type=int, default=4, help="cases run at once (default 4)")
    args = parser.parse_args()
    dtypes = DTYPES if args.all else DTYPES[:1]
    masks = ["dense", "causal"] if args.all else ["dense"]
    cases = [(D, DV, dtype, cfg, mask)
             for (D, DV), dtype, cfg, mask in itertools.product(PAIRS, dtypes, CONFIGS, masks)]
    bad = 0
    # each case is its own process anyway; running a few at once only shares the GPU
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for (D, DV, dtype, cfg, mask), status in zip(cases, pool.map(lambda c: run_case(*c), cases)):
            bad += not status.startswith("ok")
            print(f"D={D:<3} Dv={DV:<3} {dtype:<8} {mask:<6} config={cfg}: {status}", flush=True)
    print(f"{bad} bad cases")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
