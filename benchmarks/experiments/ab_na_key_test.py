"""A/B: the neighborhood dK/dV window test on the key's side.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_key_test.py [--rounds N]

After session 9's walks (ab_na_walks.py), each dK/dV shell step still computed every query
row's window per axis (_na_window: clamps, then bounds) plus the rows' validity and an off-grid
shift, as vector work on every step. The same test taken from the key's side, x in
[first, first + width] with each key's reaching queries found once per program (the keys of a
program are fixed), leaves a step only the rows' positions; positions walked past the last
reaching query fail it without a test of their own. "old" is the module generated at c6cfe32
(ab_na_key_test_prev.py.gz in results/2026-11-24-h100-session9/experiments/; every case's
module differs only in its name). Forward+backward, interleaved rounds, H100 bf16 B=1 H=16 D=128.
"""
from __future__ import annotations

from pathlib import Path

from rewritten import neighborhood_ab_cli, saved_module  # noqa: E402 (this folder)

CASES = {"2-D 128x128 k31x31": ((128, 128), (31, 31)), "3-D 16x32x32 k7x15x15": ((16, 32, 32), (7, 15, 15)),
         "1-D 32768 k2047": ((32768,), (2047,))}
PREV = (Path(__file__).resolve().parents[1] / "results" / "2026-11-24-h100-session9" / "experiments"
        / "ab_na_key_test_prev.py.gz")


def previous_module(old, _shape, _name):
    text = saved_module(PREV, "na_prev_0", old)
    return lambda _source: text


if __name__ == "__main__":
    neighborhood_ab_cli(__doc__, CASES, previous_module, ("keyside test (new)", "c6cfe32 (old)"))
