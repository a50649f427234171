"""Forward+backward benchmark: attngen's generated backward against FlexAttention.

    PYTHONPATH=. python benchmarks/bench_backward.py [--out DIR] [--cases a,b] [--sweep]

bf16, D=128. Cases: PEERS.md's dense, causal and causal sliding window 1024 (B=2, H=16,
L=8192); packed documents (4 per sequence) with causal; ALiBi with learnable slopes (the
slopes' gradient comes from fp32 atomics; last, since Flex's gradient of captured tensors
can run out of memory); 2-D neighborhood 128x128 tokens with a 31x31 window (B=1, H=16). One training step is ``attn(q, k, v).backward(dout)``; TFLOP/s count
attended entries x 4 x D x 3.5 (forward + backward), as PEERS.md does. Gradients are
checked against Flex's (relative L2). ``--sweep`` also times other backward tile configs
for each case. Writes DIR/backward.md (default $OUT, else benchmarks/results/backward/).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import triton

import attngen as ag
import attngen.runtime.autograd as ag_autograd
from attngen.testing import relative_error

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import alibi_score, alibi_slopes  # noqa: E402
from neighborhood_cases import NACase, axis_attended  # noqa: E402
from neighborhood_peers import na_mask_mod  # noqa: E402
from result_files import default_out, git_commit  # noqa: E402

D = 128
WINDOW = 1024


@dataclass
class Case:
    key: str
    variant: ag.Variant
    B: int
    H: int
    L: int
    mask_mod: Callable | None  # FlexAttention's mask (None: dense)
    attended: int  # per (batch, head)
    flex_score: str | None = None  # "alibi": FlexAttention's score_mod reads tensors["slopes"]
    tensors: dict = field(default_factory=dict)  # name -> fn(device) building the runtime tensor
    spatial_shape: tuple | None = None


def _learnable_alibi_slopes(device):
    return alibi_slopes(16).to(device).requires_grad_()


def cases() -> list[Case]:
    L = 8192
    doc_len = L // 4
    na = NACase("na2d_31", (128, 128), (31, 31))
    na_attended = 1
    for size, k in zip(na.spatial, na.kernel):
        na_attended *= axis_attended(size, k, 1, 1, False)
    return [
        Case("dense", ag.Variant(), 2, 16, L, None, L * L),
        Case("causal", ag.Variant(mask=ag.causal()), 2, 16, L, lambda b, h, q, k: q >= k, L * (L + 1) // 2),
        Case(f"window{WINDOW}", ag.Variant(mask=ag.sliding_window(WINDOW - 1, 0)), 2, 16, L,
             lambda b, h, q, k: (q >= k) & (q - k < WINDOW), sum(min(i + 1, WINDOW) for i in range(L))),
        Case("documents", ag.Variant(mask=ag.causal() & ag.document()), 2, 16, L,
             lambda b, h, q, k: (q >= k) & (q // doc_len == k // doc_len), 4 * doc_len * (doc_len + 1) // 2,
             tensors={"document_ids": lambda dev: (torch.arange(L, device=dev) // doc_len).expand(2, L).contiguous()}),
        Case("na2d_128x128_k31", ag.Variant(mask=na.mask), 1, 16, na.L, na_mask_mod(na), na_attended,
             spatial_shape=na.spatial),
        Case("alibi_learnable", ag.Variant(score=alibi_score, mask=ag.causal()), 2, 16, L, lambda b, h, q, k: q >= k,
             L * (L + 1) // 2, flex_score="alibi", tensors={"slopes": _learnable_alibi_slopes}),
    ]


def sweep_pairs() -> list[tuple[ag.KernelConfig, ag.KernelConfig]]:
    """(dK/dV, dQ) configs: (query step, KV own) and (query own, KV step)."""
    out = []
    for own, step, warps, stages in [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3),
                                     (128, 64, 8, 2), (64, 64, 8, 3), (128, 128, 8, 2)]:
        out.append((ag.KernelConfig(step, own, warps, stages), ag.KernelConfig(own, step, warps, stages)))
    return out


def run_case(case: Case, flex, sweep: bool) -> list[str]:
    from torch.nn.attention.flex_attention import create_block_mask

    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(case.B, case.H, case.L, D, device=dev, dtype=torch.bfloat16, generator=gen)
               .requires_grad_() for _ in range(3))
    dout = torch.randn(case.B, case.H, case.L, D, device=dev, dtype=torch.bfloat16, generator=gen)
    tensors = {n: make(dev) for n, make in case.tensors.items()}
    learnable = [t for t in tensors.values() if t.requires_grad]
    block_mask = (create_block_mask(case.mask_mod, None, None, case.L, case.L, device=dev)
                  if case.mask_mod is not None else None)
    score_mod = None
    if case.flex_score == "alibi":
        slopes = tensors["slopes"]

        def score_mod(score, b, h, q_idx, kv_idx):
            return alibi_score(score, b, h, q_idx, kv_idx, slopes)

    attn = ag.compile(case.variant)
    extra = {"spatial_shape": case.spatial_shape} if case.spatial_shape else {}
    steps = {"attngen": lambda: attn(q, k, v, **extra, **tensors).backward(dout),
             "flex": lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask).backward(dout)}
    grads = {}
    for backend, step in list(steps.items()):
        for t in (q, k, v, *learnable):
            t.grad = None
        try:
            step()
        except torch.OutOfMemoryError:  # Flex's gradient of captured tensors can need O(L^2) memory
            print(f"{case.key}: {backend} ran out of memory", flush=True)
            del steps[backend]
            torch.cuda.empty_cache()
            continue
        grads[backend] = [t.grad.clone() for t in (q, k, v, *learnable)]
    if "flex" not in steps:
        t = triton.testing.do_bench(steps["attngen"], warmup=25, rep=100)
        row = f"| {case.key} | {t:.3f} ms, {4 * case.B * case.H * case.attended * D * 3.5 / t / 1e9:.0f} | " \
              "out of memory | | | |"
        print(row, flush=True)
        return [row]
    errors = [relative_error(a, b) for a, b in zip(grads["attngen"], grads["flex"])]
    flops = 4 * case.B * case.H * case.attended * D * 3.5
    ms = {backend: triton.testing.do_bench(step, warmup=25, rep=100) for backend, step in steps.items()}
    tf = {backend: flops / t / 1e9 for backend, t in ms.items()}
    with torch.no_grad():  # the forward's share of the step
        fwd = {"attngen": triton.testing.do_bench(lambda: attn(q, k, v, **extra, **tensors), warmup=25, rep=100),
               "flex": triton.testing.do_bench(lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask),
                                               warmup=25, rep=100)}
    rows = [f"| {case.key} | {ms['attngen']:.3f} ms, {tf['attngen']:.0f} | {ms['flex']:.3f} ms, {tf['flex']:.0f} | "
            f"x{tf['attngen'] / tf['flex']:.2f} | {fwd['attngen']:.3f} / {fwd['flex']:.3f} ms | {max(errors):.1e} |"]
    print(rows[-1], flush=True)
    if sweep:
        chosen = ag_autograd.backward_config
        for pair in sweep_pairs():
            ag_autograd.backward_config = lambda device, forward, masked, pair=pair: pair
            try:
                t = triton.testing.do_bench(steps["attngen"], warmup=10, rep=50)
                label = f"sweep dkdv {pair[0].block_m}x{pair[0].block_n} dq {pair[1].block_m}x{pair[1].block_n} " \
                        f"w{pair[0].num_warps} s{pair[0].num_stages}"
                rows.append(f"| {case.key} {label} | {t:.3f} ms, {flops / t / 1e9:.0f} | | x{ms['flex'] / t:.2f} | | |")
            except Exception as exc:  # a config that does not fit: say so and go on
                rows.append(f"| {case.key} sweep {pair} | {type(exc).__name__} | | | | |")
            finally:
                ag_autograd.backward_config = chosen
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: $OUT, else benchmarks/results/backward/)")
    parser.add_argument("--cases", help="comma-separated case keys (default: all)")
    parser.add_argument("--sweep", action="store_true", help="also time other backward tile configs")
    args = parser.parse_args()
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    selected = cases()
    if args.cases:
        keys = args.cases.split(",")
        unknown = set(keys) - {c.key for c in selected}
        if unknown:
            parser.error(f"unknown cases {sorted(unknown)}; known: {[c.key for c in selected]}")
        selected = [c for c in selected if c.key in keys]
    rows = []
    for case in selected:
        rows += run_case(case, flex, args.sweep)
    header = [
        "# attngen forward+backward benchmark", "",
        f"- date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
        f"- GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, Triton {triton.__version__}, "
        f"attngen {ag.__version__} (commit {git_commit()})",
        f"- bf16, D={D}; one step = forward + backward; median of do_bench(25, 100)",
        "- TFLOP/s = 4 x attended entries x D x 3.5; x = attngen / Flex; err = max relative L2 of the gradients "
        "(q, k, v and learnable tensors) against Flex's; fwd = forward alone (no grad), attngen / Flex", "",
        "| case | attngen (TFLOP/s) | FlexAttention | x Flex | fwd | grad err |", "|---|---|---|---|---|---|",
    ]
    out = args.out or default_out("backward")
    out.mkdir(parents=True, exist_ok=True)
    (out / "backward.md").write_text("\n".join(header + rows) + "\n")
    print(f"wrote {out / 'backward.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
