"""A/B: neighborhood box walks without divisions, and one loop for 2-D/3-D windows.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_walks.py [--rounds N] [--against prev|split]

SASS of the 2-D 31x31 dK/dV pass (session 9, dkdv_na2d_0.sass): each step of its walk derives
the query box from the loop index with divisions by run-time box counts (IABS, MUFU.RCP,
IMAD.HI: ~80 of the loop's 515 instructions) and masks every score four times (window test
per axis, rows past the walk, columns past the grid: 64 FSEL for 16 scores per thread). The
forward and dQ walks divide likewise, and their shell (most of a 2-D window's boxes) goes
through the six-slab decomposition. Changed: every walk advances a counter with carries
(_na_next_box); dK/dV moves the windows of rows past the walk off the grid and drops the
column test (those rows of dK/dV are never stored), so the window test alone masks; forward
and dQ walk every box with the window test in one loop on 2-D/3-D windows (FULL_BOXES off).

--against prev: "old" is the module generated at 4529135 (ab_na_walks_prev.py.gz in
results/2026-11-24-h100-session9/experiments/; every case's module differs only in its name).
--against split: "old" is today's module with FULL_BOXES forced on (full boxes first, then
the shell), to isolate the one-loop walk. Forward and fwd+bwd, interleaved rounds, H100 bf16
B=1 H=16 D=128.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rewritten import neighborhood_ab, replace_once, saved_module  # noqa: E402 (this folder)

CASES = {"2-D 128x128 k31x31": ((128, 128), (31, 31)), "3-D 16x32x32 k7x15x15": ((16, 32, 32), (7, 15, 15)),
         "1-D 32768 k2047": ((32768,), (2047,)),
         "blocked 3-D k=s=8x16x16": ((16, 32, 32), (8, 16, 16), (8, 16, 16)),
         "GNA 2-D k32 s16": ((128, 128), (32, 32), (16, 16)),
         "blocked 2-D k=s=16x16": ((128, 128), (16, 16), (16, 16))}
PREV = (Path(__file__).resolve().parents[1] / "results" / "2026-11-24-h100-session9" / "experiments"
        / "ab_na_walks_prev.py.gz")


def previous_module(old, _shape, _name):
    """The module generated at 4529135, renamed, its launches passing the constexprs it knows."""
    text = saved_module(PREV, "na_prev_0", old)
    for plan in ("tiles", "q_tiles"):
        text = replace_once(text, f"**{plan}.constexprs(),",
                            f"**{{k: v for k, v in {plan}.constexprs().items() if k != 'FULL_BOXES'}},")
    return lambda _source: text


def split_walk(_old, _shape, _name):
    def edit(source: str) -> str:
        for plan in ("tiles", "q_tiles"):
            source = replace_once(source, f"**{plan}.constexprs(),", f"**{{**{plan}.constexprs(), 'FULL_BOXES': True}},")
        return source
    return edit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--against", choices=("prev", "split"), default="prev")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all, or the 2-D/3-D "
                                                  "windows with --against split)")
    args = ap.parse_args()
    if args.cases:
        cases = {k: CASES[k] for k in args.cases.split(",")}
    elif args.against == "split":
        cases = {k: v for k, v in CASES.items() if k.startswith(("2-D", "3-D"))}
    else:
        cases = CASES
    if args.against == "prev":
        neighborhood_ab(cases, previous_module, ("walks (new)", "4529135 (old)"), args.rounds, forward=True)
    else:
        neighborhood_ab(cases, split_walk, ("single loop (new)", "split (old)"), args.rounds, forward=True)


if __name__ == "__main__":
    main()
