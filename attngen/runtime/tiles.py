"""Run-time tile lists for masks without closed-form geometry, and their cache.

The lists are (Bm, Hm, query tiles, KV tiles) int32 index arrays plus per-query-tile
counts, one pair for full tiles and one for partial tiles; Bm and Hm are 1 unless the
mask reads b or h. That is O(L^2 / (BLOCK_M * BLOCK_N)) memory, never O(L^2).

Where every row of the lists is contiguous (partial tiles, then full ones, then partial
ones, with no gap: packed documents, prefix-LM, windows within documents), the kernels walk
each row's run bounds as loop ranges instead of the lists (``TileLists.runs``). On the H100 a
tile index loaded inside the loop keeps Triton's software pipeline from prefetching K and
V: packed documents ran 310 TFLOP/s forward through the lists and 374 through the ranges
(benchmarks/NOTES.md, Tile-list masks, "tile lists walked as runs"). Whether the rows are contiguous is read back to the host
once per classification.

A classification also records, for every query, the first and last key its mask keeps and
how many it keeps, and the same for every key over the queries (``spans``, from the kernel
``<name>_spans`` beside the classifier). Where every query's (key's) kept positions are one
span [first, last] with nothing dropped inside it (packed documents with any causal or
window mask inside them, prefix-LM), the partial tiles test those two bounds instead of
evaluating the mask: a band test, as for causal attention, instead of gathers of the mask's
tensors (documents' dK/dV pass: 60 registers spilled with the gathers, 10 with a band test;
benchmarks/NOTES.md, Tile-list masks, 2026-11-24/25). Whether they are exact is read back in the same
host sync as the runs.

A classification is reused while the shape, tile sizes and every tensor it reads are the
same objects at the same version: ``tensor._version`` changes on each in-place write, so
``doc_ids.fill_(0)`` invalidates it. A call captured into a CUDA graph classifies afresh
inside the graph (and without the host sync), so every replay classifies the tensors'
current values.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass
class TileLists:
    full_count: torch.Tensor
    full_index: torch.Tensor
    partial_count: torch.Tensor
    partial_index: torch.Tensor
    axes: tuple | None = None  # the neighborhood's axes when the mask tests one element-wise
    # (Bm, Hm, rows, 4) int32 [lo, full_lo, full_hi, hi) tile bounds per row when every row is
    # contiguous (see the module's docstring), else None; set by ``find_runs``, with the share
    # of partial tiles among the visited ones
    runs: torch.Tensor | None = None
    partial_share: float = 1.0
    # (Bm, Hm, 3, positions) int32: per position of the listed side (queries here, keys in the
    # transposed lists) the first and last position of the other side that the mask keeps,
    # and how many it keeps (an empty span is [other side's length, -1], count 0); and the
    # same for the other side, which ``transposed`` takes. None where not classified.
    spans: torch.Tensor | None = None
    column_spans: torch.Tensor | None = None
    # every position's kept positions are its span (set by ``find_runs``): partial tiles may
    # test the span's bounds instead of the mask
    spans_exact: bool = False
    _transposed: "TileLists | None" = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, bm: int, hm: int, num_m: int, num_n: int, device: torch.device,
              lq: int | None = None, lkv: int | None = None) -> "TileLists":
        """Uninitialized lists; with the sequence lengths, also the spans (contiguous, so that a
        span's three rows lie a sequence length apart; the classifier writes them)."""
        def counts():
            return torch.empty((bm, hm, num_m), dtype=torch.int32, device=device)

        def index():
            return torch.empty((bm, hm, num_m, num_n), dtype=torch.int32, device=device)

        lists = cls(counts(), index(), counts(), index())
        if lq is not None and lkv is not None:
            lists.spans = torch.empty((bm, hm, 3, lq), dtype=torch.int32, device=device)
            lists.column_spans = torch.empty((bm, hm, 3, lkv), dtype=torch.int32, device=device)
        return lists

    def args(self) -> tuple:
        """Pointers and strides in the order the generated kernels take them."""
        c, i = self.full_count, self.full_index
        return (self.full_count, self.full_index, self.partial_count, self.partial_index,
                c.stride(0), c.stride(1), i.stride(0), i.stride(1), i.stride(2))

    def run_args(self) -> tuple:
        """The attention kernels' ``tile_runs, TILE_RUNS, spans, stride_sb, stride_sh,
        stride_ss, SPANS``: the run bounds (indexed like the counts, times 4) and whether to
        walk them, then the spans and whether partial tiles test them instead of the mask. A
        pointer whose flag is off is never read."""
        runs = (self.full_count, False) if self.runs is None else (self.runs, True)
        if not self.spans_exact:
            return (*runs, self.full_count, 0, 0, 0, False)
        s = self.spans
        return (*runs, s, s.stride(0), s.stride(1), s.stride(2), True)

    def kinds(self) -> torch.Tensor:
        """The classification as a (Bm, Hm, rows, columns) int8 matrix: 0 empty, 1 partial, 2 full."""
        bm, hm, rows, cols = self.full_index.shape
        slots = torch.arange(cols, device=self.full_index.device)
        kind = torch.zeros((bm, hm, rows, cols + 1), dtype=torch.int8, device=self.full_index.device)
        for count, index, code in ((self.partial_count, self.partial_index, 1), (self.full_count, self.full_index, 2)):
            listed = slots < count[..., None]  # entries past the count are unset memory
            kind.scatter_(3, torch.where(listed, index, cols).long(), code)
        return kind[..., :cols]

    def find_runs(self, kind: torch.Tensor | None = None) -> "TileLists":
        """Set ``runs`` when every row's tiles are contiguous and ``spans_exact`` when every
        position's kept positions are its span (one host sync); returns self. While a CUDA
        graph is being captured no sync is allowed: the lists are walked, the mask evaluated."""
        capturing = self.full_index.is_cuda and torch.cuda.is_current_stream_capturing()
        if not capturing:
            exact = spans_are_exact(self.spans) if self.spans is not None else None
            self.runs, self.partial_share, self.spans_exact = contiguous_runs(
                self.kinds() if kind is None else kind, exact)
        return self

    @property
    def mostly_full_runs(self) -> bool:
        """Runs of which at most a quarter of the tiles are partial (packed documents longer
        than a few tiles): the backward takes the large tiles for these, as for causal masks
        (H100, 4 documents x 2048: fwd+bwd 292-295 TFLOP/s against 277-282 with the small
        tiles; benchmarks/NOTES.md, Tile-list masks, 2026-11-24)."""
        return self.runs is not None and self.partial_share <= 0.25

    def geometry(self) -> dict[str, object]:
        """The neighborhood's grid and geometry, as the kernels' keyword arguments."""
        out: dict[str, object] = {}
        for i, a in enumerate(self.axes):
            out.update({f"S{i}": a.size, f"K{i}": a.kernel, f"DIL{i}": a.dilation, f"STR{i}": a.stride,
                        f"CAUSAL{i}": a.causal})
        return out

    def transposed(self) -> "TileLists":
        """The same classification listed per KV tile: (Bm, Hm, KV tiles, query tiles), for
        the backward's dK/dV pass. Computed once per classification, on its device."""
        if self._transposed is None:
            kind = self.kinds().transpose(2, 3)

            def lists(code):
                hit = kind == code
                # stable sort puts the listed query tiles first, in increasing order
                order = torch.sort((~hit).to(torch.int8), dim=-1, stable=True).indices
                return hit.sum(-1, dtype=torch.int32).contiguous(), order.to(torch.int32).contiguous()

            (fc, fi), (pc, pi) = lists(2), lists(1)
            self._transposed = TileLists(fc, fi, pc, pi, self.axes, spans=self.column_spans).find_runs(kind)
        return self._transposed

    def visited(self) -> tuple[int, int]:
        """(full tiles, partial tiles) summed over every query tile."""
        return int(self.full_count.sum()), int(self.partial_count.sum())


def _runs_of(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the first hit column, one past the last, and the count. argmax gives the first
    maximum, so the first hit from either end (0 on a row without any, which the callers mask
    by the count); no (rows x columns) temporaries wider than a byte."""
    hit = hit.to(torch.uint8)
    first = hit.argmax(-1)
    end = hit.shape[-1] - hit.flip(-1).argmax(-1)
    return first, end, hit.sum(-1, dtype=torch.int32)


def _row_runs(kind: torch.Tensor) -> tuple:
    """(lo, hi, visited, full_lo, full_hi, full, one_run) per row of a classification."""
    lo, hi, visited = _runs_of(kind > 0)
    full_lo, full_hi, full = _runs_of(kind == 2)
    one_run = ((hi - lo == visited) | (visited == 0)) & ((full_hi - full_lo == full) | (full == 0))
    return lo, hi, visited, full_lo, full_hi, full, one_run


def rows_in_one_run(kind: torch.Tensor) -> torch.Tensor:
    """Per row of a (..., rows, columns) classification (0 empty, 1 partial, 2 full): whether
    its visited columns are one run with its full columns one run inside it."""
    return _row_runs(kind)[-1]


def spans_are_exact(spans: torch.Tensor) -> torch.Tensor:
    """Whether every position keeps exactly its span: count = last - first + 1, or keeps
    nothing (a 0-d bool tensor, read back with the runs)."""
    first, last, count = spans.unbind(-2)
    return ((last - first + 1 == count) | (count == 0)).all()


def contiguous_runs(kind: torch.Tensor, spans_exact: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor | None, float, bool]:
    """Per row of a (..., rows, columns) classification (0 empty, 1 partial, 2 full), the
    bounds [lo, full_lo, full_hi, hi) of its visited columns and of its full columns, as a
    (..., rows, 4) int32 tensor, when every row is one run (``rows_in_one_run``: then
    [lo, full_lo) and [full_hi, hi) hold only partial tiles); None otherwise. A row without
    full tiles has full_lo = full_hi = hi; an empty row is all zeros. Second: the share of
    partial tiles among the visited ones (1.0 when none is). Third: ``spans_exact`` (a 0-d
    bool tensor, or None for False) read back in the same sync."""
    lo, hi, visited, full_lo, full_hi, full, one_run = _row_runs(kind)
    exact = spans_exact if spans_exact is not None else torch.zeros((), dtype=torch.bool, device=kind.device)
    # the host sync, once per classification
    all_runs, n_visited, n_full, exact = torch.stack(
        (one_run.all().long(), visited.sum(), full.sum(), exact.long())).tolist()
    share = 1.0 - n_full / n_visited if n_visited else 1.0
    if not all_runs:
        return None, share, bool(exact)
    lo = torch.where(visited > 0, lo, 0)
    hi = torch.where(visited > 0, hi, 0)
    full_lo = torch.where(full > 0, full_lo, hi)
    full_hi = torch.where(full > 0, full_hi, hi)
    return torch.stack((lo, full_lo, full_hi, hi), dim=-1).to(torch.int32).contiguous(), share, bool(exact)


def _tensor_key(t: torch.Tensor) -> tuple:
    return (id(t), t._version, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


class TileCache:
    """A small LRU of tile classifications for one compiled variant."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, tuple[list, TileLists]] = OrderedDict()
        self.builds = 0

    def get(self, module, tensors: dict[str, torch.Tensor], B: int, HQ: int, Lq: int, Lkv: int, config,
            device: torch.device, axes: tuple | None = None, cache: bool = True) -> TileLists:
        depends = module.TILES_DEPEND_ON
        bm = B if "b" in depends else 1
        hm = HQ if "h" in depends else 1
        key = (device, bm, hm, Lq, Lkv, config.block_m, config.block_n, axes,
               tuple((n, _tensor_key(t)) for n, t in sorted(tensors.items())))
        # While a CUDA graph is captured, the classification must be part of the graph: a
        # replay reads new values from the same tensors, which a cached list would not see.
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        keep = cache and not capturing
        hit = self._entries.get(key) if keep else None
        if hit is not None and all(ref() is tensors[n] for n, ref in hit[0]):
            self._entries.move_to_end(key)
            return hit[1]
        # -(-a // b): triton.cdiv's constexpr wrapper costs microseconds on this per-call path
        tiles = TileLists.empty(bm, hm, -(-Lq // config.block_m), -(-Lkv // config.block_n), device, Lq, Lkv)
        tiles.axes = axes
        module.launch_classify_tiles(tiles, tensors, Lq, Lkv, config)
        tiles.find_runs()
        self.builds += 1
        if not keep:
            return tiles
        refs = [(n, weakref.ref(t)) for n, t in sorted(tensors.items())]
        self._entries[key] = (refs, tiles)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return tiles
