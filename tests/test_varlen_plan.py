"""The closed-form tile plans of varlen batches (runtime/varlen_plan.py) against the packed
mask materialized: every kept (row, key) pair lies in a visited tile, full tiles keep every
pair of their valid rows, exact spans are each row's first and last kept key and its count;
the same for the transposed (dK/dV) plan. No kernels run: the plans are torch code."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE

import attngen as ag
from attngen.passes.varlen import varlen_variant
from attngen.runtime.varlen_plan import SequenceBands, sequence_ids


def packed_mask(lens_q, lens_k, keep) -> torch.Tensor:
    """(total_q, total_k) bool: keep(p, j, lq, lk) inside each sequence, False across sequences."""
    mask = torch.zeros(sum(lens_q), sum(lens_k), dtype=torch.bool)
    a = c = 0
    for lq, lk in zip(lens_q, lens_k):
        i = torch.arange(lq)[:, None]
        j = torch.arange(lk)[None, :]
        mask[a:a + lq, c:c + lk] = keep(i, j, lq, lk)
        a, c = a + lq, c + lk
    return mask


def check_plan(plan, mask: torch.Tensor, rows: int, cols: int, exact: bool) -> None:
    n_rows, n_cols = mask.shape
    kinds = plan.kinds()[0, 0].cpu()
    for t in range(kinds.shape[0]):
        block = mask[t * rows:(t + 1) * rows]
        for c in range(-(-n_cols // cols)):
            tile = block[:, c * cols:(c + 1) * cols]
            if tile.any():
                assert kinds[t, c] > 0, f"row tile {t}: column tile {c} keeps pairs but is not visited"
            if kinds[t, c] == 2:
                assert tile.all() and tile.shape[1] == cols, f"row tile {t}: column tile {c} is not full"
    if exact:
        first, last, count = plan.spans[0, 0].long().cpu()
        kept = mask.sum(1)
        cols_idx = torch.arange(n_cols)
        assert torch.equal(count, kept)
        has = kept > 0
        assert torch.equal(first[has], torch.where(mask, cols_idx, n_cols).amin(1)[has])
        assert torch.equal(last[has], torch.where(mask, cols_idx, -1).amax(1)[has])
        assert (first[~has] == n_cols).all() and (last[~has] == -1).all()
    else:
        assert plan.spans is None and not plan.spans_exact
        assert (kinds < 2).all(), "a mask beyond the band leaves no tile known to be full"


CASES = {  # variant, predicate inside one sequence (p: query position, j: key position)
    "causal": (ag.Variant(mask=ag.causal()), lambda i, j, lq, lk: j <= i),
    "causal_bottom_right": (ag.Variant(mask=ag.causal(bottom_right=True)), lambda i, j, lq, lk: j <= i + lk - lq),
    "window": (ag.Variant(mask=ag.sliding_window(5, 3)), lambda i, j, lq, lk: (j >= i - 5) & (j <= i + 3)),
    "dense": (ag.Variant(), lambda i, j, lq, lk: torch.ones_like(i + j, dtype=torch.bool)),
    "band_and_mod": (ag.Variant(mask=ag.causal() & ag.mask_mod(lambda b, h, q, kv: (q + kv) % 3 != 0)),
                     lambda i, j, lq, lk: j <= i),  # the band bounds it; the kernel tests the rest
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tiles", [(16, 16), (32, 16), (16, 64)])
def test_plans_cover_the_packed_mask(case, tiles):
    variant, keep = CASES[case]
    rewrite = varlen_variant(variant)
    gen = torch.Generator().manual_seed(hash((case, tiles)) % 2 ** 31)
    lens_q = torch.randint(0, 50, (7,), generator=gen).tolist() + [0, 33]
    lens_k = lens_q if case != "causal_bottom_right" else torch.randint(0, 50, (9,), generator=gen).tolist()
    if case == "dense":
        lens_k = torch.randint(0, 50, (9,), generator=gen).tolist()
    cu_q, cu_k = (torch.tensor([0] + list(torch.tensor(x).cumsum(0)), dtype=torch.int32, device=DEVICE)
                  for x in (lens_q, lens_k))
    total_q, total_k = sum(lens_q), sum(lens_k)
    bands = SequenceBands.build(rewrite.band, rewrite.exact, cu_q, cu_k, sequence_ids(cu_q, total_q),
                                total_q, total_k)
    rows, cols = tiles
    mask = packed_mask(lens_q, lens_k, keep)
    plan = bands.row_plan(rows, cols, heads=2)
    check_plan(plan, mask, rows, cols, rewrite.exact)
    check_plan(plan.transposed(), mask.T, cols, rows, rewrite.exact)


def test_sequence_ids_skip_empty_sequences():
    cu = torch.tensor([0, 3, 3, 5, 5], dtype=torch.int32, device=DEVICE)
    assert sequence_ids(cu, 5).tolist() == [0, 0, 0, 2, 2]
