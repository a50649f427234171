"""A/B: the neighborhood dK/dV shell loop with rows clamped into the grid and unmasked loads.

    PYTHONPATH=.:benchmarks python benchmarks/experiments/ab_na_shell.py [--rounds N]

SASS of the 1-D case's dK/dV pass (dkdv_*.sass): the loop over shell query boxes (window test)
is 1124 instructions per step, the inner loop 517, causal attention's unmasked loop 408. On 2-D
and 3-D grids every step runs the shell loop. Its loads carried bounds masks for rows past the
queries that reach the KV box; those rows are now moved onto the last reaching one (valid grid
positions, loads without masks) and dropped by the mask instead. "old" is the module generated
at fb8fb99 (saved in results/.../experiments/ab_na_shell_old.tar.gz), "new" the current one; fwd+bwd,
interleaved rounds, H100 bf16 B=1 H=16 D=128.

Logs: ab_na_shell_all_unmasked.log (unmasked shell loads on every grid: 1-D 5% slower) and
ab_na_shell.log (1-D keeps the masks, SHELL_IN_BOUNDS; results/2026-11-24-h100-session8/experiments/).
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from rewritten import neighborhood_ab_cli  # noqa: E402 (this folder)

CASES = {"2-D 128x128 k31x31": ((128, 128), (31, 31)), "3-D 16x32x32 k7x15x15": ((16, 32, 32), (7, 15, 15)),
         "1-D 32768 k2047": ((32768,), (2047,))}
OLD = (Path(__file__).resolve().parents[1] / "results" / "2026-11-24-h100-session8" / "experiments"
       / "ab_na_shell_old.tar.gz")


def old_module(old, shape, _name):
    """The module generated at fb8fb99 for this case (from the tarball of the three)."""
    with tarfile.open(OLD) as tar:
        text = tar.extractfile(f"na_shell_old_{len(shape)}d.py").read().decode()
    # the saved modules were generated under the names na_shell_old_<rank>d
    return lambda _source: text.replace(f"na_shell_old_{len(shape)}d", old.ir.name)


if __name__ == "__main__":
    neighborhood_ab_cli(__doc__, CASES, old_module, ("clamped rows (new)", "masked loads (old)"))
