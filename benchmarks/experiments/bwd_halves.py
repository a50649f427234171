"""Experiment: the dK/dV pass with its query step split into two halves whose products interleave.

The two-halves forward (4e0b675) showed that Triton 3.6 waits for every score product right after issuing it, and that
a forward whose query tile is two halves overlaps one half's softmax with the other's P.V
product (+11%). The dK/dV step has the same shape: two score-like products (K.Q^T and
V.dO^T) that must be waited on, an elementwise stage, then two accumulating products (dV and
dK) that stay asynchronous. With one query tile per step, the elementwise stage never overlaps
a product. ORDER picks the step's form:

  0  the template's order: qk, p, dv +=, dp, ds, dk +=
  1  both waited products first: qk, dp, then p, ds, dv +=, dk +=
  2  halves: qk_a, qk_b, dp_a, dp_b; then a's elementwise stage and its dv/dk products
     (asynchronous) while b's elementwise stage runs, then b's products

Dense (every key sees every query) and causal (the program's diagonal query tiles masked),
B=2 H=16 L=8192 D=128 bf16, against the generated backward's gradients.

    PYTHONPATH=. python benchmarks/experiments/bwd_halves.py [SECONDS]
"""
import argparse
import time

import torch
import triton
import triton.language as tl

import attngen as ag

LOG2E = 1.4426950408889634


@triton.jit
def _loads(Q, DO, Lse2, Delta, qbase, l_base, offs_m, offs_d, s_qm):
    q = tl.load(Q + qbase + offs_m[:, None] * s_qm + offs_d[None, :])
    do = tl.load(DO + qbase + offs_m[:, None] * s_qm + offs_d[None, :])
    lse2 = tl.load(Lse2 + l_base + offs_m)
    delta = tl.load(Delta + l_base + offs_m)
    return q, do, lse2, delta


@triton.jit
def _weights(qk, dp, lse2, delta, offs_n, offs_m, qk_scale, MASKED: tl.constexpr):
    p = tl.exp2(qk * qk_scale - lse2[None, :])
    if MASKED:
        p = tl.where(offs_n[:, None] <= offs_m[None, :], p, 0.0)
    ds = p * (dp - delta[None, :])
    return p, ds


@triton.jit
def _step(dk, dv, k, v, Q, DO, Lse2, Delta, qbase, l_base, start_m, offs_n, offs_d, s_qm, qk_scale,
          BLOCK_M: tl.constexpr, ORDER: tl.constexpr, MASKED: tl.constexpr):
    if ORDER == 2:
        HALF: tl.constexpr = BLOCK_M // 2
        offs_a = start_m + tl.arange(0, HALF)
        offs_b = offs_a + HALF
        q_a, do_a, lse_a, delta_a = _loads(Q, DO, Lse2, Delta, qbase, l_base, offs_a, offs_d, s_qm)
        q_b, do_b, lse_b, delta_b = _loads(Q, DO, Lse2, Delta, qbase, l_base, offs_b, offs_d, s_qm)
        qk_a = tl.dot(k, tl.trans(q_a))
        qk_b = tl.dot(k, tl.trans(q_b))
        dp_a = tl.dot(v, tl.trans(do_a))
        dp_b = tl.dot(v, tl.trans(do_b))
        p_a, ds_a = _weights(qk_a, dp_a, lse_a, delta_a, offs_n, offs_a, qk_scale, MASKED)
        dv += tl.dot(p_a.to(do_a.dtype), do_a)
        dk += tl.dot(ds_a.to(q_a.dtype), q_a)
        p_b, ds_b = _weights(qk_b, dp_b, lse_b, delta_b, offs_n, offs_b, qk_scale, MASKED)
        dv += tl.dot(p_b.to(do_b.dtype), do_b)
        dk += tl.dot(ds_b.to(q_b.dtype), q_b)
    else:
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, do, lse2, delta = _loads(Q, DO, Lse2, Delta, qbase, l_base, offs_m, offs_d, s_qm)
        qk = tl.dot(k, tl.trans(q))
        if ORDER == 1:
            dp = tl.dot(v, tl.trans(do))
            p, ds = _weights(qk, dp, lse2, delta, offs_n, offs_m, qk_scale, MASKED)
            dv += tl.dot(p.to(do.dtype), do)
            dk += tl.dot(ds.to(q.dtype), q)
        else:
            p = tl.exp2(qk * qk_scale - lse2[None, :])
            if MASKED:
                p = tl.where(offs_n[:, None] <= offs_m[None, :], p, 0.0)
            dv += tl.dot(p.to(do.dtype), do)
            dp = tl.dot(v, tl.trans(do))
            ds = p * (dp - delta[None, :])
            dk += tl.dot(ds.to(q.dtype), q)
    return dk, dv


