"""Peer-side helpers shared by the benchmark scripts: one compiled FlexAttention for the
process, BlockMasks at any length, SDPA pinned to one backend, and ALiBi's slopes and
score_mod (written once in FlexAttention's signature, which attngen traces unchanged).

Imports of torch.nn.attention stay inside the functions, so that importing this module
costs nothing on a machine where the peers are never run (CPU smoke runs).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

import attngen as ag  # before triton: without a GPU it selects the Triton interpreter
import triton  # noqa: E402

Tensor = torch.Tensor
Fn = Callable[[], Tensor]

DYNAMO_RECOMPILES = 128  # one compiled flex_attention serves every mask, shape and grad mode of a run
EAGER_BLOCK_MASK_MAX_L = 16384  # above this, create_block_mask is compiled (no L x L temporaries)
SDPA_BACKENDS = ("sdpa_flash", "sdpa_cudnn")

_FLEX: dict[str, Callable] = {}


def raise_dynamo_limits() -> None:
    """Allow a recompile of the one compiled flex_attention per mask, shape and grad mode."""
    import torch._dynamo.config as dcfg

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, name):
            setattr(dcfg, name, max(getattr(dcfg, name), DYNAMO_RECOMPILES))


@contextlib.contextmanager
def environment(name: str, value: str):
    """The environment variable ``name`` set to ``value`` inside, restored after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def graph_launch(mode: str):
    """ATTNGEN_GRAPH_LAUNCH=``mode`` ("op" or "inductor": runtime/graph_launch.py) while
    graphs are traced inside; the variable is read when a call is traced, so a graph keeps
    the launch it was traced with until ``torch._dynamo.reset()``."""
    return environment("ATTNGEN_GRAPH_LAUNCH", mode)


def compiled_flex() -> Callable:
    """``torch.compile(flex_attention, dynamic=False)``, built once per process."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        raise_dynamo_limits()
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def flex_block_mask(mask_mod: Callable, L: int, device: torch.device | str, B: int | None = None):
    """A square BlockMask over ``mask_mod``; B=None broadcasts it over the batch (right when
    the mask does not read per-sequence tensors). Long sequences are built compiled, so that
    no L x L temporaries are materialized; short ones eagerly (PEERS.md: 6-64 ms at 16K)."""
    from torch.nn.attention.flex_attention import create_block_mask

    kwargs = dict(B=B, H=None, Q_LEN=L, KV_LEN=L, device=device)
    if L <= EAGER_BLOCK_MASK_MAX_L:
        return create_block_mask(mask_mod, **kwargs)
    try:
        return create_block_mask(mask_mod, **kwargs, _compile=True)
    except TypeError:  # torch versions without the (deprecated) flag
        return torch.compile(create_block_mask)(mask_mod, **kwargs)


def timed_block_mask(mask_mod: Callable, L: int, device: torch.device | str, B: int | None = None):
    """``flex_block_mask`` and the seconds it took (reported beside Flex's compile time)."""
    start = time.perf_counter()
    mask = flex_block_mask(mask_mod, L, device, B)
    return mask, time.perf_counter() - start


def sdpa_fn(backend_name: str, q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
            scale: float | None = None) -> Fn:
    """SDPA restricted to one kernel ("sdpa_flash" or "sdpa_cudnn"), so that a refusal raises
    instead of silently falling back to another kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]

    def fn() -> Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    return fn


def alibi_slopes(heads: int) -> Tensor:
    """ALiBi's per-head slopes 2^(-8 (h+1) / H), float32 on the CPU."""
    return torch.exp2(-8.0 * torch.arange(1, heads + 1, dtype=torch.float32) / heads)


def alibi_score(score, b, h, q_idx, kv_idx, slopes):
    """ALiBi as a score_mod: attngen reads ``slopes`` as a named runtime tensor; FlexAttention
    gets it through a closure (``lambda s, b, h, q, kv: alibi_score(s, b, h, q, kv, slopes)``)."""
    return score - slopes[h] * abs(q_idx - kv_idx)


def run_environment(device: torch.device, dtype: torch.dtype, commit: str) -> dict[str, Any]:
    """What every results header records: date, device, library versions, commit, dtype."""
    cuda = device.type == "cuda"
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(0) if cuda else "CPU (Triton interpreter)",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "torch": torch.__version__, "triton": triton.__version__, "attngen": ag.__version__,
        "commit": commit, "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "dtype": str(dtype).replace("torch.", ""),
    }


def device_and_dtype(script: str, smoke: bool) -> tuple[torch.device, torch.dtype] | None:
    """bf16 on the GPU; without one, only a ``--smoke`` run, in float32 on the CPU (the
    Triton interpreter computes bf16 dots wrongly). None, after saying why, otherwise."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    if smoke:
        return torch.device("cpu"), torch.float32
    print(f"{script} needs a CUDA GPU (or --smoke)", file=sys.stderr)
    return None
