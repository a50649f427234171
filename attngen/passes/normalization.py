"""Pass: pick the kernel algorithm that implements the variant's normalization."""
from __future__ import annotations

from ..ir.kernel import KernelIR
from ..ir.nodes import Linear, Sigmoid, Softmax
from .pipeline import compiler_pass


class UnsupportedVariant(NotImplementedError):
    """The variant is valid IR but this version of attngen cannot compile it yet."""


@compiler_pass(provides=("algorithm",))
def lower_normalization(ir: KernelIR) -> KernelIR:
    """Pick the kernel's normalization stage.

    Softmax (with or without sinks) -> online softmax with exp2 and a running max
    (FlashAttention-2 style); sinks join the denominator once, after the KV loop.
    Sigmoid -> an element-wise weight, with no running max, rescaling or row sum
    (FlashSigmoid).
    """
    norm = ir.norm
    if isinstance(norm, Softmax):
        return ir.replace(algorithm="online_softmax")
    if isinstance(norm, Sigmoid):
        return ir.replace(algorithm="sigmoid")
    what = "linear attention" if isinstance(norm, Linear) else repr(norm)
    raise UnsupportedVariant(f"variant '{ir.name}': {what} is not compiled yet in this version of attngen "
                             "(softmax and sigmoid are); see the README's feature status")
