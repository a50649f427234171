"""Where the block-sparse forward's time beyond the speed-of-light line goes (GNA 2-D).

    PYTHONPATH=.:benchmarks python benchmarks/experiments/na_program_overhead.py [--rounds N]

GNA 2-D (128x128 tokens, kernel 32x32, stride 16x16, B=1 H=16 D=128, bf16, forward under
no_grad) runs at ~1.25x the speed-of-light line (attngen's dense kernel x density). Each
program (a 16x16 query box, two halves of 128 rows) walks only 16 KV tiles, so a fixed cost per
program weighs ~16x more than in the dense kernel. This script times edited copies of the
generated forward, interleaved round by round, to split that cost:

    base          the generated kernel
    twice         walks its box list twice: (twice - base) is the loop's time, 2 base - twice
                  the per-program fixed cost
    q_in_l2       every program loads Q from one 512 KB slice of head 0 (an L2 hit): the cost
                  of fetching Q from HBM at the program's start (values wrong, timing only)
    no_store      the epilogue's normalize-and-store skipped (under a run-time false test)
    prefetch_q    each program first issues L2 prefetches (prefetch.global.L2) of the Q box of
                  the program AHEAD launch slots later, which starts when this one's wave ends
    prefetch_qkv  the same, plus a 1/64 slice of that program's head's K and V
    prefetch_in_loop  the Q prefetch spread over the walk's steps, when HBM is idle
    recip         normalize by a reciprocal per row and a multiply, not a division per element
    tma_store     the output stored through a TMA descriptor (3-D block of the grid)
    stagger_*     the first wave's programs sleep a few microseconds each (nanosleep), so
                  later waves do not all load and store at once

and the configs that leave room for two programs per SM (less shared memory than the shipped
256x64, 4 stages). The dense kernel's time on the same shape, divided by the density (16),
is the line.

Runs 1-4 on 2026-11-25 (logs in git at 4d02e5c) used subsets of these
edits, and two more ("no_lse", "recip_no_lse") that removed the log-sum-exp store: since
fe17547 the generated forward skips that store by itself when nothing reads it (STORE_LSE),
so "base" here is already without it.
"""
from __future__ import annotations

import argparse
import math
import re

import torch
import triton

import attngen as ag
from rewritten import edit_kernel, interleaved_ms, replace_once, use_rewritten  # noqa: E402 (this folder)

SHAPE, KERNEL, STRIDE = (128, 128), (32, 32), (16, 16)
HEADS, D = 16, 128

# One PTX prefetch per pointer; the asm has a side effect, so it is kept though its result is unused.
_PREFETCH = ('tl.inline_asm_elementwise("prefetch.global.L2 [$1];\\n\\tmov.u32 $0, 0;", "=r,l", [{ptrs}], '
             'dtype=tl.int32, is_pure=False, pack=1)')


def _chain(src: str, edits) -> str:
    for edit in edits:
        src = edit(src)
    return src


def _twice(src: str) -> str:
    """Walk the full boxes twice: after the last box, start over (one scalar select a step)."""
    src = replace_once(src, "    for i in range(0, m0 * m1 * m2):\n",
                       "    for i in range(0, 2 * m0 * m1 * m2):\n")
    return replace_once(src, "        j0, j1, j2 = _na_next_box(j0, j1, j2, full_lo1, full_hi1, full_lo2, full_hi2)\n",
                        "        j0, j1, j2 = _na_next_box(j0, j1, j2, full_lo1, full_hi1, full_lo2, full_hi2)\n"
                        "        j0 = tl.where(j0 == full_hi0, full_lo0, j0)\n")


def _q_in_l2(src: str) -> str:
    src = replace_once(src, "    q_a = tl.load(q_base + offs_m_a[:, None]", "    q_a = tl.load(Q + (offs_m_a[:, None] % 2048)")
    return replace_once(src, "    q_b = tl.load(q_base + offs_m_b[:, None]", "    q_b = tl.load(Q + (offs_m_b[:, None] % 2048)")


