"""The ``attngen`` command line: compile, list, explain."""
from __future__ import annotations

import argparse
import importlib.util
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
    from .runtime.cache import _atomic_write

    _atomic_write(path, text)


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile as compile_variant
    from .ir.text import variant_to_text
    from .codegen.render import render_generated_test

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
    print(f"{name}: {attn.ir.strategy} tiles, kernel {status}\n  {module}\n  {ir_file}\n  {test}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .library import builtin_names, describe

    names = builtin_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")
    return 0


def _shape(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape wants L or Lq,Lkv (integers), got '{text}'") from None
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"--shape wants L or Lq,Lkv (positive integers), got '{text}'")
    return parts[0], parts[-1]


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain

    variant = load_spec(args.spec)
    lq, lkv = args.shape
    if lq * lkv > 1 << 30:
        raise CLIError(f"--shape {lq}x{lkv} is too large to evaluate element-wise here (max 2^30 entries)")
    report = explain(variant, lq, lkv, args.block_m, args.block_n, args.batch, args.heads)
    print(f"{variant.label}: {variant.mask is not None and 'masked' or 'dense'} variant")
    print("\n".join("  " + line for line in report.lines()))
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
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Evaluate SPEC's mask at a shape and report density, query/KV tiles visited, "
                                   "the masked fraction of visited tiles and the bound over dense attention "
                                   "(1/density) next to the tile-level bound. Runtime tensors are synthesized.")
    p.add_argument("spec", metavar="SPEC", help="file.py:NAME, an IR file, or a built-in name")
    p.add_argument("--shape", type=_shape, required=True, metavar="L[,Lkv]", help="sequence length(s)")
    p.add_argument("--block-m", type=int, default=128, help="query tile size (default 128)")
    p.add_argument("--block-n", type=int, default=128, help="KV tile size (default 128)")
    p.add_argument("--batch", type=int, default=1, help="batch size for masks that read b (default 1)")
    p.add_argument("--heads", type=int, default=1, help="heads for masks that read h (default 1)")
    p.set_defaults(run=cmd_explain)
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
