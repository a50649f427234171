"""Pass: pick the kernel algorithm that implements the variant's normalization."""
from __future__ import annotations

from ..ir.kernel import KernelIR
from ..ir.nodes import Linear, Sigmoid, Softmax
from .pipeline import compiler_pass


class UnsupportedVariant(NotImplementedError):
    """The variant is valid IR but this version of attngen cannot compile it yet."""


@compiler_pass(provides=("algorithm",))
def lower_normalization(ir: KernelIR) -> KernelIR:
    """Softmax -> online softmax with exp2 and a running max (FlashAttention-2 style)."""
    norm = ir.norm
    if isinstance(norm, Softmax) and not norm.sink:
        return ir.replace(algorithm="online_softmax")
    what = ("softmax with attention sinks" if isinstance(norm, Softmax) else
            "sigmoid attention" if isinstance(norm, Sigmoid) else
            "linear attention" if isinstance(norm, Linear) else repr(norm))
    raise UnsupportedVariant(f"variant '{ir.name}': {what} is not compiled yet in this version of attngen "
                             "(only softmax is); see the README's feature status")
