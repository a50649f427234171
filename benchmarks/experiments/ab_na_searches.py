"""A/B: the neighborhood dK/dV pass without binary searches on leading axes of size 1.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_searches.py [--rounds N]

Each dK/dV program finds, per axis, the query positions whose windows reach (and, on 1-D
grids, contain) its KV box by binary searches of as many halvings as the longest axis needs.
They ran on every axis, the 1-D case's two size-1 leading axes included: 4 searches x 3 axes x
17 halvings per program, uniform scalar code that all 8 warps execute. The generated kernel
now skips the size-1 axes (FIRST_AXIS) and sizes each axis's searches to that axis. The "old"
module is the same source with the skips turned off and the longest axis's halvings on every
axis (the earlier behaviour). Forward+backward, interleaved rounds, H100 bf16 B=1 H=16 D=128.
"""
from __future__ import annotations

import argparse

from rewritten import neighborhood_ab  # noqa: E402 (this folder)

CASES = {"1-D 32768 k2047": ((32768,), (2047,)), "2-D 128x128 k31x31": ((128, 128), (31, 31)),
         "3-D 16x32x32 k7x15x15": ((16, 32, 32), (7, 15, 15))}


def searches_everywhere(name: str, longest: int):
    def edit(source: str) -> str:
        start = source.index(f"def {name}_bwd_dkdv(")
        end = source.index("@triton.jit", start)
        body = source[start:end]
        assert body.count("if FIRST_AXIS <= 0:") == 2 and body.count("if FIRST_AXIS <= 1:") == 2, \
            "generated dK/dV pass changed: update the experiment"
        body = body.replace("if FIRST_AXIS <= 0:", "if True:").replace("if FIRST_AXIS <= 1:", "if True:")
        for axis in range(3):
            body = body.replace(f"SEARCH_STEPS{axis})", f"{longest})")
        return source[:start] + body + source[end:]
    return edit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    neighborhood_ab(CASES, lambda old, shape: searches_everywhere(old.ir.name, max(shape).bit_length() + 1),
                    ("skips (new)", "searches all (old)"), args.rounds)


if __name__ == "__main__":
    main()
