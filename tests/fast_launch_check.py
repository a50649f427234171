"""Launch generated kernels through Triton and through runtime/fast_launch.py without a GPU,
and compare what reaches the C launcher. The CPU suite's check of the fast path: for every
call, the same compiled kernel, grid, stream, hooks and arguments in the same order.

It runs as its own process (``python fast_launch_check.py``), since the test process
interprets Triton kernels (TRITON_INTERPRET=1) and the fast path serves compiled ones. A
stand-in driver names an sm90 target (kernels compile for it on the CPU, ptxas included), and
the compiled kernels' launcher is replaced by a recorder. CPU tensors stand in for CUDA ones:
the launch path only reads their dtypes and addresses. Prints one JSON object: check -> result.
Covered: the softmax forward and backward, decoding, and linear attention's forward and step.
"""
from __future__ import annotations

import json
import os

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton.compiler.compiler as triton_compiler  # noqa: E402

import attngen as ag  # noqa: E402
from attngen.runtime.config import KernelConfig  # noqa: E402
from attngen.runtime.decode_config import DecodeConfig  # noqa: E402
from attngen.runtime.linear import LinearConfig  # noqa: E402
from attngen.runtime.fast_launch import fast  # noqa: E402
import offline_sm90  # noqa: E402

LAUNCHES: list[tuple] = []  # what reached the C launcher: (compiled kernel, its arguments)


def recording_handles(self):
    if getattr(self, "_run", None) is None:
        self._run = lambda *args, compiled=self: LAUNCHES.append((compiled, args))
        self.function, self.module, self.n_regs, self.n_spills = 11, 0, 0, 0


def same(a: tuple, b: tuple, fresh: bool = False) -> bool:
    """One launch each: the same compiled kernel, and arguments equal. Tensors are the same
    object, or with ``fresh`` (buffers the launcher allocates on every call) the same dtype,
    shape and strides."""
    (ka, xa), (kb, xb) = a, b
    if ka is not kb or len(xa) != len(xb):
        return False
    for i, (u, w) in enumerate(zip(xa, xb)):
        if i == 6:  # launch metadata: rebuilt on every launch, compared by content
            if (u is None) != (w is None) or (u is not None and dict(u.get()) != dict(w.get())):
                return False
        elif isinstance(u, torch.Tensor) or isinstance(w, torch.Tensor):
            if not (isinstance(u, torch.Tensor) and isinstance(w, torch.Tensor)):
                return False
            if u is not w and not (fresh and (u.dtype, u.shape, u.stride()) == (w.dtype, w.shape, w.stride())):
                return False
        elif u != w:
            return False
    return True


def twice(launch) -> tuple[tuple, tuple, int]:
    """``launch(wrap)`` through Triton, then twice through the fast path (a miss, then a hit):
    the Triton launches and the fast path's second, and the launches each made."""
    LAUNCHES.clear()
    launch(None)
    plain = list(LAUNCHES)
    LAUNCHES.clear()
    launch(fast)
    LAUNCHES.clear()
    launch(fast)
    return plain, list(LAUNCHES), len(plain)


