"""Context parallelism benchmark (issue 28): attngen.distributed over several GPUs of one host.

Launch with torchrun, one process per GPU, NVLink multicast off:

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
        torchrun --standalone --nproc-per-node 8 benchmarks/bench_context_parallel.py \\
        --parts causal --lengths 131072 --worlds 2,4,8 --check
    ... --parts causal --lengths 524288 --worlds 2,4,8
    ... --parts na --worlds 4,8 --check

    torchrun --standalone --nproc-per-node 2 benchmarks/bench_context_parallel.py --smoke
                                        # CPU, gloo, Triton interpreter, tiny sizes: checks the script

1. Causal, B=1 H=32 D=128 bf16, L = --lengths over each of --worlds (subgroups of the first W
   ranks of the launch, so one 8-process launch measures 2, 4 and 8 GPUs): attngen's ring,
   all-gather and Ulysses modes (balanced layout), PyTorch's ``context_parallel`` over SDPA
   (its rotate methods allgather and alltoall), and the one-GPU baselines at L / W (attngen,
   SDPA), forward and forward+backward; scaling efficiency = per-GPU throughput over the
   baseline's (target: ring >= 85% at 8 GPUs).
2. 3-D neighborhood attention on a video-sized grid (--na-grid frames,height,width, --na-kernel)
   sharded by frames over --worlds: halo mode and Ulysses, the bytes each sends against an
   all-gather of K/V (also timed), the slab's extra rows, and efficiency against one GPU on
   the grid of frames / W (target: >= 90%).

--check compares every sharded result (out, dq, dk, dv) with one GPU on the whole sequence
(relative L2 over 2e-2 is WRONG: exit status 1). Each rank holds the whole sequence then, so
check at the lengths one GPU can hold. Results: DIR/context_parallel.md and .json (DIR: --out,
else $OUT, else benchmarks/results/distributed/; --smoke: a temporary folder), with date,
GPU, versions and commit. Times are the slowest rank's means over --reps calls after
--warmup; at L=512K one causal forward on 2 GPUs takes seconds: split long runs into several
launches (each call of the device tool is limited to 10 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# NVLink multicast must stay off on the shared hosts (NCCL reads these when a communicator
# is made, so before init_process_group); setdefault would keep a caller's "1".
for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                      ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ[_name] = _value

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import run_environment  # noqa: E402
from context_parallel_cases import Settings, causal_records, na_records, subgroup  # noqa: E402
from context_parallel_report import markdown, wrong  # noqa: E402
from result_files import default_out, git_commit, write_atomic  # noqa: E402


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--parts", default="causal,na", help="causal, na or both (default both)")
    p.add_argument("--lengths", type=_ints, default=(131072, 524288), help="causal sequence lengths")
    p.add_argument("--worlds", type=_ints, default=None,
                   help="GPU counts to measure, each at most the launch's (default 2,4,8 that fit)")
    p.add_argument("--modes", default="ring,allgather,ulysses", help="attngen modes for the causal part")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch's context_parallel and SDPA")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--na-grid", type=_ints, default=(64, 48, 80), help="frames,height,width")
    p.add_argument("--na-kernel", type=_ints, default=(3, 11, 11))
    p.add_argument("--na-heads", type=int, default=24)
    p.add_argument("--check", action="store_true", help="compare with one GPU on the whole sequence")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="CPU, gloo, Triton interpreter, tiny sizes")
    args = p.parse_args(argv)
    if args.smoke:
        args.lengths, args.heads, args.dim, args.na_heads = (32,), 2, 16, 2
        args.na_grid, args.na_kernel, args.warmup, args.reps, args.check = (6, 3, 4), (3, 3, 3), 0, 1, True
        args.no_torch = True
    args.parts = tuple(x for x in args.parts.split(",") if x)
    args.modes = tuple(x for x in args.modes.split(",") if x)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if "RANK" not in os.environ:
        print("bench_context_parallel.py runs under torchrun (see --help)", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("bench_context_parallel.py needs CUDA GPUs (or --smoke)", file=sys.stderr)
        return 2
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    try:
        return _run(args, device, torch.bfloat16 if cuda else torch.float32)
    finally:
        dist.destroy_process_group()


def _run(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> int:
    launched = dist.get_world_size()
    worlds = args.worlds or tuple(w for w in (2, 4, 8) if w <= launched)
    if any(w > launched or w < 2 for w in worlds):
        raise SystemExit(f"--worlds {worlds}: each must be between 2 and the launch's {launched} processes")
    groups = {w: subgroup(w) for w in worlds}  # made by every rank, in one order
    rank = dist.get_rank()

    def settings(heads: int) -> Settings:
        return Settings(args.batch, heads, args.dim, dtype, device, args.warmup, args.reps, args.check, args.modes,
                        not args.no_torch)

    records = []
    for world, group in groups.items():
        mine = group if rank < world else None
        if "causal" in args.parts:
            for L in args.lengths:
                records += causal_records(settings(args.heads), L, world, mine)
        if "na" in args.parts:
            records += na_records(settings(args.na_heads), args.na_grid, args.na_kernel, world, mine)
    gathered = [None] * launched
    dist.all_gather_object(gathered, [r.as_dict() for r in records])
    if rank != 0:
        return 0
    # every rank of a group holds the same timings (the slowest rank's) and its own checks
    merged: dict[tuple, dict] = {}
    for part in gathered:
        for r in part:
            key = (r["part"], r["case"], r["world"], r["backend"])
            if key in merged:
                for name, err in r["rel_err"].items():
                    merged[key]["rel_err"][name] = max(err, merged[key]["rel_err"].get(name, 0.0))
            else:
                merged[key] = r
    all_records = list(merged.values())
    env = run_environment(device, dtype, git_commit())
    config = {"launched": launched, "backend": dist.get_backend(), "smoke": args.smoke,
              "nccl_nvls": os.environ.get("NCCL_NVLS_ENABLE"), "worlds": worlds, "args": {
                  k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                  for k, v in vars(args).items()}}
    out = args.out or default_out("distributed", smoke=args.smoke)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "context_parallel.json", json.dumps({"env": env, "config": config, "records": all_records},
                                                           indent=1, default=str))
    write_atomic(out / "context_parallel.md", markdown(env, config, all_records))
    print(markdown(env, config, all_records))
    bad = wrong(all_records)
    if bad:
        print("!!! WRONG RESULTS !!!\n" + "\n".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
