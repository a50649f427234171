"""attngen: declared attention variants compiled to fused, cached Triton kernels."""
from __future__ import annotations

from ._version import __version__  # noqa: F401 - re-exported

import os as _os
import sys as _sys

import torch as _torch

# Without a GPU, kernels run under the Triton interpreter, which must be chosen before
# triton.language is first imported (see runtime/loader.py).
if "triton.language" not in _sys.modules and not _torch.cuda.is_available():
    _os.environ.setdefault("TRITON_INTERPRET", "1")

from .frontend.trace import TraceError, mask_mod, score_mod
from .ir.nodes import (AndMask, Causal, Document, Linear, Mask, MaskMod, Neighborhood, NotMask, OrMask, ScoreMod, Sigmoid,
                       SlidingWindow, Softmax, TensorParam, Variant)
from .ir.text import IRSyntaxError, load, loads


def causal(bottom_right: bool = False) -> Causal:
    """Causal mask: ``j <= i`` (or ``j <= i + Lkv - Lq`` with ``bottom_right=True``)."""
    if not isinstance(bottom_right, bool):
        raise TypeError(f"causal: bottom_right must be a bool, got {bottom_right!r}")
    return Causal(bottom_right)


def sliding_window(left: int, right: int = 0) -> SlidingWindow:
    """Band mask ``i - left <= j <= i + right`` (a causal window of W tokens is left=W-1)."""
    return SlidingWindow(left, right)


def document() -> Document:
    """Same-document mask over the runtime tensor ``document_ids`` of shape (B, L)."""
    return Document()


def neighborhood(kernel_size: int | tuple[int, ...], dilation: int | tuple[int, ...] = 1,
                 stride: int | tuple[int, ...] = 1, is_causal: bool | tuple[bool, ...] = False) -> Neighborhood:
    """NATTEN's neighborhood attention over a grid given at call time (``spatial_shape=``).

    Each argument is one value for every axis or a tuple per axis (rank 1-3); see
    SEMANTICS.md for the per-axis window rule (borders shift the window inward, dilation
    groups, stride groups, causal axes).
    """
    return Neighborhood(kernel_size, dilation, stride, is_causal)


def softmax(sink: bool = False) -> Softmax:
    """Softmax normalization; ``sink=True`` adds the runtime per-head logits ``sinks`` (Hq,)."""
    if not isinstance(sink, bool):
        raise TypeError(f"softmax: sink must be a bool, got {sink!r}")
    return Softmax(sink)


def sigmoid(bias: float | None = None) -> Sigmoid:
    """Sigmoid attention ``sigmoid(s + bias)``; bias None means ``-ln(Lkv)``."""
    if bias is not None and (isinstance(bias, bool) or not isinstance(bias, (int, float))):
        raise TypeError(f"sigmoid: bias must be a number or None, got {bias!r}")
    return Sigmoid(None if bias is None else float(bias))


def linear(feature_map: str = "elu1", decay: bool = False, normalize: bool = True) -> Linear:
    """Linear attention with feature map identity/elu1/relu, optional decay and normalizer."""
    return Linear(feature_map, decay, normalize)


from .compiler import compile, load_compiled  # noqa: E402,A001 - ag.compile is the public name
from .passes import UnsupportedVariant  # noqa: E402
from .natten import na1d, na2d, na3d  # noqa: E402
from .flex import flex_attention  # noqa: E402
from .varlen import varlen_attention  # noqa: E402
from .runtime.linear_state import LinearState  # noqa: E402
from .reference import reference  # noqa: E402
from .runtime.attention import CompiledAttention  # noqa: E402
from .runtime.config import KernelConfig  # noqa: E402
from .runtime.decode_config import DecodeConfig  # noqa: E402
from .runtime.paged import paged_append  # noqa: E402
from .runtime.linear import CompiledLinearAttention, LinearConfig  # noqa: E402

__all__ = [
    "AndMask", "Causal", "CompiledAttention", "Document", "IRSyntaxError", "KernelConfig", "Linear", "Mask",
    "CompiledLinearAttention", "LinearConfig",
    "DecodeConfig", "paged_append",
    "MaskMod", "Neighborhood", "NotMask", "OrMask", "ScoreMod", "Sigmoid", "SlidingWindow", "Softmax", "TensorParam", "TraceError",
    "UnsupportedVariant", "Variant", "__version__", "causal", "compile", "document", "flex_attention", "linear", "load",
    "load_compiled", "loads", "mask_mod", "na1d", "na2d", "na3d", "neighborhood", "reference", "score_mod", "sigmoid", "sliding_window", "softmax",
    "varlen_attention", "LinearState",
]
