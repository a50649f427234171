"""A/B: bounds masks on the shell loads of the 1-D neighborhood's dK/dV row-range walk.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_range_shell_bounds.py [--rounds N]

With ROW_RANGES the shell rows are aligned tiles of the sequence, inside it whenever Lq is a
multiple of BLOCK_M, so their loads could go without bounds masks (the box walk's 1-D shell
kept them: unmasked, clamped rows cost it 5%, session 8). "unmasked" is the generated module
rewritten to load the shell unmasked when the rows are ranges and Lq % BLOCK_M == 0; fwd+bwd,
interleaved rounds, H100 bf16 B=1 H=16 D=128.
"""
from __future__ import annotations


from rewritten import neighborhood_ab_cli, replace_once  # noqa: E402 (this folder)

CASES = {"1-D 32768 k2047": ((32768,), (2047,)), "1-D 16384 k1023": ((16384,), (1023,))}
MASKED = "SHELL_IN_BOUNDS=even_dims and not kv_tiles.inner_query_boxes"
UNMASKED = ("SHELL_IN_BOUNDS=even_dims and (not kv_tiles.inner_query_boxes or "
            "(kv_tiles.query_rows_are_ranges and Lq % kv_cfg.block_m == 0))")


def unmasked_shell(_old, _shape, _name):
    return lambda source: replace_once(source, MASKED, UNMASKED)


if __name__ == "__main__":
    neighborhood_ab_cli(__doc__, CASES, unmasked_shell, ("masked shell (now)", "unmasked shell"))
