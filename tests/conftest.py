"""Shared test setup: an isolated kernel cache, poisoned outputs, and the device under test.

Everything here happens at import time, before any test module imports attngen, because
Triton picks interpreter vs. compiled mode when ``triton.language`` is first imported and
attngen reads ``ATTNGEN_CACHE_DIR`` on every compile.

- ``ATTNGEN_TEST_DEVICE`` chooses the device (default: ``cuda`` when available, else ``cpu``).
- ``ATTNGEN_CACHE_DIR`` points at a fresh temporary folder for the whole session (removed at
  the end), so the tests never read or write the user's cache.
- ``ATTNGEN_POISON_OUTPUTS=1`` makes outputs NaN before each launch, so an element the kernel
  forgets to write cannot pass as a plausible value.
- ``ATTNGEN_HYPOTHESIS_PROFILE`` picks the hypothesis profile of the property tests
  (tests/properties.py): ``ci`` (default: a fixed seed, sized for the CPU budget) or ``gpu``
  (a fresh seed and many more examples, for the GPU machine).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

_requested = os.environ.get("ATTNGEN_TEST_DEVICE", "").strip().lower()
if _requested and _requested not in ("cpu", "cuda"):
    raise pytest.UsageError(f"ATTNGEN_TEST_DEVICE must be 'cpu' or 'cuda', got {_requested!r}")
if _requested == "cuda" and not torch.cuda.is_available():
    raise pytest.UsageError("ATTNGEN_TEST_DEVICE=cuda but torch sees no GPU")
_DEVICE = _requested or ("cuda" if torch.cuda.is_available() else "cpu")
os.environ["ATTNGEN_TEST_DEVICE"] = _DEVICE
if _DEVICE == "cpu":
    # CPU tensors run under the Triton interpreter, which must be chosen before
    # triton.language is imported (attngen only does so itself when there is no GPU).
    if "triton.language" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise pytest.UsageError("triton was imported before conftest could set TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"

_CACHE_DIR = tempfile.mkdtemp(prefix="attngen-test-cache-")
os.environ["ATTNGEN_CACHE_DIR"] = _CACHE_DIR
os.environ["ATTNGEN_POISON_OUTPUTS"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test module

import properties  # noqa: E402 - needs the path above; registers and loads the hypothesis profile


def pytest_report_header(config):
    return [f"attngen tests: device={_DEVICE}, ATTNGEN_CACHE_DIR={_CACHE_DIR}"]


def pytest_unconfigure(config):
    """Remove the session's kernel cache (also after --collect-only or an interrupted run)."""
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolation(monkeypatch):
    """Each test starts from the same RNG state and the session cache / poison settings
    (a test that changes them through monkeypatch gets them restored)."""
    torch.manual_seed(0)
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", _CACHE_DIR)
    monkeypatch.setenv("ATTNGEN_POISON_OUTPUTS", "1")
    yield


@pytest.fixture
def device() -> str:
    return _DEVICE
