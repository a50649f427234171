"""Where a forward+backward step's time goes, attngen against FlexAttention: CUDA time per
kernel (torch.profiler) next to the step's wall time (do_bench), on the comparison's cases.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/profile_training_step.py \
        [--cases dense_L8192_D128,causal_L8192_D128] [--steps 5]
    ... profile_training_step.py --models lm,nat   # the example models' compiled training steps

Issue 6 asks dense forward+backward for 1.1x Flex; comparison runs measure 1.05x. The step's
wall time minus the sum of its kernels' times is what runs on no stream (host waits, gaps
between launches); a kernel whose time differs from the same pass of the peer is where to look.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import triton
from torch.profiler import ProfilerActivity, profile

import compare_cases as cc  # noqa: E402 (benchmarks/ on sys.path)


def kernel_times(step, steps: int) -> dict[str, float]:
    """{kernel name: us of CUDA time per step}, from ``steps`` profiled steps after a warm-up."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name[:90]] += event.device_time / steps
    return dict(per_kernel)


def model_steps(names: list[str], steps: int) -> None:
    """The example models' (examples/train_lm.py, train_nat.py) compiled training steps, per
    backend: the step's wall time against its kernels' sum (host-bound when wall >> kernels),
    and the kernels that differ."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    import train_lm
    import train_nat

    device = torch.device("cuda")
    for name in names:
        module = {"lm": train_lm, "nat": train_nat}[name]
        cfg = module.PRESETS["full"]
        inputs, targets = module.make_batches(cfg, 1, 0, device)[0]
        for backend in ("attngen", "flex"):
            torch._dynamo.reset()
            model = module.make_model(backend, cfg, device)
            compiled = torch.compile(model, fullgraph=True)

            def step(compiled=compiled, model=model):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = compiled(inputs, targets)
                loss.backward()
                model.zero_grad(set_to_none=True)

            times = kernel_times(step, steps)
            wall = triton.testing.do_bench(step, warmup=50, rep=300)
            total = sum(times.values()) / 1e3
            print(f"\n{name} {backend}: step {wall:.3f} ms (do_bench, no optimizer), kernels {total:.3f} ms", flush=True)
            for kernel, us in sorted(times.items(), key=lambda kv: -kv[1])[:14]:
                print(f"  {us:9.1f} us  {kernel}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="dense_L8192_D128,causal_L8192_D128")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--models", default=None, help="lm,nat: profile the example models' training steps instead")
    args = p.parse_args()
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    if args.models:
        model_steps(args.models.split(","), args.steps)
        return
    for case in cc.cases_by_key(args.cases):
        inp = cc.make_inputs(case, torch.device("cuda"), torch.bfloat16, seed=0)
        for backend in ("attngen", "flex"):
            fn = cc.build(backend, case, inp)

            def step(fn=fn):
                fn().backward(inp.dout)

            with torch.enable_grad():
                times = kernel_times(step, args.steps)
                wall = triton.testing.do_bench(step, warmup=50, rep=300)
            total = sum(times.values()) / 1e3
            print(f"\n{case.key} {backend}: step {wall:.3f} ms (do_bench), kernels {total:.3f} ms summed over streams", flush=True)
            for name, us in sorted(times.items(), key=lambda kv: -kv[1]):
                if us >= 5:
                    print(f"  {us:9.1f} us  {name}", flush=True)


if __name__ == "__main__":
    main()
