"""A/B of forward configs, interleaved rounds (H100, bf16, B=2 H=16 L=8192 D=128)."""
import torch, triton
import attngen as ag
B, H, L, D = 2, 16, 8192, 128
q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
for causal in (True, False):
    attn = ag.compile(ag.Variant(mask=ag.causal() if causal else None))
    flops = 4 * B * H * L * L * D * (0.5 if causal else 1)
    cfgs = [ag.KernelConfig(64, 64, 4, 3), ag.KernelConfig(128, 128, 8, 3), ag.KernelConfig(128, 64, 8, 3)]
    res = {c: [] for c in cfgs}
    with torch.no_grad():
        for c in cfgs:
            attn(q, k, v, config=c)
        for _ in range(3):
            for c in cfgs:
                res[c].append(flops / triton.testing.do_bench(lambda: attn(q, k, v, config=c)) / 1e9)
    for c, r in res.items():
        print(f"{'causal' if causal else 'dense'} {c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}: "
              + " ".join(f"{x:.0f}" for x in r), flush=True)
