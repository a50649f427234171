"""Trace graph calls the way ``torch.compile`` does before Inductor sees them, without a GPU:
AOT autograd over fake CUDA tensors, with a stand-in Triton driver that names an sm90 target
(all that lowering a kernel to TTIR needs, which is how torch finds the tensors a kernel
writes). The CPU suite's check of runtime/inductor_ops.py: which op a call takes, which
kernels its graph launches and which of their arguments the graph must treat as written.

It runs as its own process (``python inductor_trace.py JOBS_JSON``), since the test process
interprets Triton kernels (TRITON_INTERPRET=1) and a graph launches compiled ones. Prints
one JSON object per job: ``forward`` and (when asked) ``backward``, each a list of the
graph's calls, ``{"kernel": name, "writes": [arguments], "grid": [...]}`` for a kernel launch
and ``{"op": name}`` for any other attngen op.

A job: ``variant`` (a name in VARIANTS), ``shape`` [B, H, L, D], ``spatial_shape`` (or
null), ``tensors`` (runtime tensors by name: "slopes" and "sinks" are (H,) fp32),
``backward`` (also trace ``attngen::attention_backward_kernels`` with gradients of
every runtime tensor), ``dynamic`` (symbolic shapes), ``config`` ("tl" or "gluon": the
forward's dialect) and ``launch`` (ATTNGEN_GRAPH_LAUNCH).
"""
from __future__ import annotations

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
from functorch.compile import aot_function  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext  # noqa: E402

import attngen as ag  # noqa: E402
import offline_sm90  # noqa: E402
from helpers import alibi, same_doc  # noqa: E402
from attngen.runtime import ops  # noqa: E402
from attngen.runtime.config import KernelConfig  # noqa: E402


VARIANTS = {
    "causal": ag.Variant(mask=ag.causal(), name="trace_causal"),
    "dense": ag.Variant(name="trace_dense"),
    "alibi": ag.Variant(score=alibi, mask=ag.causal(), name="trace_alibi"),
    "sinks": ag.Variant(mask=ag.sliding_window(31), norm=ag.softmax(sink=True), name="trace_sinks"),
    "sigmoid": ag.Variant(mask=ag.causal(), norm=ag.sigmoid(), name="trace_sigmoid"),
    "na2d": ag.Variant(mask=ag.neighborhood(3), name="trace_na2d"),
    "documents": ag.Variant(mask=same_doc & ag.causal(), name="trace_documents"),
}
# a fixed forward config: selecting one reads tuning records by GPU name
CONFIGS = {"tl": KernelConfig(64, 64, 4, 2), "gluon": KernelConfig(128, 128, 4, 2, dialect="gluon")}


def calls(gm: torch.fx.GraphModule) -> list[dict]:
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            name = getattr(kernel, "fn", kernel).__name__
            found.append({"kernel": name, "writes": list(node.kwargs["tensors_to_clone"]),
                          "grid": [list(g) if isinstance(g, tuple) else str(g) for g in node.kwargs["grid"]]})
        elif "attngen" in str(node.target):
            found.append({"op": str(node.target)})
    return found


def tensors_for(job: dict, H: int, B: int, L: int) -> dict[str, torch.Tensor]:
    made = {}
    for name in job.get("tensors", []):
        if name == "document":
            made[name] = torch.zeros(B, L, dtype=torch.int32, device="cuda")
        else:
            made[name] = torch.randn(H, device="cuda")
    return made


def trace(job: dict) -> dict:
    os.environ["ATTNGEN_GRAPH_LAUNCH"] = job.get("launch", "inductor")
    attn = ag.compile(VARIANTS[job["variant"]])
    B, H, L, D = job["shape"]
    spatial = tuple(job["spatial_shape"]) if job.get("spatial_shape") else None
    graphs: dict[str, torch.fx.GraphModule] = {}

    def capture(name):
        def compiler(gm, example_inputs):
            graphs[name] = gm
            return gm
        return compiler

    extra = {"spatial_shape": spatial} if spatial else {}
    config = CONFIGS[job.get("config", "tl")]
    mode = FakeTensorMode(shape_env=ShapeEnv()) if job.get("dynamic") else FakeTensorMode()
    with FakeTensorMode():
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    # dynamic: the sequence length symbolic, as torch.compile(dynamic=True) makes it
    lengths = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.STATIC, DimDynamic.STATIC, DimDynamic.DYNAMIC,
                                                      DimDynamic.STATIC]) if job.get("dynamic") else None
    q, k, v = (mode.from_tensor(t, symbolic_context=lengths) for t in (q, k, v))
    with mode:
        tensors = tensors_for(job, H, B, L)
        forward = aot_function(lambda q, k, v, *ts: attn(q, k, v, config=config, **dict(zip(tensors, ts)), **extra),
                               fw_compiler=capture("forward"))
        forward(q, k, v, *tensors.values())
        if job.get("backward"):
            out, lse = torch.randn_like(q), torch.randn(B, H, L, device="cuda")
            spatial_arg = ops.encode_spatial(spatial)
            backward = aot_function(
                lambda q, k, v, out, lse, dout, *ts: torch.ops.attngen.attention_backward_kernels(
                    attn.key, q, k, v, out, lse, dout, None, list(ts), [True] * len(ts), None, spatial_arg,
                    ops.encode_config(config), False),
                fw_compiler=capture("backward"))
            backward(q, k, v, out, lse, torch.randn_like(q), *tensors.values())
    return {name: calls(gm) for name, gm in graphs.items()}


def main() -> None:
    offline_sm90.activate()
    torch.cuda.get_device_capability = lambda device=None: (9, 0)  # the heuristic's one question
    for job in json.loads(sys.argv[1]):
        print(json.dumps(trace(job)), flush=True)


if __name__ == "__main__":
    main()
