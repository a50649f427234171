"""Relaunching a Triton kernel without Triton's per-call binding.

``kernel[grid](*args, **kwargs)`` runs about twenty microseconds of Python in
``JITFunction.run`` before the C launcher: it binds every argument by name, asks the native
specializer about each one, builds the options' cache key, reads the runtime knobs and
checks the kernel's globals (2-core CPU machine, Triton 3.9, C launch stubbed: 20 us of a
forward's launch, 4 such launches a forward+backward; benchmarks/NOTES.md, 2026-12-08).
Decoding at batch 1 and small training steps spend more host time than GPU time, so this is
where their time goes.

``FastLaunch(kernel)[grid](*args, **kwargs)`` does what Triton does once per distinct call
and remembers the compiled kernel that launch used. The key is everything Triton's
specialization can depend on, computed without binding: the exact value of every argument
that is not a tensor (ints, floats, bools, constexprs, launch options), each tensor's dtype
and whether its address is 16-byte aligned, the device and the knobs Triton folds into its
options. Two calls with one key bind to the same specialization, so a later call with that
key hands its arguments straight to the compiled kernel's C launcher, in the order
``JITFunction.run`` passes them, with the stream and launch hooks Triton would use.

What falls back to the plain launch: a callable grid, a kernel with pre-run hooks, and every
first call of a key (which also compiles). ``ATTNGEN_FAST_LAUNCH=0`` turns the cache off.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
from triton import knobs
from triton.runtime import driver

from .loader import interpreter_active

_MAX_KEYS = 256  # distinct calls remembered per kernel (shapes that keep changing: a bounded memo)


def fast_launch_enabled() -> bool:
    return os.environ.get("ATTNGEN_FAST_LAUNCH", "1").strip() not in ("0", "")


class FastLaunch:
    """``kernel[grid](...)`` that skips Triton's binding on calls it has seen (module docstring)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.params = kernel.params
        self.tensors: tuple[int, ...] = ()  # positions of the tensor arguments, as the last miss had them
        self.entries: dict[tuple, tuple] = {}

    def __getitem__(self, grid) -> Callable[..., None]:
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def _key(self, args: tuple, kwargs: dict) -> tuple:
        """A tensor (at ``self.tensors``) enters as its dtype and whether its address is 16-byte
        aligned, anything else as its value; a tensor elsewhere makes the key miss."""
        parts = list(args)
        for i in self.tensors:
            t = parts[i]
            parts[i] = (t.dtype, t.data_ptr() % 16 == 0)
        return (driver.active.get_current_device(), knobs.runtime.debug,
                getattr(knobs.compilation, "instrumentation_mode", None), tuple(parts), tuple(kwargs.items()))

    def launch(self, grid, args: tuple, kwargs: dict) -> None:
        if callable(grid) or self.kernel.pre_run_hooks:
            self.kernel[grid](*args, **kwargs)
            return
        try:
            key = self._key(args, kwargs)
            entry = self.entries.get(key)
        except (AttributeError, TypeError, RuntimeError):  # no tensor where the last calls had one; unhashable
            entry = None
        if entry is None:
            self._launch_and_remember(grid, args, kwargs)
            return
        compiled, values, tensors = entry
        values = list(values)
        for i in tensors:
            values[i] = args[i]
        stream = driver.active.get_current_stream(key[0])
        grid_1 = grid[1] if len(grid) > 1 else 1
        grid_2 = grid[2] if len(grid) > 2 else 1
        compiled.run(grid[0], grid_1, grid_2, stream, compiled.function, compiled.packed_metadata,
                     compiled.launch_metadata(grid, stream, *values), knobs.runtime.launch_enter_hook,
                     knobs.runtime.launch_exit_hook, *values)

    def _launch_and_remember(self, grid, args: tuple, kwargs: dict) -> None:
        """Triton's own launch (binding, and compiling a new specialization), then an entry for
        calls with this key: the compiled kernel and every parameter's value in the order
        JITFunction.run hands them to it, tensors left out (the entry keeps none alive)."""
        compiled = self.kernel[grid](*args, **kwargs)
        if hasattr(compiled, "result"):  # an asynchronous compile's future
            compiled = compiled.result()
        if compiled is None or any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            return
        tensors = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        if tensors != self.tensors or len(self.entries) >= _MAX_KEYS:
            self.tensors = tensors
            self.entries.clear()  # keys are comparable only at the same tensor positions
        values = list(args)
        for p in self.params[len(args):]:
            values.append(kwargs[p.name] if p.name in kwargs else p._param.default)
        for i in tensors:
            values[i] = None
        try:
            key = self._key(args, kwargs)
        except TypeError:  # an argument that cannot be a key (unhashable): such calls take Triton's path
            return
        self.entries[key] = (compiled, values, tensors)


_LAUNCHERS: dict[int, FastLaunch] = {}


def fast(kernel: Any) -> FastLaunch:
    """The FastLaunch of ``kernel`` (one per kernel object for the process): the ``wrap`` the
    generated launchers take for eager CUDA launches."""
    found = _LAUNCHERS.get(id(kernel))
    if found is None or found.kernel is not kernel:
        found = _LAUNCHERS[id(kernel)] = FastLaunch(kernel)
    return found


def launch_wrap(device: torch.device):
    """The launchers' ``wrap`` for an eager call on ``device``: ``fast`` on CUDA (unless
    ATTNGEN_FAST_LAUNCH=0), None (Triton's launch) for the interpreter."""
    if device.type == "cuda" and not interpreter_active() and fast_launch_enabled():
        return fast
    return None
