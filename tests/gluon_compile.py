"""Compile generated Gluon kernels for sm90a without a GPU: ``triton.compile`` with a Hopper
target runs the whole pipeline down to a cubin on the CPU. The CPU suite's check that the
Gluon templates render kernels Triton accepts, since Gluon has no interpreter.

It runs as its own process (``python gluon_compile.py JOBS_JSON``): Triton decides between
compiled and interpreted functions when ``triton.language`` is first imported, and the test
process interprets (TRITON_INTERPRET=1). Prints one JSON object per job.

A job names the module (``path``), the kernel (``kernel``: the suffix of its name, e.g.
``_fwd_gluon``), its TMA descriptors (``descriptors``: parameter -> [rows, head dim] of a
block), its constexprs (``constexprs``; ``*_AS_F32`` flags are True) and the pointer
parameters that hold bf16 (``bf16``; other pointers are fp32). The kernels are compiled for
bf16 with 4 warps and maxnreg 168, as the launchers do.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import types

import torch


def compile_for_sm90(module: types.ModuleType, job: dict):
    """The compiled kernel of ``module`` that ``job`` names (see the module's docstring)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    kernel = next(getattr(module, n) for n in dir(module) if n.endswith(job["kernel"]))
    descriptors = {name: module._descriptor(torch.empty(1, 2, 256, dim, dtype=torch.bfloat16), rows)
                   for name, (rows, dim) in job["descriptors"].items()}
    signature, constants = {}, {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in descriptors:
            signature[name] = mangle_type(descriptors[name])
        elif name in job["bf16"]:
            signature[name] = "*bf16"
        elif name in ("Lse", "Lse2", "Delta") or name.endswith("_ptr"):
            signature[name] = "*fp32"
        elif name == "tile_runs":
            signature[name] = "*i32"
        elif name in ("sm_scale", "qk_scale"):
            signature[name] = "fp32"
        elif name in job["constexprs"] or name.endswith("_AS_F32"):
            signature[name] = "constexpr"
            constants[name] = job["constexprs"].get(name, True)
        else:
            signature[name] = "i32"
    source = GluonASTSource(kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": 168})


def ptxas_report(ptx: str) -> dict:
    """ptxas -v on the kernel's PTX (Triton's own ptxas): registers and spill bytes. Register
    spills happen in ptxas, after the PTX: counting st.local in the PTX does not see them."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path  # the ptxas Triton itself runs for sm90 (3.9: ptxas-blackwell)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run([ptxas, "-arch=sm_90a", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    log = run.stdout + run.stderr
    registers = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    loads = re.search(r"(\d+) bytes spill loads", log)
    if run.returncode or registers is None:
        raise RuntimeError(f"ptxas failed: {log[-2000:]}")
    return {"registers": int(registers.group(1)),
            "spill_bytes": (int(stores.group(1)) if stores else 0) + (int(loads.group(1)) if loads else 0)}


def main(jobs: list[dict]) -> None:
    for i, job in enumerate(jobs):
        spec = importlib.util.spec_from_file_location(f"gluon_job{i}", job["path"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            compiled = compile_for_sm90(module, job)
        except Exception as exc:  # reported to the test, which shows it
            print(json.dumps({"path": job["path"], "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        ptx = compiled.asm["ptx"]
        print(json.dumps({"path": job["path"], "kernel": job["kernel"], "shared": compiled.metadata.shared,
                          "spills": ptx.count("st.local"), "wgmma": "wgmma.mma_async" in ptx,
                          "setmaxnreg": sorted({int(n) for n in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)",
                                                                            ptx)}),
                          **ptxas_report(ptx)}), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
