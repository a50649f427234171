"""Experiment: can a Triton 3.6 forward overlap the softmax with the matrix products on the H100
without warp specialization?

Two restructurings of the dense/causal forward's loop over full KV tiles, each a constexpr switch
of one hand-written kernel, timed beside attngen's generated kernel and cuDNN in one process:

- PIPE (FlashAttention-3's intra-warpgroup overlap): issue Q.K^T of the next KV tile before the
  softmax of the current one, so the asynchronous wgmma runs while the exp2s do.
- SPLIT (data partitioning): the program's query tile is two halves with their own softmax
  state; the halves' products and softmaxes interleave, so one half's softmax can run while the
  other half's wgmma is in flight (an in-thread ping-pong).

    PYTHONPATH=. [GEN_STYLE=1] python benchmarks/experiments/fwd_overlap.py [SECONDS]

GEN_STYLE=1 writes the hand kernel's softmax as the generated template does."""
import itertools
import os
import argparse
import time

import torch
import triton
import triton.language as tl

import attngen as ag

LOG2E = 1.4426950408889634


GEN_STYLE = tl.constexpr(int(os.environ.get("GEN_STYLE", "0")))


@triton.jit
def _softmax_step(qk, acc, l_i, m_i, v, qk_scale):
    """Online softmax of one score tile, then P.V into the accumulator. GEN_STYLE=1 writes it
    as attngen's template does (scaled score tile, guarded max)."""
    if GEN_STYLE:
        s = qk * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def _masked_step(q, k, v, acc, l_i, m_i, offs_m, offs_n, qk_scale):
    qk = tl.dot(q, tl.trans(k))
    qk = tl.where(offs_m[:, None] >= offs_n[None, :], qk, float("-inf"))
    return _softmax_step(qk, acc, l_i, m_i, v, qk_scale)


@triton.jit
def fwd(Q, K, V, O, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, H, L, qk_scale,
        HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
        PIPE: tl.constexpr, SPLIT: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    HALF: tl.constexpr = BLOCK_M // 2
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    q_base = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    k_ptrs = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    o_base = O + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
    if CAUSAL:
        full_end = pid_m * BLOCK_M // BLOCK_N * BLOCK_N
        end = (pid_m + 1) * BLOCK_M
    else:
        full_end = L
        end = L
    if SPLIT:
        offs_m0 = pid_m * BLOCK_M + tl.arange(0, HALF)
        offs_m1 = offs_m0 + HALF
        q0 = tl.load(q_base + offs_m0[:, None] * stride_qm + offs_d[None, :])
        q1 = tl.load(q_base + offs_m1[:, None] * stride_qm + offs_d[None, :])
        m0 = tl.full([HALF], float("-inf"), dtype=tl.float32)
        m1 = tl.full([HALF], float("-inf"), dtype=tl.float32)
        l0 = tl.zeros([HALF], dtype=tl.float32)
        l1 = tl.zeros([HALF], dtype=tl.float32)
        acc0 = tl.zeros([HALF, HEAD_D], dtype=tl.float32)
        acc1 = tl.zeros([HALF, HEAD_D], dtype=tl.float32)
        for start_n in range(0, full_end, BLOCK_N):
            k = tl.load(k_ptrs + start_n * stride_kn)
            qk0 = tl.dot(q0, tl.trans(k))
            qk1 = tl.dot(q1, tl.trans(k))
            v = tl.load(v_ptrs + start_n * stride_vn)
            acc0, l0, m0 = _softmax_step(qk0, acc0, l0, m0, v, qk_scale)
            acc1, l1, m1 = _softmax_step(qk1, acc1, l1, m1, v, qk_scale)
        if CAUSAL:
            for start_n in range(full_end, end, BLOCK_N):
                k = tl.load(k_ptrs + start_n * stride_kn)
                v = tl.load(v_ptrs + start_n * stride_vn)
                acc0, l0, m0 = _masked_step(q0, k, v, acc0, l0, m0, offs_m0, start_n + offs_n, qk_scale)
                acc1, l1, m1 = _masked_step(q1, k, v, acc1, l1, m1, offs_m1, start_n + offs_n, qk_scale)
        tl.store(o_base + offs_m0[:, None] * stride_om + offs_d[None, :], (acc0 / l0[:, None]).to(O.dtype.element_ty))
        tl.store(o_base + offs_m1[:, None] * stride_om + offs_d[None, :], (acc1 / l1[:, None]).to(O.dtype.element_ty))
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :])
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
        if PIPE:
            if full_end > 0:
                qk = tl.dot(q, tl.trans(tl.load(k_ptrs)))
                for start_n in range(0, full_end - BLOCK_N, BLOCK_N):
                    k_next = tl.load(k_ptrs + (start_n + BLOCK_N) * stride_kn)
                    qk_next = tl.dot(q, tl.trans(k_next))
                    v = tl.load(v_ptrs + start_n * stride_vn)
                    acc, l_i, m_i = _softmax_step(qk, acc, l_i, m_i, v, qk_scale)
                    qk = qk_next
                v = tl.load(v_ptrs + (full_end - BLOCK_N) * stride_vn)
                acc, l_i, m_i = _softmax_step(qk, acc, l_i, m_i, v, qk_scale)
        else:
            for start_n in range(0, full_end, BLOCK_N):
                k = tl.load(k_ptrs + start_n * stride_kn)
                qk = tl.dot(q, tl.trans(k))
                v = tl.load(v_ptrs + start_n * stride_vn)
                acc, l_i, m_i = _softmax_step(qk, acc, l_i, m_i, v, qk_scale)
        if CAUSAL:
            for start_n in range(full_end, end, BLOCK_N):
                k = tl.load(k_ptrs + start_n * stride_kn)
                v = tl.load(v_ptrs + start_n * stride_vn)
                acc, l_i, m_i = _masked_step(q, k, v, acc, l_i, m_i, offs_m, start_n + offs_n, qk_scale)
        tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty))