@triton.jit
def dkdv(Q, K, V, DO, DK, DVo, Lse2, Delta,
         s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, H, L, sm_scale, qk_scale,
         HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         ORDER: tl.constexpr, CAUSAL: tl.constexpr):
    pid_n = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    base = off_b.to(tl.int64) * s_kb + off_h.to(tl.int64) * s_kh
    k = tl.load(K + base + offs_n[:, None] * s_kn + offs_d[None, :])
    v = tl.load(V + base + offs_n[:, None] * s_kn + offs_d[None, :])
    dk = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_D], dtype=tl.float32)
    qbase = off_b.to(tl.int64) * s_qb + off_h.to(tl.int64) * s_qh
    l_base = off_bh.to(tl.int64) * L
    start = 0
    if CAUSAL:
        # the query tiles that cross this program's diagonal, masked; then the full ones below it
        start = pid_n * BLOCK_N
        for start_m in range(start, start + BLOCK_N, BLOCK_M):
            dk, dv = _step(dk, dv, k, v, Q, DO, Lse2, Delta, qbase, l_base, start_m, offs_n, offs_d, s_qm,
                           qk_scale, BLOCK_M, ORDER, True)
        start += BLOCK_N
    for start_m in range(start, L, BLOCK_M):
        dk, dv = _step(dk, dv, k, v, Q, DO, Lse2, Delta, qbase, l_base, start_m, offs_n, offs_d, s_qm,
                       qk_scale, BLOCK_M, ORDER, False)
    tl.store(DK + base + offs_n[:, None] * s_kn + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty))
    tl.store(DVo + base + offs_n[:, None] * s_kn + offs_d[None, :], dv.to(DVo.dtype.element_ty))


def run(q, k, v, do, lse2, delta, bm, bn, w, s, order, causal):
    B, H, L, D = q.shape
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dkdv[(L // bn, B * H)](q, k, v, do, dk, dv, lse2, delta, q.stride(0), q.stride(1), q.stride(2),
                           k.stride(0), k.stride(1), k.stride(2), H, L, D ** -0.5, D ** -0.5 * LOG2E,
                           HEAD_D=D, BLOCK_M=bm, BLOCK_N=bn, ORDER=order, CAUSAL=causal,
                           num_warps=w, num_stages=s)
    return dk, dv


def inputs(causal):
    B, H, L, D = 2, 16, 8192, 128
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    attn = ag.compile(ag.Variant(mask=ag.causal()) if causal else ag.Variant())
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = attn(qg, kg, vg)
    out.backward(do)
    with torch.no_grad():
        out, lse = attn(q, k, v, return_lse=True)
    delta = (out.float() * do.float()).sum(-1).contiguous()
    lse2 = (lse * LOG2E).contiguous()
    return (q, k, v, do, lse2, delta), (kg.grad.clone(), vg.grad.clone())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", nargs="?", type=float, default=200, help="stop starting new configs after this many seconds (default 200)")
    budget_end = time.time() + ap.parse_args().seconds
    configs = [(64, 128, 8, 3), (64, 128, 8, 2), (128, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 3)]
    for causal in (False, True):
        args, (ref_dk, ref_dv) = inputs(causal)
        B, H, L, D = args[0].shape
        flops = 4 * 2 * B * H * L * L * D * (0.5 if causal else 1.0)
        for rnd in range(3):
            for bm, bn, w, s in configs:
                for order in (0, 1, 2):
                    if time.time() > budget_end:
                        return
                    label = f"{'causal' if causal else 'dense'} r{rnd} step {bm} keys {bn} w{w} s{s} order {order}"
                    try:
                        dk, dv = run(*args, bm, bn, w, s, order, causal)
                        err = max(((a.float() - b.float()).norm() / b.float().norm()).item()
                                  for a, b in ((dk, ref_dk), (dv, ref_dv)))
                        t = triton.testing.do_bench(lambda: run(*args, bm, bn, w, s, order, causal), rep=200)
                        print(f"{label}: {t:.3f} ms {flops / t / 1e9:.0f} TF/s err {err:.1e}", flush=True)
                    except Exception as exc:  # noqa: BLE001
                        print(f"{label}: FAILED {type(exc).__name__}: {str(exc)[:160]}", flush=True)


if __name__ == "__main__":
    main()
