"""Random inputs for any variant: q, k, v and every runtime or captured tensor it reads.

Tensor shapes are inferred by evaluating each index expression over the whole index grid
(so ``rel_bias[h, Min(128, Max(-128, kv_idx - q_idx)) + 128]`` gets shape (Hq, 257)).
A tensor compared with something or used as an index holds integers in [0, min(Lq, Lkv)];
any other tensor holds standard normal floats. ``document_ids`` holds sorted document ids,
linear attention's ``decay_log`` negative per-head log decays.
Used by the generated unit tests, ``attngen explain`` and the test suite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import sympy
import torch
from sympy.core.relational import Relational

from .ir.expr import B, H, KV_IDX, LKV, LQ, Q_IDX
from .ir.nodes import CAPTURED, Document, Linear, MaskMod, Neighborhood, Softmax, Variant
from .reference import evaluate


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    runtime: dict[str, torch.Tensor] = field(default_factory=dict)
    captured: dict[str, torch.Tensor] = field(default_factory=dict)


def _expressions(variant: Variant) -> list[sympy.Basic]:
    exprs = [variant.score.expr] if variant.score is not None else []
    if variant.mask is not None:
        exprs += [leaf.pred for leaf in variant.mask.leaves() if isinstance(leaf, MaskMod)]
    return exprs


def _integer_tensors(exprs: list[sympy.Basic]) -> set[str]:
    ints: set[str] = set()
    for e in exprs:
        for node in sympy.preorder_traversal(e):
            if isinstance(node, Relational) or isinstance(node, sympy.Indexed):
                parts = node.args if isinstance(node, Relational) else node.indices
                for part in parts:
                    ints |= {str(r.base.label) for r in sympy.sympify(part).atoms(sympy.Indexed)}
    return ints


def synthesize_tensors(variant: Variant, B_: int, Hq: int, Lq: int, Lkv: int, device: torch.device | str = "cpu",
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A random tensor for every tensor the variant reads (runtime and captured)."""
    device = torch.device(device)
    params = {p.name: p for p in variant.tensors()}
    out: dict[str, torch.Tensor] = {}
    if "document_ids" in params and any(isinstance(m, Document) for m in (variant.mask.leaves() if variant.mask else [])):
        n_docs = max(1, min(Lq, 4))
        ids = torch.randint(0, n_docs, (B_, Lq), generator=generator)
        out["document_ids"] = torch.sort(ids, dim=1).values.to(device)
    if isinstance(variant.norm, Softmax) and variant.norm.sink:
        out["sinks"] = torch.randn(Hq, generator=generator).to(device)  # one logit per query head
    if isinstance(variant.norm, Linear) and variant.norm.decay:
        # linear attention's per-head decay (SEMANTICS.md: <= 0): rates log-uniform in [1/64, 1] per token
        rates = torch.empty(Hq).uniform_(-math.log(64.0), 0.0, generator=generator).exp()
        out["decay_log"] = (-rates).to(device)
    exprs = _expressions(variant)
    ints = _integer_tensors(exprs)
    reads = sorted({r for e in exprs for r in e.atoms(sympy.Indexed)}, key=sympy.default_sort_key)
    env = {B: torch.arange(B_).view(-1, 1, 1, 1), H: torch.arange(Hq).view(1, -1, 1, 1),
           Q_IDX: torch.arange(Lq).view(1, 1, -1, 1), KV_IDX: torch.arange(Lkv).view(1, 1, 1, -1), LQ: Lq, LKV: Lkv}
    high = max(1, min(Lq, Lkv))
    pending = [n for n in params if n not in out]
    while pending:
        progress = False
        for name in list(pending):
            mine = [r for r in reads if str(r.base.label) == name]
            if any(str(x.base.label) not in out for r in mine for i in r.indices for x in i.atoms(sympy.Indexed)):
                continue  # an index reads a tensor we have not made yet
            cpu_tensors = {k: v.cpu() for k, v in out.items()}
            shape = [1] * params[name].ndim
            for r in mine:
                for d, idx in enumerate(r.indices):
                    val = torch.as_tensor(evaluate(idx, env, cpu_tensors))
                    if int(val.min()) < 0:
                        raise ValueError(f"tensor '{name}' is indexed at negative position {int(val.min())} "
                                         f"by {idx}; indices must be >= 0")
                    shape[d] = max(shape[d], int(val.max()) + 1)
            if name in ints:
                t = torch.randint(0, high + 1, shape, generator=generator)
            else:
                t = torch.randn(shape, generator=generator)
            out[name] = t.to(device)
            pending.remove(name)
            progress = True
        if not progress:
            raise ValueError(f"cannot infer shapes of tensors {pending}: their indices read each other")
    return out


def random_inputs(variant: Variant, *, B: int = 2, Hq: int = 4, Hkv: int = 2, Lq: int = 64, Lkv: int | None = None,
                  D: int = 32, Dv: int | None = None, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", seed: int = 0) -> Inputs:
    """Fresh random q, k, v and tensors for ``variant`` (document masks need Lkv == Lq)."""
    Lkv = Lq if Lkv is None else Lkv
    Dv = D if Dv is None else Dv
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(B, Hkv, Lkv, D, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(B, Hkv, Lkv, Dv, generator=g).to(device=device, dtype=dtype)
    tensors = synthesize_tensors(variant, B, Hq, Lq, Lkv, device, g)
    sources = {p.name: p.source for p in variant.tensors()}
    return Inputs(q, k, v, {n: t for n, t in tensors.items() if sources[n] != CAPTURED},
                  {n: t for n, t in tensors.items() if sources[n] == CAPTURED})


def fitting_spatial_shape(variant: Variant, extra: int = 3) -> tuple[int, ...] | None:
    """A small grid that ``variant``'s neighborhood fits (kernel x dilation + ``extra`` per
    axis; 2-D when the geometry does not fix the rank), or None without a neighborhood."""
    found = [m for m in (variant.mask.leaves() if variant.mask is not None else ()) if isinstance(m, Neighborhood)]
    if not found:
        return None
    na = found[0]
    rank = na.rank or 2
    return tuple(k * d + extra for k, d in zip(na.per_axis("kernel_size", rank), na.per_axis("dilation", rank)))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (absolute error when ref is all zeros)."""
    diff = (out.detach().double() - ref.detach().double()).norm()
    scale = ref.detach().double().norm()
    return float(diff / scale) if scale > 0 else float(diff)