def main() -> None:
    offline_sm90.activate()
    triton_compiler.CompiledKernel._init_handles = recording_handles
    found = {}
    bf16 = dict(dtype=torch.bfloat16)

    sinks = ag.compile(ag.Variant(mask=ag.sliding_window(31), norm=ag.softmax(sink=True), name="fast_sinks"))
    module = sinks.module(torch.device("cuda"))  # the compiled (not interpreted) module
    q, k, v = (torch.randn(1, 4, 128, 64, **bf16) for _ in range(3))
    out, lse = torch.empty_like(q), torch.empty(1, 4, 128)
    tensors = {"sinks": torch.randn(4)}
    config = KernelConfig(64, 64, 4, 2)

    def forward(wrap, q=q):
        module.launch_forward(q, k, v, out, lse, 0.125, tensors, None, config, wrap=wrap)

    plain, hit, n = twice(forward)
    found["forward: one launch, the same as Triton's"] = n == 1 and len(hit) == 1 and same(plain[0], hit[0])

    # new tensors of the same layout: the entry serves them, with the new tensors in place
    q2 = torch.randn(1, 4, 128, 64, **bf16)
    LAUNCHES.clear()
    forward(None, q2)
    plain2 = list(LAUNCHES)
    LAUNCHES.clear()
    forward(fast, q2)
    found["new tensors reuse the entry"] = len(LAUNCHES) == 1 and same(plain2[0], LAUNCHES[0])

    # an address that is not 16-byte aligned is another specialization: a new compile
    q_odd = torch.randn(1 * 4 * 128 * 64 + 1, **bf16)[1:].view(1, 4, 128, 64)
    LAUNCHES.clear()
    forward(None, q_odd)
    plain_odd = list(LAUNCHES)
    LAUNCHES.clear()
    forward(fast, q_odd)
    forward(fast, q_odd)
    found["misaligned q: its own kernel, as Triton picks"] = (
        len(LAUNCHES) == 2 and same(plain_odd[0], LAUNCHES[1]) and plain_odd[0][0] is not plain[0][0])

    # another length: other strides and sizes, so another entry (and whatever Triton binds them to)
    q96, k96, v96 = (torch.randn(1, 4, 96, 64, **bf16) for _ in range(3))
    out96, lse96 = torch.empty_like(q96), torch.empty(1, 4, 96)

    def forward96(wrap):
        module.launch_forward(q96, k96, v96, out96, lse96, 0.125, tensors, None, config, wrap=wrap)

    plain, hit, n = twice(forward96)
    found["another length: its own entry, the same as Triton's"] = n == 1 and len(hit) == 1 and same(plain[0], hit[0])

    dout = torch.randn_like(q)
    grads = {"sinks": torch.zeros(4)}
    pair = (KernelConfig(64, 32, 4, 2), KernelConfig(32, 64, 4, 2))

    def backward(wrap):
        module.launch_backward(q, k, v, out, lse, dout, None, 0.125, tensors, grads, pair, (None, None), wrap=wrap)

    plain, hit, n = twice(backward)
    found["backward: three launches, the same as Triton's"] = (
        n == 3 and len(hit) == 3 and all(same(a, b, fresh=True) for a, b in zip(plain, hit)))

    causal = ag.compile(ag.Variant(mask=ag.causal(), name="fast_decode"))
    dmodule = causal.module(torch.device("cuda"))
    qd = torch.randn(2, 8, 1, 64, **bf16)
    kd, vd = (torch.randn(2, 2, 256, 64, **bf16) for _ in range(2))
    lens = torch.tensor([256, 100], dtype=torch.int32)
    od, lsed = torch.empty_like(qd), torch.empty(2, 8, 1)
    part, part_lse = torch.empty(2, 8, 1, 4, 64), torch.empty(2, 8, 1, 4)

    def decode(wrap):
        dmodule.launch_decode(qd, kd, vd, od, lsed, part, part_lse, lens, None, 0.125, {},
                              DecodeConfig(16, 64, 4, 3, 4), wrap=wrap)

    plain, hit, n = twice(decode)
    found["decode: one launch, the same as Triton's"] = (
        n == 1 and len(hit) == 1 and same(plain[0], hit[0], fresh=True))  # the counters are the launcher's
    linear = ag.compile(ag.Variant(mask=ag.causal(), norm=ag.linear("elu1", decay=True), name="fast_linear"))
    lmodule = linear.module(torch.device("cuda"))
    ql, kl, vl = (torch.randn(1, 2, 64, 32, **bf16) for _ in range(3))
    ol, den, decay = torch.empty_like(ql), torch.empty(1, 2, 64), -torch.rand(2)

    def linear_forward(wrap):
        lmodule.launch_forward(ql, kl, vl, ol, den, decay, LinearConfig(chunk=32), wrap=wrap)

    plain, hit, n = twice(linear_forward)
    found["linear forward: one launch, the same as Triton's"] = n == 1 and len(hit) == 1 and same(plain[0], hit[0])
    state, k_sum = torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32)
    q1, k1, v1 = (t[:, :, :1] for t in (ql, kl, vl))

    def step(wrap):
        lmodule.launch_step(q1, k1, v1, ol[:, :, :1], state, k_sum, torch.empty_like(k_sum), decay, 32, wrap=wrap)

    plain, hit, n = twice(step)
    found["linear step: one launch, the same as Triton's"] = (
        n == 1 and len(hit) == 1 and same(plain[0], hit[0], fresh=True))
    print(json.dumps(found))


if __name__ == "__main__":
    main()
