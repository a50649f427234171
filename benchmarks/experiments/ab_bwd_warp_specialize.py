"""A/B: Triton 3.6's Hopper options in the backward passes: warp specialization, TMA loads.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_bwd_warp_specialize.py [--rounds N] [--cases ...]

The experiments of 987419b tried `warp_specialize` on the forward only (+1.5% on 128x128 tiles, a compiler
crash on 64x64) and TMA descriptors on a hand-written dK/dV pass (1.5-3%). The dense
forward+backward misses issue 6's 1.1x Flex by 5% (8.66 against 9.11 ms), all of it in the
backward: one 8-warp CTA per SM at 255 registers, nothing overlapping a step's elementwise work
with its products except the issue order. FlashAttention-3's answer is a producer warp group
feeding consumers; Triton's `tl.range(..., warp_specialize=True)` derives that split from the loop.

Variants of the generated module, edited as text (rewritten.py), backward alone of one retained
forward, interleaved rounds, H100 bf16; gradients compared with the generated module's:
  generated   the module as shipped
  one head    the GQA loop over a group's heads unrolled to its one head (GROUP = 1 here): the
              control for the edits below, which need the query loops outermost
  ws dK/dV    + warp_specialize on the dK/dV pass's query loops
  ws dQ       warp_specialize on the dQ pass's KV loops
  tma dK/dV   + the dK/dV step loads Q and dO through tensor descriptors
  tma+ws dK/dV  both
"""
from __future__ import annotations

import argparse
import dataclasses
import re

import torch
import triton

import attngen as ag
from rewritten import edit_kernel, interleaved_ms, replace_once, use_rewritten  # noqa: E402 (this folder)


def one_head(source: str) -> str:
    """The dK/dV pass's loop over the query heads of a GQA group, for one head only."""
    return edit_kernel(source, "_bwd_dkdv", lambda s: replace_once(
        s, "for g in range(0, GROUP):", "for g in tl.static_range(0, 1):"))


def _ws_loops(text: str, var: str) -> str:
    new, n = re.subn(rf"for {var} in range\((.*)\):\n", rf"for {var} in tl.range(\1, warp_specialize=True):\n", text)
    assert n, f"no loop over {var}"
    return new


def ws_dkdv(source: str) -> str:
    source = one_head(source)
    return edit_kernel(source, "_bwd_dkdv", lambda s: _ws_loops(s, "start_m"))


def ws_dq(source: str) -> str:
    return edit_kernel(source, "_bwd_dq", lambda s: _ws_loops(s, "start_n"))


def tma_dkdv(source: str) -> str:
    """Q and dO of the dK/dV step through 2-D tensor descriptors over (B*H*L, D) (valid for
    contiguous (B, H, L, D) inputs whose query tiles are whole: EVEN_M)."""
    source = one_head(source)

    def edit_step(s: str) -> str:
        s = replace_once(s, "q_base, do_base, offs_m, row_ok, l_base, Lse2, Delta,",
                         "q_base, do_base, offs_m, row_ok, l_base, Lse2, Delta, start_row,")
        s = replace_once(s, "q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd)\n",
                         "q = q_base.load([start_row, 0])\n")
        return replace_once(s, "do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod)\n",
                            "do = do_base.load([start_row, 0])\n")

    def edit_launch_kernel(s: str) -> str:
        s = s.replace("offs_m, offs_m < Lq, l_base, Lse2, Delta,",
                      "offs_m, offs_m < Lq, l_base, Lse2, Delta, (l_base + start_m).to(tl.int32),")
        rows = "tl.num_programs(1) // HKV * HQ * Lq"
        s = replace_once(s, "q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh",
                         f"q_base = tl.make_tensor_descriptor(Q, shape=[{rows}, D], strides=[stride_qm, 1], "
                         "block_shape=[BLOCK_M, BLOCK_D])")
        return replace_once(s, "do_base = DO + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh",
                            f"do_base = tl.make_tensor_descriptor(DO, shape=[{rows}, DV], strides=[stride_dom, 1], "
                            "block_shape=[BLOCK_M, BLOCK_DV])")

    source = edit_kernel(edit_kernel(source, "_bwd_dkdv_step", edit_step), "_bwd_dkdv", edit_launch_kernel)
    # descriptors made on the device need a scratch allocation; the allocator is a context
    # variable, and autograd runs the backward on its own thread, so set it where it launches
    launcher = "def launch_backward(q, k, v, out, lse, dout, dlse, sm_scale, tensors, grads, config, tiles):\n"
    return replace_once(source, launcher, launcher + "    triton.set_allocator(_scratch)\n").replace(
        "\ndef launch_backward(", "\ndef _scratch(size, align, stream):\n"
        "    return torch.empty(size, dtype=torch.int8, device='cuda')\n\n\ndef launch_backward(", 1)


EDITS = {
    "generated": None,
    "one head": one_head,
    "ws dK/dV": ws_dkdv,
    "ws dQ": ws_dq,
    "tma dK/dV": tma_dkdv,
    "tma+ws dK/dV": lambda s: edit_kernel(tma_dkdv(s), "_bwd_dkdv", lambda t: _ws_loops(t, "start_m")),
}


def cases() -> dict:
    """name: (variant, B, H, L, D, call kwargs, attended fraction of L*L)."""
    docs = (torch.arange(8192, device="cuda") // 2048).expand(2, -1).contiguous()
    return {
        "dense": (ag.Variant(), 2, 16, 8192, 128, {}, 1.0),
        "causal": (ag.Variant(mask=ag.causal()), 2, 16, 8192, 128, {}, 0.5),
        "documents": (ag.Variant(mask=ag.causal() & ag.document()), 2, 16, 8192, 128, {"document_ids": docs}, 1 / 8),
        "dense D64": (ag.Variant(), 4, 16, 4096, 64, {}, 1.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--cases", default="dense,causal,documents")
    ap.add_argument("--edits", default=",".join(EDITS))
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    all_cases = cases()
    runs, flops = {}, {}
    for n, name in enumerate(args.cases.split(",")):
        variant, B, H, L, D, kwargs, frac = all_cases[name]
        torch.manual_seed(n)
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        ref = None
        for label in args.edits.split(","):
            edit = EDITS[label]
            tag = re.sub(r"\W", "_", f"{name}_{label}")
            attn = ag.compile(dataclasses.replace(variant, name=f"ws_{tag}"))
            try:
                if edit is not None:
                    use_rewritten(attn, edit)
                out = attn(q, k, v, **kwargs)
                got = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
                torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001 - the compiler's failures are results here
                print(f"{name} {label}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                      flush=True)
                continue
            if ref is None:
                ref = got
            else:
                err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, ref))
                print(f"{name} {label}: gradients vs generated, max rel err {err:.1e}", flush=True)
            runs[(name, label)] = (lambda out=out, q=q, k=k, v=v, do=do:
                                   torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            flops[(name, label)] = 2.5 * 4 * B * H * L * L * D * frac
    times = interleaved_ms(runs, args.rounds)
    for (name, label), t in times.items():
        rates = [flops[(name, label)] / ms / 1e9 for ms in t]
        print(f"{name:10s} {label:14s}: " + " ".join(f"{x:.3f}" for x in t)
              + f" ms (median {sorted(t)[len(t) // 2]:.3f}; {sorted(rates)[len(rates) // 2]:.0f} TF/s)", flush=True)


if __name__ == "__main__":
    main()
