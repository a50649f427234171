"""Pass: pick the kernel algorithm that implements the variant's normalization."""
from __future__ import annotations

from ..ir.kernel import KernelIR
from ..ir.nodes import Causal, Linear, Sigmoid, Softmax
from .errors import UnsupportedVariant
from .pipeline import compiler_pass

ONLINE_SOFTMAX = "online_softmax"
SIGMOID = "sigmoid"
CHUNKED_LINEAR = "chunked_linear"


def _lower_linear(ir: KernelIR) -> KernelIR:
    """Linear attention (SEMANTICS.md ``linear``) has no score and only two key sets (all
    keys, or keys j <= i), which is what lets a chunked recurrence replace the score
    matrix; anything else cannot be expressed by it and is refused here, before codegen."""
    where = f"variant '{ir.name}': linear attention"
    if ir.score is not None:
        raise UnsupportedVariant(f"{where} takes no score_mod (phi(q).phi(k) is used unscaled and unmodified); "
                                 f"remove score_mod '{ir.score_name}'")
    if ir.mask is not None and not isinstance(ir.mask, Causal):
        raise UnsupportedVariant(f"{where} allows only no mask or ag.causal(), got {type(ir.mask).__name__} "
                                 "(a causal mask_mod must be written as ag.causal())")
    if ir.norm.decay and ir.mask is None:
        raise UnsupportedVariant(f"{where} with decay=True needs mask=ag.causal(): the decay "
                                 "exp(decay_log * (i - j)) is defined for keys j <= i only")
    return ir.replace(algorithm=CHUNKED_LINEAR)


@compiler_pass(provides=("algorithm",))
def lower_normalization(ir: KernelIR) -> KernelIR:
    """Pick the kernel's normalization stage.

    Softmax (with or without sinks) -> online softmax with exp2 and a running max
    (FlashAttention-2 style); sinks join the denominator once, after the KV loop.
    Sigmoid -> an element-wise weight, with no running max, rescaling or row sum
    (FlashSigmoid). Linear -> chunked linear attention (intra-chunk products, a recurrent
    state across chunks).
    """
    norm = ir.norm
    if isinstance(norm, Softmax):
        return ir.replace(algorithm=ONLINE_SOFTMAX)
    if isinstance(norm, Sigmoid):
        return ir.replace(algorithm=SIGMOID)
    if isinstance(norm, Linear):
        return _lower_linear(ir)
    raise UnsupportedVariant(f"variant '{ir.name}': normalization {norm!r} is not supported")
