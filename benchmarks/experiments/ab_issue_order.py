"""A/B: the backward steps issue both waited products before any elementwise work.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_issue_order.py [--rounds N] [--cases a,b]

bwd_halves.py (hand-written dK/dV, dense and causal, L=8192 D=128) measured the template's
order (qk, p, dV +=, dP, dS, dK +=) against dP issued right after qk: 3.86-3.99 -> 3.71-3.76 ms
dense, 2.37 -> 2.26-2.29 ms causal. Triton waits on a product at its first use, and the wait
drains everything issued before it, so a dP issued after the dV product turned dV synchronous.
Earlier versions of this A/B (their logs are in git at fb6e0b8) also moved dP in the
dQ step (slower in 7 of 9 cases: dropped), issued the dV product beside dK's after dS (kept),
and found the causal kernel's masked steps spilling in the new order (4% slower; 8 warps), where
the 4-warp 2-D neighborhood ran 4% faster with them. "new" is the template now: unmasked steps,
and masked steps of 4-warp kernels, issue qk and dP, then the elementwise work, then the dV and
dK products; "old" runs every step in the former order; "all early" puts the masked steps of
8-warp kernels in the new order too.
Forward+backward (torch.autograd.grad; with --backward-only the backward of one retained
forward), interleaved rounds, H100 bf16; gradients compared with "new"'s, and the registers
and spills of each backward kernel printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import re

import torch
import triton

import attngen as ag
from rewritten import interleaved_ms, replace_once, use_rewritten  # noqa: E402 (this folder)

RULE = "    masked_issue_early = kv_cfg.num_warps < 8\n"
UNMASKED_EARLY = 'ISSUE_EARLY=True'


def old_order(source: str) -> str:
    """Every dK/dV step in the former order: qk, p, dV +=, dP, dS, dK +=."""
    source = replace_once(source, RULE, "    masked_issue_early = False\n")
    return source.replace(UNMASKED_EARLY, "ISSUE_EARLY=MASKED_ISSUE_EARLY")  # (two-sided bands have none)


def all_early(source: str) -> str:
    """Masked steps of 8-warp kernels in the new order too."""
    return replace_once(source, RULE, "    masked_issue_early = True\n")


def kernel_resources(attn) -> str:
    """Registers and spills of the backward kernels ``attn``'s module has compiled."""
    parts = []
    for fn_name in dir(attn._module):
        fn = getattr(attn._module, fn_name)
        if not fn_name.endswith(("_bwd_dkdv", "_bwd_dq")) or not hasattr(fn, "device_caches"):
            continue
        for caches in fn.device_caches.values():
            for kernel in caches[0].values():
                parts.append(f"{fn_name.rsplit('_bwd_', 1)[1]} {kernel.n_regs} regs {kernel.n_spills} spills")
    return ", ".join(parts)


def cases() -> dict:
    """name: (variant, B, H, L, D, call kwargs, attended fraction of L*L)."""
    docs = (torch.arange(8192, device="cuda") // 2048).expand(2, -1).contiguous()
    return {
        "dense": (ag.Variant(), 2, 16, 8192, 128, {}, 1.0),
        "causal": (ag.Variant(mask=ag.causal()), 2, 16, 8192, 128, {}, 0.5),
        "dense D64": (ag.Variant(), 4, 16, 4096, 64, {}, 1.0),
        "window 1024": (ag.Variant(mask=ag.causal() & ag.sliding_window(1023)), 2, 16, 8192, 128, {}, 1024 / 8192),
        "documents": (ag.Variant(mask=ag.causal() & ag.document()), 2, 16, 8192, 128, {"document_ids": docs}, 1 / 8),
        "sigmoid": (ag.Variant(norm=ag.sigmoid()), 2, 16, 8192, 128, {}, 1.0),
        "na2d": (ag.Variant(mask=ag.neighborhood(31)), 1, 16, 128 * 128, 128, {"spatial_shape": (128, 128)},
                 31 * 31 / (128 * 128)),
        "na3d": (ag.Variant(mask=ag.neighborhood((7, 15, 15))), 1, 16, 16 * 32 * 32, 128,
                 {"spatial_shape": (16, 32, 32)}, 7 * 15 * 15 / (16 * 32 * 32)),
        "na1d": (ag.Variant(mask=ag.neighborhood(2047)), 1, 16, 32768, 128, {"spatial_shape": (32768,)},
                 2047 / 32768),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--cases", default="dense,causal,dense D64,window 1024,documents,sigmoid,na2d,na3d,na1d")
    ap.add_argument("--backward-only", action="store_true", help="time the backward of one forward, retained")
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    all_cases = cases()
    runs, flops = {}, {}
    for n, name in enumerate(args.cases.split(",")):
        variant, B, H, L, D, kwargs, frac = all_cases[name]
        torch.manual_seed(n)
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)
        tag = re.sub(r"\W", "_", name)
        new = ag.compile(dataclasses.replace(variant, name=f"order_new_{tag}"))
        old = ag.compile(dataclasses.replace(variant, name=f"order_old_{tag}"))
        use_rewritten(old, old_order)
        early = ag.compile(dataclasses.replace(variant, name=f"order_early_{tag}"))
        use_rewritten(early, all_early)
        ref = torch.autograd.grad(new(q, k, v, **kwargs), (q, k, v), do)
        labelled = (("new", new), ("old", old), ("all early", early))
        for label, attn in labelled[1:]:
            got = torch.autograd.grad(attn(q, k, v, **kwargs), (q, k, v), do)
            err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, ref))
            print(f"{name}: {label} vs new gradients, max rel err {err:.1e}", flush=True)
        for label, attn in labelled:
            try:
                print(f"{name} {label}: {kernel_resources(attn)}", flush=True)
            except Exception as exc:  # noqa: BLE001 - Triton's caches are internal
                print(f"{name} {label}: no kernel resources ({type(exc).__name__})", flush=True)
        for label, attn in labelled:
            if args.backward_only:
                out = attn(q, k, v, **kwargs)
                runs[(name, label)] = (lambda out=out, q=q, k=k, v=v, do=do:
                                       torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            else:
                runs[(name, label)] = (lambda a=attn, q=q, k=k, v=v, do=do, kw=kwargs:
                                       torch.autograd.grad(a(q, k, v, **kw), (q, k, v), do))
            flops[(name, label)] = (2.5 if args.backward_only else 3.5) * 4 * B * H * L * L * D * frac
    times = interleaved_ms(runs, args.rounds)
    for (name, label), t in times.items():
        rates = [flops[(name, label)] / ms / 1e9 for ms in t]
        print(f"{name:12s} {label:10s}: " + " ".join(f"{x:.3f}" for x in t)
              + f" ms (median {sorted(t)[len(t) // 2]:.3f}; {sorted(rates)[len(rates) // 2]:.0f} TF/s)", flush=True)


if __name__ == "__main__":
    main()
