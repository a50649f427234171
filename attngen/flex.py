"""``ag.flex_attention``: FlexAttention's signature and semantics on attngen's kernels.

``torch.nn.attention.flex_attention.flex_attention(q, k, v, score_mod, block_mask, ...)``
becomes ``ag.flex_attention(...)`` with the same arguments: the score_mod and the
block mask's ``mask_mod`` are traced into a Variant, compiled once and cached, and every
later call with the same mods reuses the kernel.

Caching. Mods are keyed by what their trace depends on: the code object, the default
arguments, and the values their closures and referenced globals hold (numbers, strings,
functions, recursively; a tensor by its rank and dtype only). Tensors the mods read are
located in the closure (a cell, an attribute of a cell's object, an element of a cell's
tuple, the same in a global) and fetched again at every call, so a mask_mod built per
batch around new document ids (``lambda b, h, q, kv: doc[q] == doc[kv]``) compiles once
and reads each batch's ids. Rebinding a captured attribute (``self.bias = new``) is seen;
a tensor found nowhere in the closure (one the mod builds itself) is the one the trace saw.

Under ``torch.compile`` the lookup is a constant for Dynamo
(``torch._dynamo.assume_constant_result``), the tensors are read from the closure as graph
inputs, and the launch is the ``attngen::attention`` custom op: no graph break. A mod that
is created inside the compiled function and closes over values Dynamo cannot turn into
constants (a module, a tensor computed in the graph) has no Python object at trace time;
such a call runs outside the graph (a graph break, named by its reason; an error under
``fullgraph=True``). Create the mod outside the compiled function, or pass its tensors as
globals or closure variables of a function defined outside.

Block masks. FlexAttention's block mask is a sparsity hint derived from its mask_mod
(``create_block_mask``); attngen derives its own tile plan from the compiled mask, so only
the mask_mod, the sequence lengths, batch and heads of the block mask are used. A block
mask built from block lists without a mask_mod (``BlockMask.from_kv_blocks`` with the
default ``noop_mask``) is honored as a mask over its blocks.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.nn.attention import flex_attention as _flex

from .compiler import compile as compile_variant
from .frontend.trace import trace_mask_mod, trace_score_mod
from .ir.nodes import Variant
from .runtime.attention import CompiledAttention

Path = tuple  # how to reach a tensor from a mod: ("cell", i) / ("global", name) then ("attr", a) / ("item", i)


@dataclass(frozen=True)
class _Entry:
    """A compiled pair of mods and where each tensor they read lives."""

    kernel: CompiledAttention
    fetch: tuple[tuple[str, str, Path], ...]  # (captured name, "score" or "mask", path)


_ENTRIES: dict[str, _Entry] = {}
_TOKENS: dict[tuple, str] = {}


# --------------------------------------------------------------------------- keys and paths
def _value_key(x: Any, depth: int = 0) -> Any:
    """What a traced mod can depend on in a closure or global value."""
    if isinstance(x, torch.Tensor):
        return ("tensor", x.dim(), x.dtype)
    if x is None or isinstance(x, (bool, int, float, str, torch.dtype)):
        return (type(x).__name__, x)
    if isinstance(x, types.FunctionType):
        return _mod_key(x, depth + 1) if depth < 4 else ("fn", id(x))
    if isinstance(x, (tuple, list)) and depth < 4:
        return (type(x).__name__, tuple(_value_key(v, depth + 1) for v in x))
    if isinstance(x, (types.ModuleType, type)):
        return ("static", id(x))
    # an object (self, a config): its scalar attributes may be baked into the trace
    scalars = tuple(sorted((k, v) for k, v in getattr(x, "__dict__", {}).items()
                           if isinstance(v, (bool, int, float, str))))
    return ("obj", id(x), scalars)


def _mod_key(fn: Callable | None, depth: int = 0) -> Any:
    if fn is None:
        return None
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: its identity
        return ("callable", id(fn))
    cells = tuple(_value_key(c.cell_contents, depth) for c in fn.__closure__ or ())
    names = getattr(fn, "__globals__", {})
    used = tuple((n, _value_key(names[n], depth)) for n in code.co_names if n in names)
    return (code, _value_key(fn.__defaults__, depth), cells, used)


def _find(root: Any, target: torch.Tensor, path: Path, depth: int = 0) -> Path | None:
    """The path from ``root`` (a closure cell's or global's value) to ``target``."""
    if root is target:
        return path
    if depth >= 3:
        return None
    if isinstance(root, (tuple, list)):
        children = [(("item", i), v) for i, v in enumerate(root)]
    elif isinstance(root, types.FunctionType):
        return _locate(root, target, path, depth + 1)
    elif isinstance(root, torch.nn.Module):
        children = [(("attr", n), v) for n, v in {**vars(root), **dict(root.named_parameters(recurse=False)),
                                                  **dict(root.named_buffers(recurse=False))}.items()]
    elif hasattr(root, "__dict__") and not isinstance(root, (types.ModuleType, type)):
        children = [(("attr", n), v) for n, v in vars(root).items()]
    else:
        return None
    for step, value in children:
        found = _find(value, target, path + (step,), depth + 1)
        if found is not None:
            return found
    return None


def _locate(fn: Callable, target: torch.Tensor, path: Path = (), depth: int = 0) -> Path | None:
    """Where ``fn`` reaches ``target``: through its closure cells, then its globals."""
    for i, cell in enumerate(getattr(fn, "__closure__", None) or ()):
        found = _find(cell.cell_contents, target, path + (("cell", i),), depth)
        if found is not None:
            return found
    names = getattr(fn, "__globals__", {})
    for n in getattr(getattr(fn, "__code__", None), "co_names", ()):
        if n in names:
            found = _find(names[n], target, path + (("global", n),), depth)
            if found is not None:
                return found
    return None


def _fetch(fn: Callable, path: Path) -> torch.Tensor:
    """Follow ``path`` from ``fn`` (Dynamo traces these reads as graph inputs)."""
    x: Any = fn
    for kind, where in path:
        if kind == "cell":
            x = x.__closure__[where].cell_contents
        elif kind == "global":
            x = x.__globals__[where]
        elif kind == "attr":
            x = getattr(x, where)
        else:
            x = x[where]
    return x


# --------------------------------------------------------------------------- compile once per mods
@torch._dynamo.assume_constant_result
def _lookup(score_mod: Callable | None, mask_mod: Callable | None) -> str:
    """The token of the compiled kernel for these mods (compiling them the first time)."""
    key = (_mod_key(score_mod), _mod_key(mask_mod))
    token = _TOKENS.get(key)
    if token is None:
        score = trace_score_mod(score_mod) if score_mod is not None else None
        mask = trace_mask_mod(mask_mod) if mask_mod is not None else None
        names = [m.name for m in (score, mask) if m is not None]
        kernel = compile_variant(Variant(score=score, mask=mask, name="_".join(["flex", *names])))
        fetch = []
        for part, fn, traced in (("score", score_mod, score), ("mask", mask_mod, mask)):
            for name, tensor in (traced.captured.items() if traced is not None else ()):
                # a tensor found nowhere in the closure was built by the mod itself: the kernel keeps it
                fetch.append((name, part, _locate(fn, tensor) or (("kernel", name),)))
        token = f"{kernel.key}:{len(_ENTRIES)}"
        _ENTRIES[token] = _Entry(kernel, tuple(fetch))
        _TOKENS[key] = token
    return token


def _captured(entry: _Entry, score_mod: Callable | None, mask_mod: Callable | None) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, part, path in entry.fetch:
        if path[0][0] == "kernel":
            tensors[name] = entry.kernel.captured_tensors()[name]
        else:
            tensors[name] = _fetch(score_mod if part == "score" else mask_mod, path)
    return tensors


# --------------------------------------------------------------------------- the entry point
def _mask_mod_of(block_mask, q: torch.Tensor, k: torch.Tensor) -> Callable | None:
    """The block mask's mask_mod after checking it fits q and k (None: attend everything;
    ``noop_mask``: the block lists decide, see ``_attend``)."""
    if block_mask is None:
        return None
    if not isinstance(block_mask, _flex.BlockMask):
        raise TypeError(f"block_mask must be a torch.nn.attention.flex_attention.BlockMask (create_block_mask), "
                        f"got {type(block_mask).__name__}")
    if tuple(block_mask.seq_lengths) != (q.shape[2], k.shape[2]):
        raise ValueError(f"block_mask was created for (Q_LEN, KV_LEN) = {tuple(block_mask.seq_lengths)} but q has "
                         f"{q.shape[2]} positions and k {k.shape[2]}; create it for these lengths")
    bm, hm = block_mask.kv_num_blocks.shape[:2]
    if bm not in (1, q.shape[0]) or hm not in (1, q.shape[1]):
        raise ValueError(f"block_mask has batch x heads {bm} x {hm}, which does not broadcast to q's "
                         f"{q.shape[0]} x {q.shape[1]}")
    if block_mask.kv_num_blocks.device != q.device:
        raise ValueError(f"block_mask is on {block_mask.kv_num_blocks.device} but q is on {q.device}")
    return block_mask.mask_mod


def _all_blocks(block_mask) -> bool:
    """Whether a noop block mask lists every block as full (the usual "no mask")."""
    rows, cols = block_mask.kv_indices.shape[-2:]
    full = block_mask.full_kv_num_blocks
    listed = block_mask.kv_num_blocks if full is None else block_mask.kv_num_blocks + full
    return bool((listed == cols).all()) if rows else True


def _block_list_mask(block_mask) -> Callable:
    """A mask_mod reading a block mask's block matrix (block lists without a mask_mod)."""
    dense = block_mask.to_dense().to(torch.bool)  # (B, H, q blocks, kv blocks)
    bq, bkv = block_mask.BLOCK_SIZE

    def block_listed(b, h, q_idx, kv_idx):
        return dense[b if dense.shape[0] > 1 else 0, h if dense.shape[1] > 1 else 0, q_idx // bq, kv_idx // bkv]

    return block_listed


def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   score_mod: Callable | None = None, block_mask=None, scale: float | None = None,
                   enable_gqa: bool = False, return_lse: bool = False):
    """FlexAttention's ``flex_attention`` on attngen's kernels (see the module's docstring).

    query (B, Hq, L, E), key (B, Hkv, S, E), value (B, Hkv, S, Ev); returns (B, Hq, L, Ev), and
    the natural-log log-sum-exp (B, Hq, L) in float32 with ``return_lse=True``. ``enable_gqa``
    must be True when Hq != Hkv, as in FlexAttention.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"flex_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"flex_attention: {name} must be 4-D (B, H, L, E), got shape {tuple(t.shape)}")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"flex_attention: enable_gqa must be a bool, got {enable_gqa!r}")
    if not enable_gqa and query.shape[1] != key.shape[1]:
        raise ValueError(f"flex_attention: query has {query.shape[1]} heads and key/value {key.shape[1]}; "
                         "pass enable_gqa=True for grouped-query attention")
    if score_mod is not None and not callable(score_mod):
        raise TypeError(f"flex_attention: score_mod must be a function, got {type(score_mod).__name__}")
    mask_mod = _mask_mod_of(block_mask, query, key)
    if torch.compiler.is_compiling() and (mask_mod is _flex.noop_mask or not _has_python_object(score_mod)
                                          or not _has_python_object(mask_mod)):
        return _outside_graph(query, key, value, score_mod, block_mask, mask_mod, scale, return_lse)
    return _attend(query, key, value, score_mod, block_mask, mask_mod, scale, return_lse)


def _attend(query, key, value, score_mod, block_mask, mask_mod, scale, return_lse):
    if mask_mod is _flex.noop_mask:  # block lists without a mask_mod: read on the host
        mask_mod = None if _all_blocks(block_mask) else _block_list_mask(block_mask)
    entry = _ENTRIES[_lookup(score_mod, mask_mod)]
    return entry.kernel.call_with_captures(_captured(entry, score_mod, mask_mod), query, key, value,
                                           scale=scale, return_lse=return_lse)


def _has_python_object(fn: Callable | None) -> bool:
    """False for a function that Dynamo created in the graph (it has no ``__closure__``
    there): its Python object, and so its trace, does not exist while compiling."""
    if fn is None:
        return True
    try:
        fn.__closure__  # noqa: B018 - an AttributeError under Dynamo is the answer
    except AttributeError:
        return False
    return True


@torch.compiler.disable(reason="attngen.flex_attention: this call needs its mods as Python objects, which it cannot "
                               "have inside the graph: a score_mod or mask_mod created inside the compiled function "
                               "that closes over values of the graph, or a block mask without a mask_mod (its block "
                               "lists are read on the host). Create the mods outside the compiled function, or pass "
                               "block_mask=None for full attention")
def _outside_graph(query, key, value, score_mod, block_mask, mask_mod, scale, return_lse):
    return _attend(query, key, value, score_mod, block_mask, mask_mod, scale, return_lse)


__all__ = ["flex_attention"]
