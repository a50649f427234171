"""``ag.reference``: the float64 oracle of SEMANTICS.md, by materializing the score matrix.

It evaluates the Variant itself (not the lowered kernel IR), with torch over broadcast
index grids, so that it shares no code with the passes or the code generator it checks.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import sympy
import torch

from .ir.expr import B, FloorDiv, H, KV_IDX, LKV, LQ, Q_IDX, SCORE, exact_relation
from .ir.nodes import (AndMask, Causal, Document, Linear, Mask, MaskMod, Neighborhood, NotMask, OrMask, Sigmoid, SlidingWindow,
                       Softmax, Variant)
from .runtime.validate import resolve_spatial, check_qkv, check_runtime_tensors, check_scale


@contextlib.contextmanager
def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def evaluate(expr: sympy.Basic, env: dict, tensors: dict[str, torch.Tensor]):
    """Evaluate an IR expression with torch; ``env`` maps symbols to tensors or numbers."""

    def ev(e):
        if e in env:
            return env[e]
        if e is sympy.true or e is sympy.false:
            return bool(e)
        if e == sympy.oo:
            return math.inf
        if e == -sympy.oo:
            return -math.inf
        if e.is_Integer:
            return int(e)
        if e.is_Number or (not e.free_symbols and not e.atoms(sympy.Indexed) and e.is_real):
            return float(e)
        if isinstance(e, sympy.Add):
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out + ev(a)
            return out
        if isinstance(e, sympy.Mul):
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out * ev(a)
            return out
        if isinstance(e, sympy.Pow):
            base, exp = ev(e.base), ev(e.exp)
            if not isinstance(base, torch.Tensor) and not isinstance(exp, torch.Tensor):
                return float(base) ** exp
            return torch.pow(torch.as_tensor(base, dtype=torch.float64), exp)
        if isinstance(e, sympy.Indexed):
            t = tensors[str(e.base.label)]
            idx = torch.broadcast_tensors(*[torch.as_tensor(ev(i), dtype=torch.long, device=t.device)
                                            for i in e.indices])
            val = t[tuple(idx)]
            return val.double() if val.is_floating_point() else val
        if isinstance(e, FloorDiv):
            a, b = ev(e.args[0]), ev(e.args[1])
            return torch.div(torch.as_tensor(a), b, rounding_mode="floor")
        if isinstance(e, sympy.Mod):
            return torch.remainder(torch.as_tensor(ev(e.args[0])), ev(e.args[1]))
        if isinstance(e, sympy.Piecewise):
            out = ev(e.args[-1].expr)
            for piece in reversed(e.args[:-1]):
                out = torch.where(torch.as_tensor(ev(piece.cond)), torch.as_tensor(ev(piece.expr)),
                                  torch.as_tensor(out))
            return out
        if isinstance(e, (sympy.Min, sympy.Max)):
            fn = torch.minimum if isinstance(e, sympy.Min) else torch.maximum
            out = torch.as_tensor(ev(e.args[0]))
            for a in e.args[1:]:
                out = fn(out, torch.as_tensor(ev(a)))
            return out
        rel = {sympy.Lt: torch.lt, sympy.Le: torch.le, sympy.Gt: torch.gt, sympy.Ge: torch.ge,
               sympy.Eq: torch.eq, sympy.Ne: torch.ne}
        if type(e) in rel:
            lhs, rhs = exact_relation(e)
            return rel[type(e)](torch.as_tensor(ev(lhs)), torch.as_tensor(ev(rhs)))
        logic = {sympy.And: torch.logical_and, sympy.Or: torch.logical_or, sympy.Xor: torch.logical_xor}
        if type(e) in logic:
            out = torch.as_tensor(ev(e.args[0]))
            for a in e.args[1:]:
                out = logic[type(e)](out, torch.as_tensor(ev(a)))
            return out
        if isinstance(e, sympy.Not):
            return torch.logical_not(torch.as_tensor(ev(e.args[0])))
        unary = {sympy.exp: torch.exp, sympy.log: torch.log, sympy.sin: torch.sin, sympy.cos: torch.cos,
                 sympy.tan: torch.tan, sympy.tanh: torch.tanh, sympy.Abs: torch.abs, sympy.floor: torch.floor,
                 sympy.ceiling: torch.ceil}
        if type(e) in unary:
            x = torch.as_tensor(ev(e.args[0]))
            if type(e) not in (sympy.Abs, sympy.floor, sympy.ceiling):
                x = x.double()
            return unary[type(e)](x)
        raise NotImplementedError(f"reference: cannot evaluate {type(e).__name__}: {e}")

    with _float64_default():
        return ev(expr)


def mask_matrix(mask: Mask | None, env: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor | bool:
    """The element-wise mask (true = attend), broadcastable to (B, H, Lq, Lkv)."""
    if mask is None:
        return True
    i, j, lq, lkv = env[Q_IDX], env[KV_IDX], env[LQ], env[LKV]
    if isinstance(mask, Causal):
        return j <= i + ((lkv - lq) if mask.bottom_right else 0)
    if isinstance(mask, SlidingWindow):
        return (j >= i - mask.left) & (j <= i + mask.right)
    if isinstance(mask, Document):
        doc = tensors["document_ids"]
        b = env[B]
        return doc[b, i] == doc[b, j]
    if isinstance(mask, MaskMod):
        return torch.as_tensor(evaluate(mask.pred, env, tensors))
    if isinstance(mask, Neighborhood):
        return neighborhood_matrix(mask, env[SPATIAL], i, j)
    if isinstance(mask, AndMask):
        return torch.as_tensor(mask_matrix(mask.a, env, tensors)) & torch.as_tensor(mask_matrix(mask.b, env, tensors))
    if isinstance(mask, OrMask):
        return torch.as_tensor(mask_matrix(mask.a, env, tensors)) | torch.as_tensor(mask_matrix(mask.b, env, tensors))
    if isinstance(mask, NotMask):
        return ~torch.as_tensor(mask_matrix(mask.a, env, tensors))
    raise NotImplementedError(f"reference: mask node {type(mask).__name__} is not supported")


SPATIAL = "spatial_shape"  # env key of the call's grid (neighborhood masks)


def neighborhood_matrix(na: Neighborhood, shape: tuple[int, ...], i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """SEMANTICS.md's per-axis rule, AND over the axes of the row-major grid ``shape``."""
    if shape is None:
        raise ValueError("spatial_shape is required for neighborhood variants")
    rank = len(shape)
    keep = torch.ones((), dtype=torch.bool, device=i.device)
    rest_i, rest_j = i, j
    for axis in reversed(range(rank)):  # unravel row-major: last axis fastest
        L = shape[axis]
        x, y = rest_i % L, rest_j % L
        rest_i, rest_j = rest_i // L, rest_j // L
        k, d = na.per_axis("kernel_size", rank)[axis], na.per_axis("dilation", rank)[axis]
        s, causal = na.per_axis("stride", rank)[axis], na.per_axis("is_causal", rank)[axis]
        g, xg = x % d, x // d
        Lg = (L - g + d - 1) // d
        if causal:
            leader = torch.minimum((xg // s) * s + s - 1, Lg - 1)
            start = torch.clamp(leader - k + 1, min=0)
            end = xg
        else:
            leader = torch.minimum((xg // s) * s + s // 2, Lg - 1)
            start = torch.maximum(torch.minimum(leader - k // 2, Lg - k), torch.zeros_like(Lg))
            end = start + k - 1
        keep = keep & (y % d == g) & (y // d >= start) & (y // d <= end)
    return keep


LINEAR_EPS = 1e-6  # SEMANTICS.md: the normalizer's denominator is sum_j w_ij phi(q_i).phi(k_j) + 1e-6


def _linear_attention(variant: Variant, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: object,
                      return_lse: bool, decay_log: torch.Tensor | None) -> torch.Tensor:
    """SEMANTICS.md's ``linear(feature_map, decay, normalize)``, materialized in float64:
    a_ij = phi(q_i).phi(k_j) (no scale), w_ij = exp(decay_log[h] (i - j)) on attended pairs,
    out_i = sum_j w_ij a_ij v_j, divided by sum_j w_ij a_ij + 1e-6 when normalizing.
    Differentiable in q, k, v and decay_log."""
    norm, mask = variant.norm, variant.mask
    if variant.score is not None:
        raise ValueError(f"linear attention takes no score_mod; variant '{variant.label}' has one")
    if mask is not None and not isinstance(mask, Causal):
        raise ValueError(f"linear attention allows only no mask or ag.causal(); variant '{variant.label}' has "
                         f"{type(mask).__name__}")
    if norm.decay and mask is None:
        raise ValueError(f"linear(decay=True) needs the causal mask; variant '{variant.label}' has none")
    if scale is not None:
        raise ValueError("scale: linear attention has no scale (phi(q).phi(k) is unscaled); leave scale=None")
    if return_lse:
        raise ValueError("return_lse: linear attention has no log-sum-exp; call without return_lse=True")
    B, Hq, Lq, _ = q.shape
    Hkv, Lkv = k.shape[1], k.shape[2]
    phi = {"identity": lambda x: x, "elu1": lambda x: torch.nn.functional.elu(x) + 1.0,
           "relu": torch.relu}[norm.feature_map]
    group = Hq // Hkv
    fq = phi(q.double())
    fk = phi(k.double()).repeat_interleave(group, dim=1)
    a = fq @ fk.transpose(-1, -2)
    i = torch.arange(Lq, device=q.device).view(-1, 1)
    j = torch.arange(Lkv, device=q.device).view(1, -1)
    if mask is not None:
        keep = j <= i + ((Lkv - Lq) if mask.bottom_right else 0)
        if norm.decay:
            if decay_log.dim() != 1 or decay_log.shape[0] != Hq or not decay_log.is_floating_point():
                raise ValueError(f"decay_log must be a floating tensor of shape (Hq,) = ({Hq},), got "
                                 f"{decay_log.dtype} {tuple(decay_log.shape)}")
            # distance 0 on dropped pairs keeps exp finite there (and its gradient free of inf * 0)
            dist = torch.where(keep, i - j, 0).double()
            a = a * torch.exp(decay_log.double().view(1, Hq, 1, 1) * dist)
        a = torch.where(keep, a, 0.0)
    out = a @ v.double().repeat_interleave(group, dim=1)
    if norm.normalize:
        out = out / (a.sum(-1, keepdim=True) + LINEAR_EPS)
    return out


def reference(variant: Variant) -> Callable:
    """The float64 oracle for ``variant``: ``ref(q, k, v, scale=None, return_lse=False, **tensors)``.

    Returns float64 tensors (out, and lse when asked) on q's device, differentiable in q,
    k, v and the floating tensors the variant reads.
    """
    if not isinstance(variant, Variant):
        raise TypeError(f"reference: expected an ag.Variant, got {type(variant).__name__}")

    has_na = any(isinstance(m, Neighborhood) for m in (variant.mask.leaves() if variant.mask else ()))

    def run(q, k, v, *, scale=None, return_lse=False, spatial_shape=None, **tensors):
        p = check_qkv(q, k, v, allow_float64=True)
        if has_na:
            resolve_spatial(variant.mask, spatial_shape, p)
        elif spatial_shape is not None:
            raise TypeError(f"spatial_shape is only taken by neighborhood variants; '{variant.label}' has none")
        sm_scale = check_scale(scale, p.D)
        bound = check_runtime_tensors(variant.tensors(), tensors, variant.captured(), p, variant.label)
        if isinstance(variant.norm, Linear):
            return _linear_attention(variant, q, k, v, scale, return_lse, bound.get("decay_log"))
        dev = q.device
        group = p.HQ // p.HKV
        # differentiable in q, k, v and every floating tensor the score reads (autograd is
        # the backward's oracle); float64 inputs are accepted for torch.autograd.gradcheck
        qd = q.double()
        kd = k.double().repeat_interleave(group, dim=1)
        vd = v.double().repeat_interleave(group, dim=1)
        s = sm_scale * (qd @ kd.transpose(-1, -2))
        env = {
            B: torch.arange(p.B, device=dev).view(-1, 1, 1, 1),
            H: torch.arange(p.HQ, device=dev).view(1, -1, 1, 1),
            Q_IDX: torch.arange(p.Lq, device=dev).view(1, 1, -1, 1),
            KV_IDX: torch.arange(p.Lkv, device=dev).view(1, 1, 1, -1),
            LQ: p.Lq, LKV: p.Lkv, SCORE: s,
            SPATIAL: tuple(spatial_shape) if isinstance(spatial_shape, (tuple, list)) else (spatial_shape,),
        }
        if variant.score is not None:
            s = torch.as_tensor(evaluate(variant.score.expr, env, bound), dtype=torch.float64, device=dev)
            s = s.expand(p.B, p.HQ, p.Lq, p.Lkv)
        keep = torch.as_tensor(mask_matrix(variant.mask, env, bound), device=dev)
        norm = variant.norm
        if isinstance(norm, Softmax):
            s = torch.where(keep, s, -math.inf)
            m = s.amax(-1, keepdim=True).detach()  # a shift only; softmax does not depend on it
            if norm.sink:  # one more logit per head, attached to no value
                sink = bound["sinks"].double().view(1, -1, 1, 1)
                m = torch.maximum(m, sink.detach())
            m = torch.where(torch.isinf(m) & (m < 0), 0.0, m)
            e = torch.exp(s - m)
            denom = e.sum(-1, keepdim=True)
            if norm.sink:
                denom = denom + torch.exp(sink - m)
            out = (e / torch.where(denom == 0, 1.0, denom)) @ vd
            lse = torch.where(denom == 0, -math.inf, m + torch.log(denom)).squeeze(-1)
            return (out, lse) if return_lse else out
        if isinstance(norm, Sigmoid):
            if return_lse:
                raise ValueError("return_lse: sigmoid attention has no log-sum-exp")
            bias = -math.log(p.Lkv) if norm.bias is None else norm.bias
            # masked entries (and scores of -inf) weigh 0
            weight = torch.where(keep & (s > -math.inf), torch.sigmoid(s + bias), 0.0)
            return weight @ vd
        raise NotImplementedError("reference: linear normalization is not implemented in this version")

    return run
