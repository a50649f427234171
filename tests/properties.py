"""Hypothesis profiles for the property tests, chosen by ``ATTNGEN_HYPOTHESIS_PROFILE``.

- ``ci`` (default): ``derandomize=True``, so every CI run draws the same examples (a failure
  reproduces exactly, and the suite's time is stable); example counts sized so that the
  property tests add about three minutes on a 2-core machine under the interpreter.
- ``gpu``: a fresh random seed per run and ``GPU_SCALE`` times as many examples; on a failure
  hypothesis prints the seed and the ``@reproduce_failure`` blob to replay it.

Tests take their counts from ``examples(ci)`` so that one number sizes both profiles; the
older modules' ``helpers.examples`` (fewer examples on the GPU, where each new kernel
compiles in seconds) is unchanged.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("ATTNGEN_HYPOTHESIS_PROFILE", "ci").strip().lower() or "ci"
GPU_SCALE = 8

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("gpu", derandomize=False, **_COMMON)
if PROFILE not in ("ci", "gpu"):
    raise ValueError(f"ATTNGEN_HYPOTHESIS_PROFILE must be 'ci' or 'gpu', got {PROFILE!r}")
settings.load_profile(PROFILE)


def examples(ci: int) -> int:
    """The example count of a property test: ``ci`` in the CI profile, GPU_SCALE times it in
    the gpu profile."""
    return ci * GPU_SCALE if PROFILE == "gpu" else ci
