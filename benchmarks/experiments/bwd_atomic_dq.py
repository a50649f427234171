"""Experiment: one backward kernel that owns a KV tile and also adds dQ = dS.K into an fp32
buffer with atomics (FlashAttention-2/3's five products), against the generated backward's
two passes (dK/dV over query tiles, dQ over KV tiles: seven products).

Modes of the hand-written kernel:
  0  dK/dV only (what the generated dK/dV pass does; the floor of the fused kernel)
  1  + dQ through a TMA tensor descriptor's atomic_add (cp.reduce.async.bulk on Hopper)
  2  + dQ through tl.atomic_add on pointers (red.global.add.f32 per element)
STAGGER rotates each program's walk over the query tiles so that the programs of one head do
not add into the same dQ rows at the same time.

B=2 H=16 L=8192 D=128 bf16 on the H100, dense and causal.

    PYTHONPATH=. python benchmarks/experiments/bwd_atomic_dq.py [SECONDS]
"""
import argparse
import itertools
import time

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

import attngen as ag

LOG2E = 1.4426950408889634


@triton.jit
def dkdv_dq(Q, K, V, DO, DK, DVo, DQacc, Lse2, Delta, dq_desc,
            s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, H, L, sm_scale, qk_scale,
            HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            MODE: tl.constexpr, STAGGER: tl.constexpr, CAUSAL: tl.constexpr):
    pid_n = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    offs_mt = tl.arange(0, BLOCK_M)
    base = off_b.to(tl.int64) * s_kb + off_h.to(tl.int64) * s_kh
    k = tl.load(K + base + offs_n[:, None] * s_kn + offs_d[None, :])
    v = tl.load(V + base + offs_n[:, None] * s_kn + offs_d[None, :])
    dk = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    qbase = off_b.to(tl.int64) * s_qb + off_h.to(tl.int64) * s_qh
    l_base = off_bh.to(tl.int64) * L
    dq_base = off_bh.to(tl.int64) * L * HEAD_D
    if CAUSAL:
        m_lo = pid_n * BLOCK_N
        m_full = m_lo + BLOCK_N
    else:
        m_lo = 0
        m_full = 0
    n_tiles = (L - m_lo) // BLOCK_M
    for i in range(0, n_tiles):
        if STAGGER:
            start_m = m_lo + ((i + pid_n) % n_tiles) * BLOCK_M
        else:
            start_m = m_lo + i * BLOCK_M
        offs_m = start_m + offs_mt
        q = tl.load(Q + qbase + offs_m[:, None] * s_qm + offs_d[None, :])
        do = tl.load(DO + qbase + offs_m[:, None] * s_qm + offs_d[None, :])
        lse2 = tl.load(Lse2 + l_base + offs_m)
        delta = tl.load(Delta + l_base + offs_m)
        qk = tl.dot(k, tl.trans(q))
        p = tl.exp2(qk * qk_scale - lse2[None, :])
        if CAUSAL:
            if start_m < m_full:
                p = tl.where(offs_n[:, None] <= offs_m[None, :], p, 0.0)
        dv += tl.dot(p.to(do.dtype), do)
        dp = tl.dot(v, tl.trans(do))
        ds = (p * (dp - delta[None, :])).to(q.dtype)
        dk += tl.dot(ds, q)
        if MODE == 1:
            dq = tl.dot(tl.trans(ds), k)
            dq_desc.atomic_add([off_bh * L + start_m, 0], dq)
        elif MODE == 2:
            dq = tl.dot(tl.trans(ds), k)
            tl.atomic_add(DQacc + dq_base + offs_m[:, None] * HEAD_D + offs_d[None, :], dq, sem="relaxed")
    tl.store(DK + base + offs_n[:, None] * s_kn + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty))
    tl.store(DVo + base + offs_n[:, None] * s_kn + offs_d[None, :], dv.to(DVo.dtype.element_ty))


def run(q, k, v, do, lse2, delta, bm, bn, w, s, mode, stagger, causal):
    B, H, L, D = q.shape
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dq_acc = torch.zeros(B * H * L, D, device=q.device, dtype=torch.float32)
    dq_desc = TensorDescriptor(dq_acc, list(dq_acc.shape), list(dq_acc.stride()), [bm, D])
    dkdv_dq[(L // bn, B * H)](q, k, v, do, dk, dv, dq_acc, lse2, delta, dq_desc,
                              q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                              H, L, D ** -0.5, D ** -0.5 * LOG2E,
                              HEAD_D=D, BLOCK_M=bm, BLOCK_N=bn, MODE=mode, STAGGER=stagger, CAUSAL=causal,
                              num_warps=w, num_stages=s)
    dq = (dq_acc * D ** -0.5).to(q.dtype).view(B, H, L, D) if mode else None
    return dq, dk, dv


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", nargs="?", type=float, default=200, help="stop starting new configs after this many seconds (default 200)")
    budget_end = time.time() + ap.parse_args().seconds
    B, H, L, D = 2, 16, 8192, 128
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    configs = [(64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3)]
    modes = [(0, False), (1, False), (1, True), (2, True)]
    for causal in (False, True):
        attn = ag.compile(ag.Variant(mask=ag.causal()) if causal else ag.Variant())
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        attn(qg, kg, vg).backward(do)
        ref = [t.grad.clone() for t in (qg, kg, vg)]
        out, lse = attn(q, k, v, return_lse=True)
        delta = (out.float() * do.float()).sum(-1).contiguous()
        lse2 = (lse * LOG2E).contiguous()
        for t in (qg, kg, vg):
            t.grad = None
        step = lambda: torch.autograd.grad(attn(qg, kg, vg), (qg, kg, vg), do)
        name = "causal" if causal else "dense"
        for rnd in range(2):
            ms = triton.testing.do_bench(step)
            with torch.no_grad():
                fms = triton.testing.do_bench(lambda: attn(q, k, v))
            print(f"[{name} round {rnd}] generated fwd+bwd {ms:.3f} ms, fwd {fms:.3f} ms, bwd {ms - fms:.3f} ms", flush=True)
            for (bm, bn, w, s), (mode, stagger) in itertools.product(configs, modes):
                if time.time() > budget_end:
                    break
                label = f"[{name} round {rnd}] q{bm} kv{bn} w{w} s{s} mode={mode} stagger={int(stagger)}"
                try:
                    dq, dk, dv = run(q, k, v, do, lse2, delta, bm, bn, w, s, mode, stagger, causal)
                    errs = [rel(dk, ref[1]), rel(dv, ref[2])] + ([rel(dq, ref[0])] if dq is not None else [])
                    t = triton.testing.do_bench(lambda: run(q, k, v, do, lse2, delta, bm, bn, w, s, mode, stagger, causal))
                    print(f"{label}: {t:.3f} ms (incl. zeroing and converting dQ) err {max(errs):.1e}", flush=True)
                except Exception as exc:  # noqa: BLE001
                    print(f"{label}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)


if __name__ == "__main__":
    main()
