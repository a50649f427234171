"""Compile generated Gluon forwards for sm90a without a GPU: ``triton.compile`` with a Hopper
target runs the whole pipeline down to a cubin on the CPU. The CPU suite's check that the
Gluon template renders kernels Triton accepts, since Gluon has no interpreter.

It runs as its own process (``python gluon_compile.py JOBS_JSON``): Triton decides between
compiled and interpreted functions when ``triton.language`` is first imported, and the test
process interprets (TRITON_INTERPRET=1). Prints one JSON object per job.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import types

import torch


def compile_for_sm90(module: types.ModuleType, d: int, dv: int, block_n: int, stages: int, pingpong: bool = False):
    """The compiled kernel of ``module``'s ``*_fwd_gluon`` at these sizes (bf16)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    kernel = next(getattr(module, n) for n in dir(module) if n.endswith("_fwd_gluon"))
    q = torch.empty(1, 2, 256, d, dtype=torch.bfloat16)
    v = torch.empty(1, 2, 256, dv, dtype=torch.bfloat16)
    descriptors = {"q_desc": module._descriptor(q, 64), "k_desc": module._descriptor(q, block_n),
                   "v_desc": module._descriptor(v, block_n)}
    sizes = {"BLOCK_N": block_n, "D": d, "DV": dv, "STAGES": stages, "PINGPONG": pingpong}
    signature, constants = {}, {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in descriptors:
            signature[name] = mangle_type(descriptors[name])
        elif name == "Out":
            signature[name] = "*bf16"
        elif name == "Lse" or name.endswith("_ptr"):
            signature[name] = "*fp32"
        elif name == "tile_runs":
            signature[name] = "*i32"
        elif name in ("sm_scale", "qk_scale"):
            signature[name] = "fp32"
        elif name in sizes or name in ("SCALE_POSITIVE", "STORE_LSE") or name.endswith("_AS_F32"):
            signature[name] = "constexpr"
            constants[name] = sizes.get(name, True)
        else:
            signature[name] = "i32"
    source = GluonASTSource(kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": 168})


def main(jobs: list[dict]) -> None:
    for i, job in enumerate(jobs):
        spec = importlib.util.spec_from_file_location(f"gluon_job{i}", job["path"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            compiled = compile_for_sm90(module, job["d"], job["dv"], job["block_n"], job["stages"],
                                        job.get("pingpong", False))
        except Exception as exc:  # reported to the test, which shows it
            print(json.dumps({"path": job["path"], "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        ptx = compiled.asm["ptx"]
        print(json.dumps({"path": job["path"], "shared": compiled.metadata.shared,
                          "spills": ptx.count("st.local"), "wgmma": "wgmma.mma_async" in ptx,
                          "setmaxnreg": "setmaxnreg" in ptx}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
