"""Where a classification of packed documents' mask goes (H100, B=2 L=8192, new ids each time):
the classifier launch (with the spans kernels since session 12), ``find_runs`` (runs, spans'
exactness, the host sync) and ``transposed`` (the dK/dV lists), synchronized, median of 20.
Runs against older trees too (``TileLists.empty`` without the lengths).

    PYTHONPATH=. python benchmarks/experiments/classify_parts.py
"""
import statistics
import time
import torch
import attngen as ag
print(ag.__file__, flush=True)
B, H, L, D = 2, 16, 8192, 128
attn = ag.compile(ag.Variant(mask=ag.document() & ag.causal()))
q = torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
base = torch.arange(4, device="cuda").repeat_interleave(L // 4).expand(B, -1).contiguous()
attn(q, q, q, document_ids=base)
module = attn.module(q.device)
from attngen.runtime import tiles as T
for cfg in (ag.KernelConfig(128, 128, 8, 3), ag.KernelConfig(64, 128, 8, 3)):
    parts = {"classify": [], "find_runs": [], "transposed": [], "total": []}
    for _ in range(20):
        ids = base.clone()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        bm, hm = B, 1
        try:
            tiles = T.TileLists.empty(bm, hm, L // cfg.block_m, L // cfg.block_n, q.device, L, L)
        except TypeError:
            tiles = T.TileLists.empty(bm, hm, L // cfg.block_m, L // cfg.block_n, q.device)
        module.launch_classify_tiles(tiles, {"document_ids": ids}, L, L, cfg)
        torch.cuda.synchronize(); t1 = time.perf_counter()
        tiles.find_runs()
        torch.cuda.synchronize(); t2 = time.perf_counter()
        tiles.transposed()
        torch.cuda.synchronize(); t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            parts[k].append(v * 1e3)
    print(cfg.block_m, cfg.block_n, " ".join(f"{k} {statistics.median(v):.3f} ms" for k, v in parts.items()), flush=True)
