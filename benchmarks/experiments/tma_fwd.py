"""Experiment: does a TMA-descriptor / warp-specialized forward beat the generated pointer kernel
on the H100 (Triton 3.6)? Hand-written dense/causal kernel with constexpr switches, timed next to
attngen's generated kernel, Flex and cuDNN in one process."""
import itertools
import sys
import time

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

import attngen as ag

LOG2E = 1.4426950408889634


@triton.jit
def _tile(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, off_b, off_h, start_n, offs_m, offs_n,
          qk_scale, stride_kn, stride_vn,
          BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, USE_DESC: tl.constexpr, MASKED: tl.constexpr,
          RAW_MAX: tl.constexpr):
    if USE_DESC:
        k = k_desc.load([off_b, off_h, start_n, 0]).reshape(BLOCK_N, HEAD_D)
    else:
        k = tl.load(k_ptrs + start_n * stride_kn)
    qk = tl.dot(q, tl.trans(k))
    if MASKED:
        qk = tl.where(offs_m[:, None] >= (start_n + offs_n)[None, :], qk, float("-inf"))
    if RAW_MAX:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
    else:
        s = qk * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if USE_DESC:
        v = v_desc.load([off_b, off_h, start_n, 0]).reshape(BLOCK_N, HEAD_D)
    else:
        v = tl.load(v_ptrs + start_n * stride_vn)
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def fwd(Q, K, V, O, k_desc, v_desc, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, H, L, qk_scale,
        HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
        USE_DESC: tl.constexpr, WS: tl.constexpr, RAW_MAX: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    q = tl.load(Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
                + offs_m[:, None] * stride_qm + offs_d[None, :])
    k_ptrs = K + off_b.to(tl.int64) * stride_kb + off_h.to(tl.int64) * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + off_b.to(tl.int64) * stride_vb + off_h.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)
    if CAUSAL:
        full_end = pid_m * BLOCK_M // BLOCK_N * BLOCK_N
        end = (pid_m + 1) * BLOCK_M
    else:
        full_end = L
        end = L
    for start_n in tl.range(0, full_end, BLOCK_N, warp_specialize=WS):
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, off_b, off_h, start_n, offs_m,
                              offs_n, qk_scale, stride_kn, stride_vn, BLOCK_N, HEAD_D, USE_DESC, False, RAW_MAX)
    if CAUSAL:
        for start_n in range(full_end, end, BLOCK_N):
            acc, l_i, m_i = _tile(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, off_b, off_h, start_n, offs_m,
                                  offs_n, qk_scale, stride_kn, stride_vn, BLOCK_N, HEAD_D, USE_DESC, True, RAW_MAX)
    out = acc / l_i[:, None]
    tl.store(O + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
             + offs_m[:, None] * stride_om + offs_d[None, :], out.to(O.dtype.element_ty))


def run_fwd(q, k, v, causal, bm, bn, warps, stages, use_desc, ws, raw_max):
    B, H, L, D = q.shape
    o = torch.empty_like(q)
    kd = TensorDescriptor(k, list(k.shape), list(k.stride()), [1, 1, bn, D])
    vd = TensorDescriptor(v, list(v.shape), list(v.stride()), [1, 1, bn, D])
    grid = (L // bm, B * H)
    fwd[grid](q, k, v, o, kd, vd, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), H, L,
              D ** -0.5 * LOG2E, HEAD_D=D, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, USE_DESC=use_desc, WS=ws,
              RAW_MAX=raw_max, num_warps=warps, num_stages=stages)
    return o


def main():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention)
    budget_end = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 400)
    for (B, H, L, D), causal in itertools.product([(2, 16, 8192, 128), (4, 16, 4096, 64)], [False, True]):
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * B * H * L * L * D * (0.5 if causal else 1.0)
        tf = lambda ms: flops / ms / 1e9
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        name = f"{'causal' if causal else 'dense'} L={L} D={D}"
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            ms = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal))
        print(f"{name}: cudnn {tf(ms):.0f}", flush=True)
        bm_ = create_block_mask((lambda b, h, i, j: i >= j) if causal else (lambda b, h, i, j: i >= 0), None, None, L, L)
        flex(q, k, v, block_mask=bm_)
        ms = triton.testing.do_bench(lambda: flex(q, k, v, block_mask=bm_))
        print(f"{name}: flex {tf(ms):.0f}", flush=True)
        attn = ag.compile(ag.Variant(mask=ag.causal() if causal else None))
        with torch.no_grad():
            attn(q, k, v)
            ms = triton.testing.do_bench(lambda: attn(q, k, v))
        print(f"{name}: attngen {tf(ms):.0f} ({attn.last_config if hasattr(attn, 'last_config') else ''})", flush=True)
        configs = [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)]
        combos = [(False, False, False), (False, False, True), (True, False, True), (True, True, True)]
        for (bm, bn, w, s), (use_desc, ws, raw) in itertools.product(configs, combos):
            if not raw and (bm, bn, w, s) != configs[0]:
                continue
            if time.time() > budget_end:
                break
            label = f"{bm}x{bn} w{w} s{s} desc={int(use_desc)} ws={int(ws)} raw={int(raw)}"
            try:
                o = run_fwd(q, k, v, causal, bm, bn, w, s, use_desc, ws, raw)
                err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                ms = triton.testing.do_bench(lambda: run_fwd(q, k, v, causal, bm, bn, w, s, use_desc, ws, raw))
                print(f"{name}: {label}: {tf(ms):.0f} err {err:.1e}", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"{name}: {label}: FAILED {type(exc).__name__}: {str(exc)[:120]}", flush=True)


if __name__ == "__main__":
    main()
