"""Run-time tile lists walked as runs: when every row's tiles are contiguous, the kernels
loop over [lo, full_lo), [full_lo, full_hi), [full_hi, hi) instead of loading each tile's
index (attngen/runtime/tiles.py). The bounds are checked here on hand-made classifications,
and both walks (runs and lists) against the reference, forward and backward."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, check, check_grads, doc_ids

import attngen as ag
from attngen.runtime.tiles import TileLists, contiguous_runs

SMALL = ag.KernelConfig(16, 16, 4, 1)


def kinds(*rows: str) -> torch.Tensor:
    """A (1, 1, rows, columns) classification from strings: '.' empty, 'p' partial, 'F' full."""
    code = {".": 0, "p": 1, "F": 2}
    return torch.tensor([[[[code[c] for c in row] for row in rows]]], dtype=torch.int8)


@pytest.mark.parametrize("row,bounds", [
    (".pFFp.", [1, 2, 4, 5]),
    ("......", [0, 0, 0, 0]),
    ("pp....", [0, 2, 2, 2]),   # no full tile: full_lo = full_hi = hi, one masked range
    ("FFFFFF", [0, 0, 6, 6]),
    ("...FFp", [3, 3, 5, 6]),
    ("p.....", [0, 1, 1, 1]),
])
def test_contiguous_runs_bounds(row, bounds):
    runs, share, _ = contiguous_runs(kinds(row))
    assert runs is not None and runs.dtype == torch.int32 and runs.shape == (1, 1, 1, 4)
    assert runs[0, 0, 0].tolist() == bounds
    visited = sum(c != "." for c in row)
    assert share == pytest.approx(row.count("p") / visited if visited else 1.0)


@pytest.mark.parametrize("rows", [("p.p...",), ("FpF...",), (".FF.F.",), ("pFFp..", "F..F..")],
                         ids=["gap", "full_split", "full_gap", "second_row"])
def test_contiguous_runs_refuses_gaps(rows):
    """One row with a gap (empty tiles between visited ones, or partial ones between full
    ones) sends the whole classification to the lists."""
    assert contiguous_runs(kinds(*rows))[0] is None


@pytest.mark.parametrize("rows,mostly_full", [
    (("FFFp", "FFFF", "FFF."), True),      # 1 partial in 11 visited tiles
    (("pFFp", "FFFF", "pFF."), False),     # 3 in 11: above a quarter
    (("FpF.", "FFFF", "FFFF"), False),     # mostly full, but not runs
])
def test_mostly_full_runs(rows, mostly_full):
    """The backward takes the large tiles for runs with at most a quarter partial tiles."""
    lists = TileLists.empty(1, 1, 1, 1, torch.device("cpu"))
    lists.runs, lists.partial_share, _ = contiguous_runs(kinds(*rows))
    assert lists.mostly_full_runs == mostly_full


def test_kinds_round_trip_and_transposed_runs():
    """kinds() rebuilds the matrix from the lists; the transposed lists get their own runs."""
    kind = kinds("pF..", "pFF.", ".pFF", "..pF")
    lists = TileLists.empty(1, 1, 4, 4, torch.device("cpu"))
    for r in range(4):
        full = [c for c in range(4) if kind[0, 0, r, c] == 2]
        part = [c for c in range(4) if kind[0, 0, r, c] == 1]
        lists.full_count[0, 0, r], lists.partial_count[0, 0, r] = len(full), len(part)
        lists.full_index[0, 0, r, :len(full)] = torch.tensor(full, dtype=torch.int32)
        lists.partial_index[0, 0, r, :len(part)] = torch.tensor(part, dtype=torch.int32)
    assert torch.equal(lists.kinds(), kind)
    assert lists.find_runs().runs[0, 0].tolist() == [[0, 1, 2, 2], [0, 1, 3, 3], [1, 2, 4, 4], [2, 3, 4, 4]]
    t = lists.transposed()
    assert torch.equal(t.kinds(), kind.transpose(2, 3))
    # columns as rows: "pp..", "FFp.", ".FFp", "..FF"
    assert t.runs[0, 0].tolist() == [[0, 2, 2, 2], [0, 0, 2, 3], [1, 1, 3, 4], [2, 2, 4, 4]]


@ag.mask_mod
def _checkerboard(b, h, q_idx, kv_idx):
    return (q_idx // 16 + kv_idx // 16) % 2 == 0  # with 16 x 16 tiles: gaps along rows and columns


def _walk(attn) -> list[bool]:
    """For each classification the call cached: whether the kernels walk it as runs."""
    return [lists.runs is not None for _, lists in attn._tiles._entries.values()]


@pytest.mark.parametrize("mask,tensors,runs", [
    (ag.document() & ag.causal(), lambda: {"document_ids": doc_ids(2, 90, 3)}, True),
    (_checkerboard, dict, False),
], ids=["packed_documents", "gapped_columns"])
def test_both_walks_match_the_reference(mask, tensors, runs):
    attn = ag.compile(ag.Variant(mask=mask))
    bound = tensors()
    check(attn, 2, 2, 2, 90, 90, 32, 32, torch.float32, config=SMALL, **bound)
    assert _walk(attn) == [runs]
    check_grads(attn, 2, 2, 2, 90, 90, 32, 32, torch.float32, config=SMALL, **bound)
    if DEVICE == "cpu":
        # the backward's own classifications (dQ's lists, dK/dV's transposed ones) walk the
        # same way here; on a GPU the backward's wider tiles see every checkerboard tile as
        # partial, and so as one run
        assert set(_walk(attn)) == {runs}
        for _, lists in attn._tiles._entries.values():
            if lists._transposed is not None:
                assert (lists._transposed.runs is not None) == runs


def test_runs_follow_an_in_place_update():
    """Rewriting document_ids in place re-classifies, and the runs decision with it."""
    attn = ag.compile(ag.Variant(mask=ag.document()))
    docs = doc_ids(1, 96, 2)
    check(attn, 1, 2, 2, 96, 96, 32, 32, torch.float32, config=SMALL, document_ids=docs)
    assert _walk(attn)[-1]
    docs.copy_(((torch.arange(96, device=DEVICE) // 16) % 2).expand(1, 96))  # interleaved: gaps
    check(attn, 1, 2, 2, 96, 96, 32, 32, torch.float32, config=SMALL, document_ids=docs)
    assert not _walk(attn)[-1]


def test_dkdv_walks_partial_tiles_on_both_sides_of_a_run():
    """The dK/dV pass walks a run's partial query tiles before and after its full ones in one
    loop that jumps over the full ones: documents ending inside a tile give KV tiles with
    both (key tile 0 here: the diagonal tile, full tiles, then the tile where document 0 ends)."""
    attn = ag.compile(ag.Variant(mask=ag.document() & ag.causal()))
    ids = torch.repeat_interleave(torch.tensor([0, 1, 2]), torch.tensor([40, 30, 20]))
    bound = {"document_ids": ids.expand(2, -1).contiguous().to(DEVICE)}
    check_grads(attn, 2, 2, 2, 90, 90, 32, 32, torch.float32, config=SMALL, **bound)
    if DEVICE == "cpu":  # (on a GPU the backward takes its own, wider tiles)
        transposed = [lists._transposed for _, lists in attn._tiles._entries.values()
                      if lists._transposed is not None]
        runs = transposed[0].runs[0, 0]
        assert runs[0].tolist() == [0, 1, 2, 3]  # partial, full, partial
