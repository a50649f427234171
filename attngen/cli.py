"""The ``attngen`` command line: compile, list, explain, tune, cache (``cli_cache.py``)."""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

from . import __version__
from .ir.kernel import KernelIR
from .ir.nodes import Variant
from .ir.text import load

EPILOG = """\
SPEC names a variant in one of three ways:
  path/to/file.py:NAME   a Python file defining NAME = ag.Variant(...)
  path/to/file.ir        a textual IR file (see `attngen list` and the files under ir/)
  NAME                   a built-in variant from `attngen list`

examples:
  attngen list
  attngen compile alibi -o out/          # writes out/alibi.py, out/alibi.ir, out/test_alibi.py
  attngen compile examples/quickstart.py:variant --print-after-all
  attngen explain sliding_window --shape 8192
  attngen tune causal --shape 8192 --head-dim 128 --dtype bf16
  attngen cache list                     # what the kernel cache holds (also: size, clear)
"""


EXPLAIN_EPILOG = EPILOG + """  attngen explain my_na.ir --shape 128x128                  # a neighborhood mask on a 128x128 grid
  attngen explain my_na.ir --shape 128x128 --q-box 8x16 --kv-box 8x8
"""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def load_spec(spec: str) -> Variant:
    """Resolve a SPEC (file.py:NAME, IR file, or built-in name) to a Variant."""
    from .library import builtin, builtin_names

    if ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        path_text, name = spec.rsplit(":", 1)
        path = Path(path_text)
        if not path.is_file():
            raise CLIError(f"no such Python file: {path}")
        module_spec = importlib.util.spec_from_file_location(f"attngen_spec_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            module_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
        if not hasattr(module, name):
            raise CLIError(f"{path} defines no '{name}'")
        obj = getattr(module, name)
        if not isinstance(obj, Variant):
            raise CLIError(f"{path}:{name} is a {type(obj).__name__}, not an ag.Variant")
        return obj
    path = Path(spec)
    if path.is_file():
        return load(path)
    if spec.endswith((".ir", ".py")) or "/" in spec:
        raise CLIError(f"no such file: {spec}")
    if spec in builtin_names():
        return builtin(spec)
    raise CLIError(f"'{spec}' is neither a file nor a built-in variant (try `attngen list`)")


def _write(path: Path, text: str) -> None:
    from .runtime.cache import atomic_write

    atomic_write(path, text)


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile as compile_variant
    from .ir.text import variant_to_text
    from .codegen.render import render_generated_test
    from .passes.normalization import CHUNKED_LINEAR

    variant = load_spec(args.spec)

    def show(name: str, ir: KernelIR) -> None:
        print(f"# ---- IR after {name} ----\n{ir.to_text()}", flush=True)

    attn = compile_variant(variant, after_each_pass=show if args.print_after_all else None)
    name = args.name or attn.ir.name
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    module, ir_file, test = out / f"{name}.py", out / f"{name}.ir", out / f"test_{name}.py"
    _write(module, attn.source)
    _write(ir_file, attn.ir.to_text())
    _write(test, render_generated_test(name, variant_to_text(variant), attn.ir.to_text()))
    status = "from cache" if attn.from_cache else "generated"
    plan = "chunked linear attention" if attn.ir.algorithm == CHUNKED_LINEAR else f"{attn.ir.strategy} tiles"
    print(f"{name}: {plan}, kernel {status}\n  {module}\n  {ir_file}\n  {test}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .library import builtin_names, describe

    names = builtin_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")
    return 0


def _shape(text: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape wants L or Lq,Lkv, or a spatial shape X[xY[xZ]] for "
                                         f"neighborhood masks (integers), got '{text}'") from None
    if not 1 <= len(parts) <= 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"--shape wants L or Lq,Lkv, or a spatial shape X[xY[xZ]] for "
                                         f"neighborhood masks (positive integers), got '{text}'")
    return parts


def _box(text: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if not 1 <= len(parts) <= 3 or min(parts) <= 0 or any(p & (p - 1) for p in parts):
        raise argparse.ArgumentTypeError(f"a tile box is 1 to 3 powers of two, one per axis (e.g. 8x16), "
                                         f"got '{text}'")
    return parts


def _dims(parts: tuple[int, ...]) -> str:
    return "x".join(map(str, parts))


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain, explain_neighborhood, split_neighborhood
    from .runtime.neighborhood import resolve_axes

    variant = load_spec(args.spec)
    na, _ = split_neighborhood(variant.mask)
    if na is not None:
        shape = args.shape
        try:
            resolve_axes(na, shape, math.prod(shape))
        except (ValueError, TypeError) as exc:
            raise CLIError(f"--shape {_dims(shape)}: {exc}") from None
        for flag, box in (("--q-box", args.q_box), ("--kv-box", args.kv_box)):
            if box is not None and len(box) != len(shape):
                raise CLIError(f"{flag} {_dims(box)} has {len(box)} axes but --shape {_dims(shape)} has {len(shape)}")
        report = explain_neighborhood(variant, shape, args.block_m, args.block_n, args.q_box, args.kv_box,
                                      args.batch, args.heads)
        print(f"{variant.label}: neighborhood variant")
        print("\n".join("  " + line for line in report.lines()))
        return 0
    if args.q_box is not None or args.kv_box is not None:
        raise CLIError("--q-box and --kv-box are for neighborhood masks only; use --block-m/--block-n")
    if len(args.shape) > 2:
        raise CLIError(f"--shape {_dims(args.shape)}: '{variant.label}' has no neighborhood mask, so --shape is "
                       f"L or Lq,Lkv")
    lq, lkv = args.shape[0], args.shape[-1]
    if lq * lkv > 1 << 30:
        raise CLIError(f"--shape {lq}x{lkv} is too large to evaluate element-wise here (max 2^30 entries)")
    block_m = 128 if args.block_m is None else args.block_m
    block_n = 128 if args.block_n is None else args.block_n
    report = explain(variant, lq, lkv, block_m, block_n, args.batch, args.heads)
    print(f"{variant.label}: {variant.mask is not None and 'masked' or 'dense'} variant")
    print("\n".join("  " + line for line in report.lines()))
    return 0


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
INTERPRET_MAX_L = 1024  # the interpreter runs each program in Python: keep --interpret tiny

TUNE_EPILOG = """\
Times the forward kernel's launch configs (tiles, warps, stages; query/KV boxes for
neighborhood masks; two-halves query tiles and, on sm90+, warp specialization for dense and
band masks) after pruning those over the GPU's shared memory or register budget,
checks each against the heuristic config's output, and writes the fastest as a record in
the user cache (ATTNGEN_CACHE_DIR or the platformdirs cache, under autotune/<gpu>/). Later
calls of this kernel on this GPU, dtype and shape bucket (Lq and Lkv up to the next power
of two, exact D, Dv and grid) use it; without a record, calls use the shipped defaults
(autotune/<gpu family>.json) or the heuristic, and never time anything.

examples:
  attngen tune causal --shape 8192 --head-dim 128
  attngen tune alibi --shape 4096 --head-dim 64 --dtype fp16 --budget 120
  attngen tune na2d --spatial 128x128 --head-dim 128
  attngen tune causal --shape 32 --head-dim 16 --dtype fp32 --interpret   # CPU, tests only
"""


def cmd_tune(args: argparse.Namespace) -> int:
    import torch

    from .autotune.tuner import TuneShape, config_label, table, tune
    from .compiler import compile as compile_variant
    from .runtime.loader import interpreter_active
    from .runtime.attention import CompiledAttention

    if args.shape is None and args.spatial is None:
        raise CLIError("--shape L[,Lkv] is required (or --spatial XxY for neighborhood variants)")
    if args.interpret:
        if not interpreter_active():
            raise CLIError("--interpret needs the Triton interpreter: start with TRITON_INTERPRET=1 on a machine "
                           "with a GPU")
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise CLIError("no CUDA GPU found: `attngen tune` times kernels on the GPU (use --interpret to run the "
                       "tuner under the Triton interpreter at tiny sizes, for tests)")
    else:
        device = torch.device("cuda")
    if args.shape is not None and len(args.shape) > 2:
        raise CLIError(f"--shape {_dims(args.shape)}: L or Lq,Lkv; give a grid with --spatial")
    if args.spatial is not None:
        L = math.prod(args.spatial)
        if args.shape is not None and (args.shape[0] != L or args.shape[-1] != L):
            raise CLIError(f"--shape {_dims(args.shape)} does not match --spatial {_dims(args.spatial)} "
                           f"({L} positions)")
        lq = lkv = L
    else:
        lq, lkv = args.shape[0], args.shape[-1]
    for flag, val in (("--heads", args.heads), ("--batch", args.batch), ("--budget", args.budget)):
        if val <= 0:
            raise CLIError(f"{flag} must be positive, got {val}")
    if args.interpret and max(lq, lkv) > INTERPRET_MAX_L:
        raise CLIError(f"--interpret is for tiny shapes (L <= {INTERPRET_MAX_L}), got {lq},{lkv}")
    attn = compile_variant(load_spec(args.spec))
    if not isinstance(attn, CompiledAttention):
        raise CLIError(f"'{attn.ir.name}' is linear attention, whose LinearConfig the tuner does not cover yet")
    if attn.ir.neighborhood is not None and args.spatial is None:
        raise CLIError(f"'{attn.ir.name}' is a neighborhood variant: give its grid with --spatial XxY")
    shape = TuneShape(lq, lkv, args.head_dim, args.head_dim_v, args.batch, args.heads,
                      getattr(torch, DTYPES[args.dtype]), args.spatial)
    narrow = dict(warps=(4,), stages=(1,)) if args.interpret else {}  # ignored by the interpreter
    result = tune(attn, shape, device, budget_s=args.budget, progress=not args.no_progress, **narrow)
    print(f"{attn.ir.name} on {result.gpu}, {args.dtype}, bucket {result.bucket} "
          f"(B={args.batch} H={args.heads} Lq={lq} Lkv={lkv}): {len(result.trials)} candidates timed or tried, "
          f"{len(result.pruned)} pruned")
    print(table(result))
    if result.winner is None:
        raise CLIError("no candidate ran correctly; nothing written")
    h_ms, best = result.heuristic_ms, result.best_ms
    gain = f", x{h_ms / best:.2f} over the heuristic" if h_ms else ""
    print(f"winner: {config_label(result.winner)} {best:.4f} ms{gain}")
    print(f"record: {result.record_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attngen", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Compile declared attention variants into fused, cached Triton kernels.")
    parser.add_argument("--version", action="version", version=f"attngen {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compile", help="generate the Triton module, its final IR and a pytest file",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Compile SPEC and write DIR/NAME.py (the Triton module), DIR/NAME.ir (the IR "
                                   "after all passes) and DIR/test_NAME.py (checks the kernel against the "
                                   "float64 reference; run it with pytest).")
    p.add_argument("spec", metavar="SPEC", help="file.py:NAME, an IR file, or a built-in name")
    p.add_argument("-o", "--output", metavar="DIR", default=".", help="output folder (default: .)")
    p.add_argument("--name", help="file name stem (default: the variant's name)")
    p.add_argument("--print-after-all", action="store_true", help="print the IR after every compiler pass")
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("list", help="list the built-in variants (the files under ir/)",
                       description="List the built-in variant library with a one-line description each.")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("explain", help="tiles visited, density and speed-of-light bound at a shape",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXPLAIN_EPILOG,
                       description="Evaluate SPEC's mask at a shape and report density, query/KV tiles visited, "
                                   "the masked fraction of visited tiles and the bound over dense attention "
                                   "(1/density) next to the tile-level bound. Runtime tensors are synthesized. "
                                   "For neighborhood masks, --shape is the spatial grid and the counts come from "
                                   "the runtime's tile plan (query and KV tiles are boxes of the grid).")
    p.add_argument("spec", metavar="SPEC", help="file.py:NAME, an IR file, or a built-in name")
    p.add_argument("--shape", type=_shape, required=True, metavar="SHAPE",
                   help="L or Lq,Lkv (sequence lengths); for neighborhood masks the spatial shape X[xY[xZ]] "
                        "(128x128 or 128,128)")
    p.add_argument("--block-m", type=int, default=None,
                   help="query tile size (default 128; for neighborhood masks the runtime's choice on an "
                        "H100 in bf16 with D=128: 128 for 1-D windows and long block-sparse ones, else 64; "
                        "or the product of --q-box)")
    p.add_argument("--block-n", type=int, default=None,
                   help="KV tile size (default 128; for neighborhood masks as --block-m, or the product of "
                        "--kv-box)")
    p.add_argument("--q-box", type=_box, default=None, metavar="BOX",
                   help="neighborhood masks: the query tile as a box, one power of two per axis (e.g. 8x8); "
                        "default: the planner's choice for --block-m")
    p.add_argument("--kv-box", type=_box, default=None, metavar="BOX",
                   help="neighborhood masks: the KV tile as a box (e.g. 8x8); default: the planner's choice")
    p.add_argument("--batch", type=int, default=1, help="batch size for masks that read b (default 1)")
    p.add_argument("--heads", type=int, default=1, help="heads for masks that read h (default 1)")
    p.set_defaults(run=cmd_explain)

    p = sub.add_parser("tune", help="time launch configs on the GPU and keep the fastest as a record",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TUNE_EPILOG,
                       description="Autotune SPEC's forward kernel at one problem shape and write a tuning record.")
    p.add_argument("spec", metavar="SPEC", help="file.py:NAME, an IR file, or a built-in name")
    p.add_argument("--shape", type=_shape, default=None, metavar="L[,Lkv]", help="sequence lengths")
    p.add_argument("--spatial", type=_shape, default=None, metavar="XxY[xZ]",
                   help="the grid of a neighborhood variant (L = its product)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype (default bf16)")
    p.add_argument("--heads", type=int, default=16, help="heads (default 16)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--head-dim", type=int, default=128, metavar="D", help="q/k head dim (default 128)")
    p.add_argument("--head-dim-v", type=int, default=None, metavar="DV", help="v head dim (default: D)")
    p.add_argument("--budget", type=float, default=300.0, metavar="SECONDS",
                   help="stop timing new candidates after this long (default 300); the rest are listed as skipped")
    p.add_argument("--interpret", action="store_true",
                   help="run under the Triton interpreter on the CPU (tiny shapes; tiles only; for tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_tune)

    from .cli_cache import add_parser as add_cache_parser

    add_cache_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("attngen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except Exception as exc:  # one clear line unless --debug
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "" if isinstance(exc, (CLIError, ValueError, TypeError, NotImplementedError, OSError)) \
            else f"{type(exc).__name__}: "
        print(f"attngen: error: {kind}{msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
