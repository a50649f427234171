"""Context-parallel cases run by tests/test_distributed*.py in gloo worker processes.

Every rank draws the same global inputs (one seed), runs its shard through
``agd.context_parallel_attention`` and compares its shard of the output, lse and gradients
with ``ag.reference`` on the unsharded tensors (float64). Gradients of tensors every rank
passes whole (sinks, slopes, bias tables) are this rank's contribution, summed over the
group before the comparison. Kept importable by spawned processes: no pytest here.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

import attngen as ag
import attngen.distributed as agd
from neighborhood_oracle import axis_keys

TOL = 2e-5  # fp32 under the interpreter; the merge and the kernels run in fp32


@ag.score_mod
def alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


@ag.score_mod
def softcap(score, b, h, q_idx, kv_idx):
    return 20.0 * torch.tanh(score / 20.0)


@ag.score_mod
def position_bias(score, b, h, q_idx, kv_idx, bias):
    return score + bias[h, q_idx, kv_idx]


@ag.mask_mod
def prefix_lm(b, h, q_idx, kv_idx, prefix):
    return (kv_idx <= q_idx) | (kv_idx < prefix[b])


def _documents(B: int, L: int, g: torch.Generator) -> torch.Tensor:
    """Random document boundaries (B, L), int32, some documents crossing shard borders."""
    cuts = torch.rand(B, L, generator=g) < 0.12
    return cuts.cumsum(1).to(torch.int32)


# name -> (variant, {tensor name: maker(B, Hq, L, g)}, names whose gradient is checked)
def variants() -> dict:
    return {
        "causal": (ag.Variant(mask=ag.causal(), name="cp_causal"), {}, ()),
        "alibi_causal_sinks": (
            ag.Variant(score=alibi, mask=ag.causal(), norm=ag.softmax(sink=True), name="cp_alibi_sinks"),
            {"slopes": lambda B, H, L, g: torch.rand(H, generator=g) * 0.3,
             "sinks": lambda B, H, L, g: torch.randn(H, generator=g)}, ("slopes", "sinks")),
        "causal_sinks": (ag.Variant(mask=ag.causal(), norm=ag.softmax(sink=True), name="cp_causal_sinks"),
                         {"sinks": lambda B, H, L, g: torch.randn(H, generator=g)}, ("sinks",)),
        "window": (ag.Variant(mask=ag.sliding_window(5, 3), name="cp_window"), {}, ()),
        "doc_causal": (ag.Variant(mask=ag.causal() & ag.document(), name="cp_doc_causal"),
                       {"document_ids": lambda B, H, L, g: _documents(B, L, g)}, ()),
        "sigmoid_causal": (ag.Variant(mask=ag.causal(), norm=ag.sigmoid(), name="cp_sigmoid_causal"), {}, ()),
        "sigmoid_window": (ag.Variant(mask=ag.sliding_window(7), norm=ag.sigmoid(0.5), name="cp_sigmoid_window"),
                           {}, ()),
        "softcap_dense": (ag.Variant(score=softcap, name="cp_softcap"), {}, ()),
        "prefix_lm": (ag.Variant(mask=prefix_lm, name="cp_prefix_lm"),
                      {"prefix": lambda B, H, L, g: torch.randint(1, L // 2, (B,), generator=g)}, ()),
        "position_bias": (ag.Variant(score=position_bias, mask=ag.causal(), name="cp_position_bias"),
                          {"bias": lambda B, H, L, g: 0.3 * torch.randn(H, L, L, generator=g)}, ("bias",)),
    }


SHARDED = ("document_ids",)  # tensors sharded with the sequence; every other one is whole


def _close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float = TOL) -> None:
    got, want = got.double(), want.double()
    neg = torch.isneginf(want)
    assert torch.equal(torch.isneginf(got), neg), f"{name}: -inf entries differ"
    assert not torch.isnan(got).any(), f"{name}: NaN"
    g, w = got[~neg], want[~neg]
    err = ((g - w).norm() / w.norm().clamp_min(1e-12)).item() if w.numel() else 0.0
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t, group=group)
    return t


def _inputs(B: int, Hq: int, Hkv: int, L: int, D: int, makers: dict, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, L, D, generator=g)
    k = torch.randn(B, Hkv, L, D, generator=g)
    v = torch.randn(B, Hkv, L, D, generator=g)
    tensors = {n: make(B, Hq, L, g) for n, make in makers.items()}
    w_out = torch.randn(B, Hq, L, D, generator=g)
    w_lse = torch.randn(B, Hq, L, generator=g)
    return q, k, v, tensors, w_out, w_lse


def check_sequence(rank: int, group, *, variant: str, mode: str, balanced: bool, B: int = 1, Hq: int = 2,
                   Hkv: int = 2, L: int = 40, D: int = 16, seed: int = 0, dtype: str = "float32") -> None:
    """One context-parallel call against the reference: out, lse, dq/dk/dv, learned tensors.
    ``dtype``: of q, k, v (the reference takes the same rounded values in float64)."""
    world = dist.get_world_size(group)
    var, makers, learned = variants()[variant]
    q, k, v, tensors, w_out, w_lse = _inputs(B, Hq, Hkv, L, D, makers, seed)
    q, k, v = (x.to(getattr(torch, dtype)) for x in (q, k, v))
    tol, grad_tol = (TOL, 1e-4) if dtype == "float32" else (2e-3, 1e-2)
    softmax = isinstance(var.norm, ag.Softmax)
    layout = agd.SequenceLayout(L, world, balanced)

    def shard(x, dim=2):
        return layout.shard(x, rank, dim)

    leaves = {n: t.clone().requires_grad_(n in learned) for n, t in tensors.items()}
    local_tensors = {n: shard(t, 1) if n in SHARDED else t for n, t in leaves.items()}
    ql, kl, vl = (shard(x).clone().requires_grad_() for x in (q, k, v))
    result = agd.context_parallel_attention(ag.compile(var), ql, kl, vl, layout=layout, group=group, mode=mode,
                                            return_lse=softmax, **local_tensors)
    out, lse = result if softmax else (result, None)
    loss = (out * shard(w_out)).sum() + ((lse * shard(w_lse, 2)).sum() if softmax else 0.0)
    loss.backward()

    qr, kr, vr = (x.double().requires_grad_() for x in (q, k, v))
    ref_leaves = {n: t.double().requires_grad_() if n in learned else t for n, t in tensors.items()}
    ref = ag.reference(var)(qr, kr, vr, return_lse=softmax, **ref_leaves)
    ref_out, ref_lse = ref if softmax else (ref, None)
    ref_loss = (ref_out * w_out.double()).sum() + ((ref_lse * w_lse.double()).sum() if softmax else 0.0)
    ref_loss.backward()

    assert out.dtype == q.dtype, out.dtype
    _close("out", out, shard(ref_out.detach()), tol)
    if softmax:
        _close("lse", lse, shard(ref_lse.detach(), 2), tol)
    for name, got, want in (("dq", ql.grad, qr.grad), ("dk", kl.grad, kr.grad), ("dv", vl.grad, vr.grad)):
        _close(name, got, shard(want), grad_tol)
    for name in learned:
        _close(f"d{name}", _all_reduce(leaves[name].grad, group), ref_leaves[name].grad, grad_tol)


def _kernel_kinds(var) -> dict:
    """Each compiled kernel a context-parallel call of ``var`` may run, by kind."""
    kernels = agd.pair_kernels(ag.compile(var))
    return {id(kernels.offset): "offset", id(kernels.dense): "dense", id(kernels.diagonal): "diagonal"}


def check_causal_work(rank: int, group, *, balanced: bool, L: int = 24, D: int = 16) -> None:
    """Ring attention under a causal mask launches exactly the chunk pairs the mask does not
    empty (brute force over the chunks), full pairs on the dense kernel and the diagonal
    ones on the causal kernel, and its forward sends each block W - 1 times, nothing else."""
    from attngen.runtime.attention import CompiledAttention

    world = dist.get_world_size(group)
    var = variants()["causal"][0]
    layout = agd.SequenceLayout(L, world, balanced)
    kinds, launched = _kernel_kinds(var), []
    original = CompiledAttention.forward_impl

    def counting(self, call, q, k, v, bound, *args, **kwargs):
        launched.append(kinds.get(id(self), "other"))
        return original(self, call, q, k, v, bound, *args, **kwargs)

    q = torch.randn(1, 2, layout.local_length(rank), D)
    traffic = agd.Traffic()
    CompiledAttention.forward_impl = counting
    try:
        with torch.no_grad():
            agd.context_parallel_attention(ag.compile(var), q, q, q, layout=layout, group=group, traffic=traffic)
    finally:
        CompiledAttention.forward_impl = original
    expected = []
    for qc in layout.chunks_of(rank):
        for kc in layout.chunks:
            rows, cols = range(qc.start, qc.stop), range(kc.start, kc.stop)
            kept = [j <= i for i in rows for j in cols]
            if not any(kept):
                continue
            expected.append("dense" if all(kept) else "diagonal" if qc == kc else "offset")
    assert sorted(launched) == sorted(expected), (launched, expected)
    blocks = sum(2 * layout.local_length((rank - t) % world) for t in range(world - 1))  # k and v, one head pair
    assert traffic.sent == {"ring": blocks * 2 * D * 4}, (traffic.sent, blocks)


def check_ulysses_heads_refused(rank: int, group) -> None:
    layout = agd.SequenceLayout(12, dist.get_world_size(group))
    q = torch.randn(1, 4, layout.local_length(rank), 16)
    try:
        agd.context_parallel_attention(ag.Variant(mask=ag.causal()), q, q, q, layout=layout, group=group,
                                       mode="ulysses")
    except ValueError as exc:
        assert "multiples of the group size" in str(exc), exc
    else:
        raise AssertionError("ulysses with heads that do not divide by the group ran")


# ------------------------------------------------------------------ neighborhoods
def _reached(shape: tuple, kernel, dilation, stride, causal, rows: tuple, rank: int) -> set[int]:
    """Rows of the first axis that rank ``rank``'s windows reach (brute force over the
    independent oracle)."""
    per = (lambda x: x[0] if isinstance(x, tuple) else x)
    k, d, s, c = per(kernel), per(dilation), per(stride), per(causal)
    start = sum(rows[:rank])
    return {y for x in range(start, start + rows[rank]) for y in axis_keys(shape[0], k, d, s, c, x)}


def _owned(rows: tuple, rank: int) -> set[int]:
    return set(range(sum(rows[:rank]), sum(rows[:rank + 1])))


def check_neighborhood(rank: int, group, *, shape: tuple, kernel, dilation=1, stride=1, causal=False,
                       rows: tuple | None = None, mode: str = "halo", sinks: bool = False, documents: bool = False,
                       positions: bool = False, B: int = 1, H: int = 2, D: int = 16, seed: int = 0) -> None:
    """A neighborhood variant sharded by rows: out, lse, gradients, and (halo mode) the bytes
    sent, which must be the reached rows of other ranks and nothing more. ``positions``: also
    a causal mask and ALiBi (learned slopes), which read global positions on the slab."""
    world = dist.get_world_size(group)
    mask = ag.neighborhood(kernel, dilation, stride, causal)
    if documents:
        mask = mask & ag.document()
    if positions:
        mask = mask & ag.causal()
    var = ag.Variant(score=alibi if positions else None, mask=mask, norm=ag.softmax(sink=sinks))
    L = math.prod(shape)
    makers = {}
    if positions:
        makers["slopes"] = lambda B, H, L, g: torch.rand(H, generator=g) * 0.3
    if sinks:
        makers["sinks"] = lambda B, H, L, g: torch.randn(H, generator=g)
    if documents:
        makers["document_ids"] = lambda B, H, L, g: _documents(B, L, g)
    q, k, v, tensors, w_out, w_lse = _inputs(B, H, H, L, D, makers, seed)
    grid = agd.GridLayout(shape, world, rows)
    shard = (lambda x, dim=2: agd.shard(x, grid, rank, dim))
    learned = {"sinks", "slopes"} & set(tensors)
    leaves = {n: t.clone().requires_grad_(n in learned) for n, t in tensors.items()}
    local_tensors = {n: shard(t, 1) if n in SHARDED else t for n, t in leaves.items()}
    ql, kl, vl = (shard(x).clone().requires_grad_() for x in (q, k, v))
    traffic = agd.Traffic()
    out, lse = agd.context_parallel_attention(ag.compile(var), ql, kl, vl, layout=grid, group=group, mode=mode,
                                              return_lse=True, traffic=traffic, **local_tensors)
    forward_bytes = traffic.total
    ((out * shard(w_out)).sum() + (lse * shard(w_lse)).sum()).backward()

    qr, kr, vr = (x.double().requires_grad_() for x in (q, k, v))
    ref_leaves = {n: t.double().requires_grad_() if n in learned else t for n, t in tensors.items()}
    ref_out, ref_lse = ag.reference(var)(qr, kr, vr, return_lse=True, spatial_shape=shape, **ref_leaves)
    ((ref_out * w_out.double()).sum() + (ref_lse * w_lse.double()).sum()).backward()
    _close("out", out, shard(ref_out.detach()))
    _close("lse", lse, shard(ref_lse.detach()))
    for name, got, want in (("dq", ql.grad, qr.grad), ("dk", kl.grad, kr.grad), ("dv", vl.grad, vr.grad)):
        _close(name, got, shard(want), 1e-4)
    for name in learned:
        _close(f"d{name}", _all_reduce(leaves[name].grad, group), ref_leaves[name].grad, 1e-4)
    if mode == "halo":  # forward: the rows of ours that others' windows reach; backward: their gradients
        geometry = (shape, kernel, dilation, stride, causal, grid.rows)
        sent = sum(len(_reached(*geometry, r) & _owned(grid.rows, rank)) for r in range(world) if r != rank)
        returned = len(_reached(*geometry, rank) - _owned(grid.rows, rank))
        per_row = grid.row_size * B * (2 * H * D * 4 + (tensors["document_ids"].element_size() if documents else 0))
        assert forward_bytes == sent * per_row, (forward_bytes, sent * per_row)
        assert traffic.total - forward_bytes == returned * grid.row_size * B * 2 * H * D * 4, \
            (traffic.total - forward_bytes, returned)