def run_fwd(q, k, v, causal, bm, bn, warps, stages, pipe, split):
    B, H, L, D = q.shape
    o = torch.empty_like(q)
    run_fwd.compiled = fwd[(L // bm, B * H)](q, k, v, o, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                          v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), H, L,
                          D ** -0.5 * LOG2E, HEAD_D=D, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, PIPE=pipe, SPLIT=split,
                          num_warps=warps, num_stages=stages)
    return o


# (block_m, block_n, warps, stages, PIPE, SPLIT)
CONFIGS = [
    (128, 128, 8, 3, False, False),
    (128, 64, 4, 3, False, False),
    (128, 128, 8, 3, True, False),
    (128, 64, 8, 3, True, False),
    (128, 128, 8, 2, True, False),
    (64, 64, 4, 3, True, False),
    (256, 64, 8, 3, False, True),
    (256, 128, 8, 2, False, True),
    (128, 128, 4, 2, False, True),
    (128, 64, 4, 3, False, True),
    (128, 128, 8, 3, False, True),
]


def main():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", nargs="?", type=float, default=400, help="stop starting new configs after this many seconds (default 400)")
    budget_end = time.time() + ap.parse_args().seconds
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    for (B, H, L, D), causal in itertools.product([(2, 16, 8192, 128), (4, 16, 4096, 64)], [False, True]):
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * B * H * L * L * D * (0.5 if causal else 1.0)
        tf = lambda ms: flops / ms / 1e9  # noqa: E731
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        name = f"{'causal' if causal else 'dense'} L={L} D={D}"
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            ms = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal))
        print(f"{name}: cudnn {tf(ms):.0f}", flush=True)
        attn = ag.compile(ag.Variant(mask=ag.causal() if causal else None))
        with torch.no_grad():
            attn(q, k, v)
            ms = triton.testing.do_bench(lambda: attn(q, k, v))
        print(f"{name}: attngen {tf(ms):.0f}", flush=True)
        for bm, bn, w, s, pipe, split in CONFIGS:
            if time.time() > budget_end:
                print("budget spent", flush=True)
                return
            label = f"{bm}x{bn} w{w} s{s} pipe={int(pipe)} split={int(split)}"
            try:
                run = lambda: run_fwd(q, k, v, causal, bm, bn, w, s, pipe, split)  # noqa: E731
                o = run()
                err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                ms = triton.testing.do_bench(run)
                ck = run_fwd.compiled
                print(f"{name}: {label}: {tf(ms):.0f} err {err:.1e} regs {ck.n_regs} spills {ck.n_spills}", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"{name}: {label}: FAILED {type(exc).__name__}: {str(exc)[:160]}", flush=True)


if __name__ == "__main__":
    main()
