"""A/B: partial tiles testing the classifier's spans (two bounds per row or key) against
evaluating the mask (gathers of the mask's tensors), on the same compiled module: the
cached classifications' ``spans_exact`` flag is switched between rounds, and the kernels
specialize on it (constexpr SPANS). FlexAttention on the same inputs as the yardstick.

    PYTHONPATH=.:benchmarks:benchmarks/experiments python benchmarks/experiments/ab_spans.py [--rounds 5]

H100, bf16, B=2 H=16 L=8192 D=128: packed causal documents (4 x 2048, the comparison's
case), and documents of 1000-3000 tokens not aligned to the tiles. Times the forward, the
backward alone (autograd.grad on a kept graph) and forward+backward (autograd.grad), per round.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import triton

import attngen as ag
import bench_common as common  # noqa: E402 (benchmarks/ on sys.path)
import compare_cases as cc  # noqa: E402

B, H, L, D = 2, 16, 8192, 128


def documents(lengths: list[int]) -> torch.Tensor:
    ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return ids.expand(B, -1).contiguous().cuda()


def classifications(attn) -> list:
    """Every cached classification of ``attn``, the dK/dV pass's transposed lists included."""
    return [t for _, lists in attn._tiles._entries.values() for t in (lists, lists._transposed) if t is not None]


def set_spans(attn, on: bool, exact: dict[int, bool]) -> None:
    """Spans on (where the classification found them exact, ``exact`` by id) or off."""
    for t in classifications(attn):
        t.spans_exact = on and exact[id(t)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    attn = ag.compile(ag.Variant(mask=ag.document() & ag.causal()))
    flex = common.compiled_flex()
    cases = {"4x2048": documents([2048] * 4),
             "ragged": documents([1000, 3000, 1500, 1192, 1500])}
    for name, ids in cases.items():
        out = attn(q, k, v, document_ids=ids)
        torch.autograd.grad(out, leaves, dout)  # classify every orientation
        exact = {id(t): t.spans_exact for t in classifications(attn)}
        print(f"{name}: spans exact per classification {list(exact.values())}", flush=True)
        block_mask = common.flex_block_mask(cc.document_mod(ids), L, "cuda", B=B)

        def fwd():
            with torch.no_grad():
                attn(q, k, v, document_ids=ids)

        def fwdbwd():
            torch.autograd.grad(attn(q, k, v, document_ids=ids), leaves, dout)

        kept = attn(q, k, v, document_ids=ids)

        def bwd():
            torch.autograd.grad(kept, leaves, dout, retain_graph=True)

        def flex_fwdbwd():
            torch.autograd.grad(flex(q, k, v, block_mask=block_mask), leaves, dout)

        # correctness of both paths against Flex on the whole tensors
        for on in (False, True):
            set_spans(attn, on, exact)
            o = attn(q, k, v, document_ids=ids)
            g = torch.autograd.grad(o, leaves, dout)
            fo = flex(q, k, v, block_mask=block_mask)
            fg = torch.autograd.grad(fo, leaves, dout)
            errs = [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip((o, *g), (fo, *fg))]
            print(f"{name} spans={on}: rel err vs Flex out/dq/dk/dv {' '.join(f'{e:.1e}' for e in errs)}", flush=True)
        times = {key: [] for key in ("fwd_mask", "fwd_spans", "bwd_mask", "bwd_spans", "fwdbwd_mask",
                                     "fwdbwd_spans", "flex_fwdbwd")}
        for _ in range(args.rounds):
            for on in (False, True):
                set_spans(attn, on, exact)
                tag = "spans" if on else "mask"
                times[f"fwd_{tag}"].append(triton.testing.do_bench(fwd, warmup=25, rep=100))
                times[f"bwd_{tag}"].append(triton.testing.do_bench(bwd, warmup=25, rep=100))
                times[f"fwdbwd_{tag}"].append(triton.testing.do_bench(fwdbwd, warmup=25, rep=100))
            times["flex_fwdbwd"].append(triton.testing.do_bench(flex_fwdbwd, warmup=25, rep=100))
        for key, ts in times.items():
            print(f"{name} {key}: ms {' '.join(f'{t:.3f}' for t in ts)}; median {statistics.median(ts):.3f}", flush=True)
        for what in ("fwd", "bwd", "fwdbwd"):
            r = [a / b for a, b in zip(times[f"{what}_mask"], times[f"{what}_spans"])]
            print(f"{name} {what}: mask / spans per round {' '.join(f'{x:.3f}' for x in r)}; "
                  f"median {statistics.median(r):.3f}", flush=True)
        r = [f / a for f, a in zip(times["flex_fwdbwd"], times["fwdbwd_spans"])]
        print(f"{name} fwdbwd with spans: x Flex per round {' '.join(f'{x:.3f}' for x in r)}; "
              f"median {statistics.median(r):.3f}", flush=True)
        set_spans(attn, True, exact)


if __name__ == "__main__":
    main()
