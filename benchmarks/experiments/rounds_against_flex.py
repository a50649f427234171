"""Interleaved rounds of attngen against FlexAttention on the comparison's own cases, for targets
that one comparison run leaves on the line (2-D neighborhood 31x31 forward+backward at 3x Flex,
dense forward+backward at 1.1x). One comparison run times each backend once; clocks drift 3-8%
under sustained load, so this times the pair round after round and reports every round's ratio
and the median.

    PYTHONPATH=.:benchmarks:benchmarks/experiments python benchmarks/experiments/rounds_against_flex.py \
        [--cases na2d_31,dense_L8192_D128] [--modes fwd,fwdbwd] [--rounds 5]

The forward+backward step is the comparison's (`out.backward(dout)`, which adds into the
leaves' .grad for both backends) and, as a second row, `torch.autograd.grad` (no accumulation).
"""
from __future__ import annotations

import argparse
import statistics

import torch
import triton

import compare_cases as cc  # noqa: E402 (benchmarks/ on sys.path)


def steps(fn: cc.Fn, inp: cc.Inputs) -> dict[str, cc.Fn]:
    def backward():
        fn().backward(inp.dout)

    def grad():
        torch.autograd.grad(fn(), inp.leaves, inp.dout)

    return {"fwd": fn, "fwdbwd": backward, "fwdbwd_grad": grad}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="na2d_31,dense_L8192_D128", help="comparison case keys (comma-separated)")
    p.add_argument("--modes", default="fwd,fwdbwd,fwdbwd_grad", help="fwd, fwdbwd (.backward), fwdbwd_grad (autograd.grad)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rep", type=float, default=200.0, help="do_bench repetition time, ms")
    args = p.parse_args()
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    for case in cc.cases_by_key(args.cases):
        inp = cc.make_inputs(case, torch.device("cuda"), torch.bfloat16, seed=0)
        fns = {backend: steps(cc.build(backend, case, inp), inp) for backend in ("attngen", "flex")}
        for mode in args.modes.split(","):
            flops = case.flops("fwd" if mode == "fwd" else "fwdbwd")
            ms = {b: [] for b in fns}
            with torch.set_grad_enabled(mode != "fwd"):
                for _ in range(args.rounds):
                    for backend, fn in fns.items():
                        inp.zero_grad()
                        ms[backend].append(triton.testing.do_bench(fn[mode], warmup=50, rep=args.rep))
            ratios = [f / a for a, f in zip(ms["attngen"], ms["flex"])]
            print(f"{case.key} {mode}: attngen ms {' '.join(f'{t:.3f}' for t in ms['attngen'])} | "
                  f"flex ms {' '.join(f'{t:.3f}' for t in ms['flex'])}", flush=True)
            print(f"{case.key} {mode}: x Flex per round {' '.join(f'{r:.3f}' for r in ratios)}; median "
                  f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}; attngen median "
                  f"{flops / statistics.median(ms['attngen']) / 1e9:.0f} TF/s", flush=True)


if __name__ == "__main__":
    main()
