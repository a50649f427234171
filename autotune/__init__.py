"""Shipped tuning defaults per GPU family (data only; the tuner is ``attngen.autotune``).

Installed wheels carry this folder as ``attngen.autotune_records``."""
