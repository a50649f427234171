"""Graph calls whose kernels Inductor launches itself.

Through the opaque custom op ``attngen::attention`` (runtime/ops.py), a compiled graph calls
back into attngen's Python at every step: the dispatcher, the call's settings, its plan and
config, the allocations, and Triton's own launcher, which binds about forty arguments.
On the H100 host that cost 118-241 us a call beyond a bare launch (benchmarks/NOTES.md,
"Where the targets stand"), more than a small model's attention kernel takes.

The two ops here are ``torch.library.triton_op``s with the same schemas:

    attngen::attention_kernels            (out, lse)
    attngen::attention_backward_kernels   (dq, dk, dv, gradients of the score's tensors)

Their bodies allocate the outputs and launch the generated module's kernels through
``torch.library.wrap_triton``. AOT autograd traces a body once, when the graph compiles, so
the compiled graph holds the allocations and the kernel launches themselves, and Inductor
issues them with its own launcher, as it does its generated kernels. Run eagerly (a graph
compiled with the ``eager`` backend), a body simply launches.

Which calls take them: runtime/graph_launch.py.

The forward always writes the log-sum-exp (the opaque op writes it only where something
reads it): without it the kernel's placeholder pointer would alias ``out``, which a
functionalized graph may copy back over the result. It costs 4 bytes a query row.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .autograd import backward_config
from .graph_launch import launch_config
from .ops import attention_autograd, kernel_for


@triton_op("attngen::attention_kernels", mutates_args=())
def attention_kernels(kernel: str, q: Tensor, k: Tensor, v: Tensor, tensors: list[Tensor], scale: Optional[float],
                      spatial_shape: str, config: str, store_lse: bool, return_lse: bool,
                      deterministic: bool) -> tuple[Tensor, Tensor]:
    """``attngen::attention`` with its launch traced into the graph; lse is always written."""
    attn = kernel_for(kernel)
    call = attn.call_settings(scale, spatial_shape, config, True, return_lse, deterministic)
    p, sm_scale, axes = attn._problem(call, q, k, v)
    launch = launch_config(attn, call, p, axes)
    bound = attn.bind(tensors)
    out = q.new_empty((p.B, p.HQ, p.Lq, p.DV))
    lse = q.new_empty((p.B, p.HQ, p.Lq), dtype=torch.float32)
    tiles = attn.tile_lists(p, bound, launch, axes, cache=False)
    attn.module(p.device).launch_forward(q, k, v, out, lse, sm_scale, bound, tiles, launch, wrap=wrap_triton)
    return out, lse


@triton_op("attngen::attention_backward_kernels", mutates_args=())
def attention_backward_kernels(kernel: str, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                               dout: Tensor, dlse: Optional[Tensor], tensors: list[Tensor],
                               tensor_grads: list[bool], scale: Optional[float], spatial_shape: str, config: str,
                               deterministic: bool) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """``attngen::attention_backward`` with its launches traced into the graph."""
    attn = kernel_for(kernel)
    call = attn.call_settings(scale, spatial_shape, config, True, dlse is not None, deterministic)
    p, sm_scale, axes = attn._problem(call, q, k, v)
    forward = launch_config(attn, call, p, axes)
    bound = attn.bind(tensors)
    wanted = tuple(n for n, want in zip(bound, tensor_grads) if want)
    module = attn.module(p.device)
    setup = attn._backward_setup(module, p, sm_scale, bound, axes, wanted, False, call.spatial_shape,
                                 cache_tiles=False)
    launch = backward_config(p.device, forward, setup.small_tiles(forward))
    buffers = {n: q.new_zeros(bound[n].shape, dtype=torch.float32) for n in wanted}
    dq, dk, dv = module.launch_backward(q, k, v, out, lse, dout, dlse, sm_scale, bound, buffers, launch,
                                        setup.tiles_for(launch), wrap=wrap_triton)
    return dq, dk, dv, [buffers[n].to(bound[n].dtype) for n in wanted]


attention_autograd(attention_kernels, torch.ops.attngen.attention_backward_kernels)
