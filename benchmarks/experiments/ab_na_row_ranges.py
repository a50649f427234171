"""A/B: the 1-D neighborhood's dK/dV pass walking query rows as aligned ranges.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_row_ranges.py [--rounds N]

SASS of the 1-D case's dK/dV pass (session 8, dkdv_*.sass): its inner loop (no window test) is
517 instructions per step against 408 in causal attention's unmasked loop. Its rows start at the
first reaching query (not a multiple of the tile), so lse and delta load 4 bytes per thread
where causal's load 8, and each step derives its rows from box arithmetic. On a 1-D grid without
dilation the pass now walks rows [start, start + BLOCK_M) from a multiple of BLOCK_M, as the
band's dK/dV does (ROW_RANGES). "old" is the same module with ROW_RANGES=False (the box walk);
fwd+bwd, interleaved rounds, H100 bf16 B=1 H=16 D=128.
"""
from __future__ import annotations


from rewritten import neighborhood_ab_cli, replace_once  # noqa: E402 (this folder)

CASES = {"1-D 32768 k2047": ((32768,), (2047,)), "1-D 16384 k1023": ((16384,), (1023,)),
         "1-D 32768 k4095": ((32768,), (4095,))}


def box_walk(_old, _shape, _name):
    return lambda source: replace_once(source, "ROW_RANGES=kv_tiles.query_rows_are_ranges", "ROW_RANGES=False")


if __name__ == "__main__":
    neighborhood_ab_cli(__doc__, CASES, box_walk, ("row ranges (new)", "box walk (old)"))
