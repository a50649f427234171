"""How Triton pipelines the generated decoding kernel, per cache layout and num_stages:
compiled ahead of time for sm90 on any machine (no GPU needed; Triton's NVIDIA backend and
its ptxas are enough). Prints, per (page size, stages): the shared memory the kernel takes,
how many K/V buffers its main loop rotates through (shared memory / one K and V tile), the
cp.async copies in the PTX and the registers per thread.

    PYTHONPATH=. python benchmarks/experiments/decode_pipeline_stages.py [--stages 3,4,5] [--pages 0,16,64]

Page size 0 is the contiguous cache. Behind DecodeConfig's stages (runtime/decode_config.py):
a paged cache's block-table load takes pipeline stages of its own, so its K/V tiles get two
buffers at 5 stages where the contiguous cache's get two at 3.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret: import triton before attngen
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import attngen as ag  # noqa: E402
from attngen.codegen.render import render  # noqa: E402
from attngen.passes import lower  # noqa: E402

D, BLOCK_M, BLOCK_N = 128, 16, 64


def decode_kernel(variant: ag.Variant):
    """The variant's ``<name>_decode`` JIT function, from a freshly rendered module."""
    path = Path(tempfile.mkdtemp()) / "decode_module.py"
    path.write_text(render(lower(variant)))
    spec = importlib.util.spec_from_file_location("decode_module", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return getattr(module, f"{variant.label}_decode")


def compile_decode(fn, page_size: int, stages: int):
    """Compile as a bf16 launch would specialize it: 16-byte aligned pointers, strides
    divisible by 16, unit inner strides, one new token, D = 128."""
    params = list(inspect.signature(fn.fn).parameters)
    constants = {"stride_qd": 1, "stride_kd": 1, "stride_vd": 1, "stride_tp": 1, "stride_sb": 1, "D": D, "DV": D,
                 "BLOCK_D": D, "BLOCK_DV": D, "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "EVEN_D": True, "EVEN_DV": True,
                 "HAS_SEQ_LENS": True, "SCALE_POSITIVE": True, "PAGE_SIZE": page_size, "LQ_NEW": 1}
    pointers = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Part": "*fp32", "PartLse": "*fp32", "seq_lens": "*i32",
                "block_table": "*i32"}
    signature, attrs = {}, {}
    for i, name in enumerate(params):
        if name in constants:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("sm_scale", "qk_scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name.startswith("stride"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn, signature, constexprs={(params.index(k),): v for k, v in constants.items() if k in params},
                       attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": stages})


def registers(cubin: bytes) -> str:
    """Registers per thread of the compiled kernel (cuobjdump's resource usage: the PTX
    version newer Tritons emit can be newer than the ptxas they bundle)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.cubin").write_bytes(cubin)
        res = subprocess.run([str(tool), "--dump-resource-usage", "k.cubin"], cwd=tmp, capture_output=True,
                             text=True, check=False)
    found = [part.split(":")[1] for part in res.stdout.split() if part.startswith("REG:")]
    return found[0] if found else "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="3,4,5")
    p.add_argument("--pages", default="0,16,64", help="page sizes (0: contiguous)")
    args = p.parse_args(argv)
    fn = decode_kernel(ag.Variant(name="pipeline_dense"))
    tile = 2 * BLOCK_N * D * 2  # one K and one V tile in bf16
    print(f"Triton {triton.__version__}, sm90, D={D}, BLOCK_M={BLOCK_M}, BLOCK_N={BLOCK_N}, 4 warps")
    print("page_size stages shared_KB kv_buffers cp.async registers")
    for page_size in (int(x) for x in args.pages.split(",")):
        for stages in (int(x) for x in args.stages.split(",")):
            kernel = compile_decode(fn, page_size, stages)
            ptx = kernel.asm["ptx"]
            shared = kernel.metadata.shared
            print(f"{page_size:9d} {stages:6d} {shared / 1024:9.1f} {shared // tile:10d} "
                  f"{ptx.count('cp.async.cg') + ptx.count('cp.async.ca'):8d} {registers(kernel.asm['cubin']):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
