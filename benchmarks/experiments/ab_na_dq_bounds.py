"""A/B: the neighborhood dQ pass's loads without bounds masks.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_dq_bounds.py [--rounds N]

The dQ pass gathers each KV box with positions clamped into the sequence, yet loaded K and V
with bounds masks (IN_BOUNDS False); session 4 measured 10% on the dense dK/dV pass from
dropping such masks. The generated module now loads unmasked when the head dims are unpadded;
the "masked" module here is the same source with that flag forced off (the earlier behaviour).
Forward+backward (torch.autograd.grad), interleaved rounds, H100 bf16 B=1 H=16 D=128.
"""
from __future__ import annotations

import argparse

from rewritten import neighborhood_ab, replace_once  # noqa: E402 (this folder)

CASES = {"2-D 128x128 k31x31": ((128, 128), (31, 31)), "1-D 32768 k2047": ((32768,), (2047,)),
         "3-D 16x32x32 k7x15x15": ((16, 32, 32), (7, 15, 15))}
UNMASKED = "    q_even = dict(EVEN_N=even_dims)\n"
MASKED = "    q_even = dict(EVEN_N=False)\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    neighborhood_ab(CASES, lambda old, shape: (lambda source: replace_once(source, UNMASKED, MASKED)),
                    ("unmasked (new)", "masked (old)"), args.rounds)


if __name__ == "__main__":
    main()