def _no_store(src: str) -> str:
    """Both halves' write_rows calls under ``if Lq < 0:`` (never true; the compiler cannot know)."""
    out, n = re.subn(r"\n    (_\w+_write_rows\(\n        acc_[ab])", r"\n    if Lq < 0:\n     \1", src)
    assert n == 2, "generated source changed: update the experiment"
    return out


def _ahead_q_lines(indent: str) -> list[str]:
    """Kernel lines that place the Q box of program (p_bh, p_tile): ``p_rows`` (its rows),
    ``p_lines`` (one column per 128-byte line of a row: 64 bf16), ``p_q`` (its head's Q)."""
    return [indent + line for line in [
        "p_b = p_bh // HQ",
        "p_h = p_bh % HQ",
        "pg2, pt2, p_tile = _na_split_tile(p_tile, S2, TM2, DIL2)",
        "pg1, pt1, p_tile = _na_split_tile(p_tile, S1, TM1, DIL1)",
        "pg0, pt0, p_tile = _na_split_tile(p_tile, S0, TM0, DIL0)",
        "p_m = tl.arange(0, BLOCK_M)",
        "px0 = _na_query_axis(pt0, LG0, (p_m // (TM1 * TM2)) % TM0, TM0, TN0, K0, STR0, CAUSAL0)[0]",
        "px1 = _na_query_axis(pt1, LG1, (p_m // TM2) % TM1, TM1, TN1, K1, STR1, CAUSAL1)[0]",
        "px2 = _na_query_axis(pt2, LG2, p_m % TM2, TM2, TN2, K2, STR2, CAUSAL2)[0]",
        "p_rows = tl.minimum(((px0 * DIL0 + pg0) * S1 + px1 * DIL1 + pg1) * S2 + px2 * DIL2 + pg2, Lq - 1)",
        "p_lines = tl.arange(0, BLOCK_D // 64) * 64",
        "p_q = Q + p_b.to(tl.int64) * stride_qb + p_h.to(tl.int64) * stride_qh",
    ]]


def _prefetch(ahead: int, kv: bool):
    def edit(src: str) -> str:
        lines = [
            "    # Experiment: prefetch into L2 what the program AHEAD launch slots later reads first.",
            "    n_tiles = tl.num_programs(0)",
            f"    ahead = off_bh * n_tiles + tl.program_id(0) + {ahead}",
            "    p_bh = ahead // n_tiles",
            "    p_tile = ahead % n_tiles",
            "    if p_bh < tl.num_programs(1):",
            *_ahead_q_lines("        "),
            "        " + _PREFETCH.format(ptrs="p_q + p_rows[:, None] * stride_qm + p_lines[None, :] * stride_qd"),
        ]
        if kv:
            lines += [
                "        p_hkv = p_h // GROUP",
                "        p_keys = tl.minimum(ahead % n_tiles * BLOCK_M + p_m, Lkv - 1)",
                "        p_k = K + p_b.to(tl.int64) * stride_kb + p_hkv.to(tl.int64) * stride_kh",
                "        p_v = V + p_b.to(tl.int64) * stride_vb + p_hkv.to(tl.int64) * stride_vh",
                "        " + _PREFETCH.format(ptrs="p_k + p_keys[:, None] * stride_kn + p_lines[None, :] * stride_kd"),
                "        " + _PREFETCH.format(ptrs="p_v + p_keys[:, None] * stride_vn + p_lines[None, :] * stride_vd"),
            ]
        anchor = "    m_i_a = tl.full([HALF]"
        return replace_once(src, anchor, "\n".join(lines) + "\n" + anchor)
    return edit


def _prefetch_in_loop(ahead: int):
    """The Q box of the program AHEAD launch slots later, prefetched into L2 a sixteenth per
    step of the walk (rows of other steps prefetch the program's own first Q line, an L2 hit),
    so that the prefetches meet an idle HBM instead of the wave's own loads."""
    def edit(src: str) -> str:
        setup = "\n".join([
            "    n_tiles = tl.num_programs(0)",
            f"    ahead = off_bh * n_tiles + tl.program_id(0) + {ahead}",
            "    p_bh = tl.minimum(ahead // n_tiles, tl.num_programs(1) - 1)",
            "    p_tile = ahead % n_tiles",
            *_ahead_q_lines("    "),
            "    pf_ptrs = p_q + p_rows[:, None] * stride_qm + p_lines[None, :] * stride_qd",
            "    pf_step = (p_m * (m0 * m1 * m2)) // BLOCK_M",
            ""])
        header = "    for i in range(0, m0 * m1 * m2):\n        ky0 = kv_start0 + j0 * TN0 + key0\n"
        body = "        " + _PREFETCH.format(ptrs="tl.where(pf_step[:, None] == i, pf_ptrs, q_base)") + "\n"
        return replace_once(src, header, setup + header + body)
    return edit


