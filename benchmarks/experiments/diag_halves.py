"""Why is the generated two-halves forward slower than the hand-written one (fwd_overlap.py)?
Registers, spills and TFLOP/s of both at 256x64 w8 s3, dense B=2 H=16 L=8192 D=128 bf16.
Run twice: GEN_STYLE=0 and GEN_STYLE=1 (the hand kernel's softmax written as the template's)."""
import os

import torch
import triton

import attngen as ag
import fwd_overlap as hand

B, H, L, D = 2, 16, 8192, 128
flops = 4 * B * H * L * L * D
q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
for variant, name in ((ag.Variant(), "dense"), (ag.Variant(norm=ag.sigmoid()), "sigmoid")):
    attn = ag.compile(variant)
    for cfg in (ag.KernelConfig(256, 64, 8, 3, halves=True), ag.KernelConfig(128, 128, 8, 3)):
        with torch.no_grad():
            attn(q, k, v, config=cfg)
            ms = triton.testing.do_bench(lambda: attn(q, k, v, config=cfg))
        mod = attn.module(q.device)
        fn = getattr(mod, f"{attn.ir.name}_fwd_halves" if cfg.halves else f"{attn.ir.name}_fwd")
        kernels = [ck for cache in fn.device_caches.values() for ck in cache[0].values()]
        ck = kernels[-1]
        out_dir = os.environ.get("OUT")
        if out_dir:
            tag = f"gen_{name}_{cfg.block_m}x{cfg.block_n}_{'halves' if cfg.halves else 'one'}"
            for kind in ("ttgir",):
                with open(f"{out_dir}/{tag}.{kind}", "w") as f:
                    f.write(ck.asm[kind])
        print(f"generated {name} {cfg}: {flops / ms / 1e9:.0f} TF/s regs {ck.n_regs} spills {ck.n_spills}", flush=True)
for split, bm, bn in ((True, 256, 64), (False, 128, 128)):
    hand.run_fwd(q, k, v, False, bm, bn, 8, 3, False, split)
    ms = triton.testing.do_bench(lambda: hand.run_fwd(q, k, v, False, bm, bn, 8, 3, False, split))
    ck = hand.run_fwd.compiled
    if os.environ.get("OUT"):
        for kind in ("ttgir",):
            with open(f"{os.environ['OUT']}/hand_{os.environ.get('GEN_STYLE', '0')}_{bm}x{bn}.{kind}", "w") as f:
                f.write(ck.asm[kind])
    print(f"hand GEN_STYLE={os.environ.get('GEN_STYLE', '0')} split={split} {bm}x{bn}: {flops / ms / 1e9:.0f} TF/s "
          f"regs {ck.n_regs} spills {ck.n_spills}", flush=True)
