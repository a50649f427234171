"""Autotuning: search space and pruning (space.py), timing (tuner.py), records and shipped
defaults (records.py), call-time selection (select.py), device names and limits (device.py).

Shipped defaults live in the top-level ``autotune/`` folder (``attngen.autotune_records``
in a wheel); user records in ``<cache>/autotune/`` (see records.py).
"""
from __future__ import annotations

from .device import DeviceLimits, device_limits, device_name, normalize_gpu_name
from .records import lookup_record, record_path, save_record, shape_bucket
from .select import select_config
from .space import SpaceShape, search_space
from .tuner import TuneResult, TuneShape, table, tune

__all__ = ["DeviceLimits", "SpaceShape", "TuneResult", "TuneShape", "device_limits", "device_name", "lookup_record",
           "normalize_gpu_name", "record_path", "save_record", "search_space", "select_config", "shape_bucket",
           "table", "tune"]