def _stagger(step_ns: int, modulo: int):
    """Programs of the first wave (linear id < 132) sleep (id % modulo) * step_ns before they
    start, so that the waves after it no longer start (load Q, fill the pipeline) and end
    (store) on every SM at once."""
    def edit(src: str) -> str:
        lines = [
            "    first_wave = off_bh * tl.num_programs(0) + tl.program_id(0)",
            "    if first_wave < 132:",
            f"        naps = tl.full([1], (first_wave % {modulo}) * {step_ns}, tl.int32)",
            '        tl.inline_asm_elementwise("nanosleep.u32 $1;\\n\\tmov.u32 $0, 0;", "=r,r", [naps], '
            'dtype=tl.int32, is_pure=False, pack=1)',
            ""]
        anchor = "    local_n = tl.arange(0, BLOCK_N)\n    tile = tl.program_id(0)\n"
        return replace_once(src, anchor, "\n".join(lines) + anchor)
    return edit


def _recip(src: str) -> str:
    """Normalize by one reciprocal per row and a multiply per element, not a division each."""
    return replace_once(src, "    out = acc / l_safe[:, None]\n", "    out = acc * (1.0 / l_safe)[:, None]\n")


def _tma_store(src: str) -> str:
    """Each half's output stored through a TMA descriptor over the head's (S1, S2, D) grid: a
    2-D query box's half is a TM1/2 x TM2 block of it (this case's S0 is 1)."""
    out = []
    for half, row in (("a", "t1 * TM1"), ("b", "t1 * TM1 + TM1 // 2")):
        out.append(
            f"    out_{half} = (acc_{half} * (1.0 / l_i_{half})[:, None]).to(Out.dtype.element_ty)\n"
            f"    o_desc.store([{row}, t2 * TM2, 0], out_{half}.reshape(TM1 // 2, TM2, BLOCK_DV))\n"
            f"    tl.store(Lse + off_h.to(tl.int64) * stride_lh + offs_m_{half} * stride_lm, "
            f"(m_i_{half} + tl.log2(l_i_{half})) * LN2)\n")
    desc = ("    o_desc = tl.make_tensor_descriptor(\n"
            "        Out + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh,\n"
            "        shape=[S1, S2, BLOCK_DV], strides=[S2 * stride_om, stride_om, 1],\n"
            "        block_shape=[TM1 // 2, TM2, BLOCK_DV])\n")
    start = src.index("    # 3. Normalize, and write")
    end = src.index("\n\n\n", start)  # the kernel's end: launch_forward follows
    return src[:start] + desc + "".join(out) + src[end:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    L = math.prod(SHAPE)
    q, k, v = (torch.randn(1, HEADS, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    na = ag.neighborhood(KERNEL, stride=STRIDE)
    density = math.prod(KERNEL) / L
    flops = 4 * HEADS * L * L * D * density

    halves = lambda e: (lambda src: edit_kernel(src, "_fwd_halves", e))  # noqa: E731
    rows = lambda *es: (lambda src: edit_kernel(src, "_write_rows", lambda k: _chain(k, es)))  # noqa: E731
    edits = {
        "base": None, "twice": halves(_twice), "q_in_l2": halves(_q_in_l2), "no_store": halves(_no_store),
        "prefetch_q_132": halves(_prefetch(132, False)), "prefetch_qkv_132": halves(_prefetch(132, True)),
        "prefetch_in_loop_132": halves(_prefetch_in_loop(132)), "tma_store": halves(_tma_store),
        "recip": rows(_recip),
        "stagger_150ns": halves(_stagger(150, 132)), "stagger_half": halves(_stagger(19000, 2)),
    }
    runs, outs = {}, {}
    for label, edit in edits.items():
        attn = ag.compile(ag.Variant(mask=na, name=f"gna_{label}"))
        if edit is not None:
            use_rewritten(attn, edit)
        with torch.no_grad():
            outs[label] = attn(q, k, v, spatial_shape=SHAPE)
        print(f"{label}: config {attn.last_config} ({attn.last_config_source})", flush=True)

        def run(a=attn):
            with torch.no_grad():
                return a(q, k, v, spatial_shape=SHAPE)
        runs[label] = run
    for label in [x for x in edits if x not in ("base", "twice", "q_in_l2")]:
        err = (outs[label].float() - outs["base"].float()).abs().max().item()
        print(f"{label}: output max |diff| to base {err:.1e}", flush=True)

    attn = ag.compile(ag.Variant(mask=na, name="gna_configs"))
    for cfg in [(256, 64, 8, 3, True), (256, 128, 8, 2, True), (256, 32, 8, 4, True), (128, 64, 8, 2, True),
                (128, 64, 8, 3, True), (128, 64, 4, 2, False), (128, 64, 8, 2, False)]:
        config = ag.KernelConfig(*cfg[:4], halves=cfg[4])
        try:
            with torch.no_grad():
                err = (attn(q, k, v, spatial_shape=SHAPE, config=config).float() - outs["base"].float()).abs().max().item()
        except Exception as exc:  # noqa: BLE001 (a config that does not fit is reported, not fatal)
            print(f"config {cfg}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            continue
        print(f"config {cfg}: max |diff| to base {err:.1e}", flush=True)

        def run(c=config):
            with torch.no_grad():
                return attn(q, k, v, spatial_shape=SHAPE, config=c)
        runs[f"config {cfg}"] = run

    dense = ag.compile(ag.Variant(name="dense_line"))

    def run_dense():
        with torch.no_grad():
            return dense(q, k, v)
    runs["dense (line = time / 16)"] = run_dense
    dense_recip = ag.compile(ag.Variant(name="dense_recip"))
    use_rewritten(dense_recip, rows(_recip))
    dense_same = ag.compile(ag.Variant(name="dense_same"))
    use_rewritten(dense_same, lambda src: src)

    def run_dense_same():
        with torch.no_grad():
            return dense_same(q, k, v)
    runs["dense, rewritten unchanged"] = run_dense_same

    def run_dense_recip():
        with torch.no_grad():
            return dense_recip(q, k, v)
    runs["dense, recip (ms x 1000)"] = run_dense_recip
    with torch.no_grad():
        print("dense recip: max |diff|", (dense_recip(q, k, v).float() - dense(q, k, v).float()).abs().max().item())

    times = interleaved_ms(runs, args.rounds)
    dense_ms = times["dense (line = time / 16)"]
    print("dense ms per round:", " ".join(f"{x:.3f}" for x in dense_ms), "| with recip:",
          " ".join(f"{x:.3f}" for x in times.pop("dense, recip (ms x 1000)")), "| rewritten unchanged:",
          " ".join(f"{x:.3f}" for x in times.pop("dense, rewritten unchanged")))
    line = sorted(times.pop("dense (line = time / 16)"))[args.rounds // 2] * density
    print(f"\nspeed-of-light line: {line * 1e3:.1f} us (dense {line / density:.3f} ms, x density {density})")
    for label, t in times.items():
        med = sorted(t)[len(t) // 2]
        print(f"{label:28s}: " + " ".join(f"{x * 1e3:6.1f}" for x in t)
              + f" us  median {med * 1e3:6.1f} = {flops / med / 1e9:4.0f} TFLOP/s, {med / line:.3f} x line", flush=True)
    base, twice = (sorted(times[x])[len(times[x]) // 2] for x in ("base", "twice"))
    programs = HEADS * L // 256
    print(f"\nloop of 16 tiles (twice - base): {(twice - base) * 1e3:.1f} us; fixed (2 base - twice): "
          f"{(2 * base - twice) * 1e3:.1f} us; {programs} programs, {programs / 132:.2f} per SM")


if __name__ == "__main__":
    main()
