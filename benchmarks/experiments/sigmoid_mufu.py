"""Experiment: is the dense sigmoid forward bound by the special-function unit (MUFU), and does
moving part of the sigmoids onto the FMA pipe help (FlashAttention-4's trick for exp2)?

The generated sigmoid module (two-halves kernel, 256x64, 8 warps, 4 stages) is rewritten as text
into variants of its per-score sigmoid `p = _sigmoid_half(s)`:
  generated  0.5 + 0.5*tanh.approx(x), x = qk*c1 + c0 (one FMA: since the fold was adopted)
  mixN       of every N consecutive elements of a thread one sigmoid is computed on the FMA pipe
             (2^y by Cody-Waite and a quartic, 1/(1+2^y) by two Newton steps), the rest as above
  nomufu     no special function at all (wrong values; the floor of the rest of the kernel)
and a few launch configs of the generated kernel, against the generated softmax kernel at its
default config. Interleaved rounds; TF/s per round.

The first run (its log is in git at ac91873) was written against commit e83a595's
source, before the fold, with a variant "fold" that did it by hand.

B=2 H=16 L=8192 D=128 bf16.

    PYTHONPATH=. python benchmarks/experiments/sigmoid_mufu.py [ROUNDS]
"""
import argparse
import importlib.util
import tempfile
from pathlib import Path

import torch
import triton

import attngen as ag
from attngen import KernelConfig

# One element's sigmoid of 2x on the FMA pipe: y = -2x*log2(e) clamped to [-126, 126];
# 2^y = 2^round(y) * 2^f, f in [-0.5, 0.5], 2^f by a cubic; d = 1 + 2^y; 1/d from the
# bit-trick guess and two Newton steps. {o} is the output register, {i} the input.
POLY = """
    mul.rn.f32 y, {i}, 0fC038AA3B;
    max.f32 y, y, 0fC2FC0000;
    min.f32 y, y, 0f42FC0000;
    add.rn.f32 t, y, 0f4B400000;
    sub.rn.f32 r, t, 0f4B400000;
    sub.rn.f32 f, y, r;
    fma.rn.f32 e, f, 0f3C1D955B, 0f3D6359A4;
    fma.rn.f32 e, e, f, 0f3E75FDF0;
    fma.rn.f32 e, e, f, 0f3F317218;
    fma.rn.f32 e, e, f, 0f3F800000;
    mov.b32 bt, t;
    shl.b32 bt, bt, 23;
    mov.b32 be, e;
    add.s32 be, be, bt;
    mov.b32 e, be;
    add.rn.f32 d, e, 0f3F800000;
    mov.b32 bd, d;
    mov.b32 bk, 0x7EF311C7;
    sub.s32 bd, bk, bd;
    mov.b32 g, bd;
    fma.rn.f32 n, d, g, 0fBF800000;
    neg.f32 n, n;
    fma.rn.f32 g, g, n, g;
    fma.rn.f32 n, d, g, 0fBF800000;
    neg.f32 n, n;
    fma.rn.f32 {o}, g, n, g;
"""
TANH = """
    tanh.approx.f32 th, {i};
    fma.rn.f32 {o}, th, 0f3F000000, 0f3F000000;
"""


def mix_asm(pack: int) -> str:
    """PTX for `pack` elements: the last one on the FMA pipe, the others through tanh.approx."""
    body = ["{", ".reg .f32 y, t, r, f, e, d, g, n, th;", ".reg .b32 bt, be, bd, bk;"]
    for j in range(pack):
        src = (POLY if j == pack - 1 else TANH).format(i=f"${pack + j}", o=f"${j}")
        body.append(src)
    body.append("}")
    return "\n".join(body)


def mix_fn(pack: int) -> str:
    constraints = ",".join(["=r"] * pack + ["r"] * pack)
    return f'''
@triton.jit
def _sigmoid_mix(x):
    """sigmoid of 2x; one of every {pack} elements on the FMA pipe."""
    return tl.inline_asm_elementwise("""{mix_asm(pack)}""", "{constraints}", [x], dtype=tl.float32,
                                     is_pure=True, pack={pack})
'''


NOMUFU = '''
@triton.jit
def _sigmoid_mix(x):
    return 0.5 + 0.5 * (x * 0.001)
'''

CALL = "    p = _sigmoid_half(s)\n"


def variant_module(source: str, name: str, helper: str | None, folder: Path):
    if helper is not None:
        assert CALL in source, "generated _weights changed: update the experiment"
        anchor = "@triton.jit\ndef _sigmoid_half"
        # the forward's _weights comes first; the backward's calls stay as they are
        source = source.replace(anchor, helper + "\n\n" + anchor).replace(CALL, CALL.replace("_half", "_mix"), 1)
    path = folder / f"sig_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"sig_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIGS = [KernelConfig(256, 64, 8, 3, halves=True), KernelConfig(256, 32, 8, 4, halves=True),
           KernelConfig(256, 128, 8, 2, halves=True), KernelConfig(128, 64, 8, 4, halves=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds", nargs="?", type=int, default=3, help="interleaved rounds (default 3)")
    rounds = ap.parse_args().rounds
    B, H, L, D = 2, 16, 8192, 128
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * B * H * L * L * D
    sig = ag.compile(ag.Variant(norm=ag.sigmoid()))
    soft = ag.compile(ag.Variant())
    cfg = KernelConfig(256, 64, 8, 4, halves=True)
    folder = Path(tempfile.mkdtemp())
    mods = {name: variant_module(sig.source, name, helper, folder)
            for name, helper in (("generated", None), ("mix8", mix_fn(8)), ("mix16", mix_fn(16)),
                                 ("nomufu", NOMUFU))}
    with torch.no_grad():
        ref = sig(q, k, v)
        runs = {"softmax (default config)": lambda: soft(q, k, v),
                "sigmoid (runtime)": lambda: sig(q, k, v)}
        variants = [(name, mod, cfg) for name, mod in mods.items()]
        variants += [(f"generated {c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}", mods["generated"], c)
                     for c in CONFIGS]
        for name, mod, c in variants:
            out = torch.empty_like(q)

            def launch(mod=mod, out=out, c=c):
                mod.launch_forward(q, k, v, out, None, D ** -0.5, {}, None, c)
                return out

            try:
                err = ((launch().float() - ref.float()).norm() / ref.float().norm()).item()
            except Exception as exc:  # noqa: BLE001 - a config that does not fit: report, go on
                print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            print(f"{name}: rel err vs generated {err:.2e}", flush=True)
            runs[f"sigmoid {name}"] = launch
        results = {label: [] for label in runs}
        for _ in range(rounds):
            for label, fn in runs.items():
                results[label].append(flops / triton.testing.do_bench(fn, warmup=50, rep=300) / 1e9)
        print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")
        base = results["softmax (default config)"]
        for label, tfs in results.items():
            ratios = " ".join(f"{a / b:.3f}" for a, b in zip(tfs, base))
            print(f"{label:32s} TF/s per round: {' '.join(f'{t:.0f}' for t in tfs)}  x softmax per round: {ratios}",
                  flush=True)


if __name__ == "__main__":
    main()
