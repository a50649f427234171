"""A stand-in Triton driver for the CPU suite's checks of compiled (not interpreted) kernels:
it names an sm90 target, which is all that lowering a kernel to TTIR, PTX or a cubin asks of a
driver (ptxas ships with Triton), plus the device and stream a launch path reads. Used by the
helper processes tests/inductor_trace.py and tests/fast_launch_check.py, which set
TRITON_INTERPRET=0 before importing Triton."""
from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget


class Hopper:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 7  # any handle: nothing is launched


def activate() -> None:
    triton.runtime.driver.set_active(Hopper())
