"""The comparison's case table: per family the shapes, the variant attngen compiles, what each
peer runs, the inputs, and the float64 references every backend is checked against.

Full sizes are shared/PEERS.md's (bf16, D=128 unless noted); ``smoke`` sizes are tiny
stand-ins of every case for the Triton interpreter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import attngen as ag  # first: without a GPU it selects the Triton interpreter before triton is imported
import bench_common as common
import neighborhood_cases as na_cases
import neighborhood_peers as na_peers
from attngen.library import builtin
from bench_linear import alibi_decay, load_fla
from compare_report import ATTNGEN, FAMILIES, SDPA

Tensor = torch.Tensor
Fn = Callable[[], Tensor]

SOFTCAP = 30.0
GRAD_REF_MAX_L = 16384  # float64 reference gradients materialize L x L per head: 2 GiB per matrix here
CPU_BACKENDS = {"attngen", "attngen_softmax"}  # what runs without a GPU (under the Triton interpreter)


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    family: str
    key: str
    title: str
    B: int
    H: int
    L: int
    D: int
    attended: int  # score entries per (batch, head) the FLOP count includes
    variant: ag.Variant  # what attngen compiles
    backends: tuple[str, ...]  # attngen first: the others are checked against it
    main: bool = False  # the family's headline shape
    flex_mask: Callable[[dict], Callable] | None = None  # runtime tensors -> mask_mod (None: no mask)
    flex_score: Callable[[dict], Callable] | None = None  # runtime tensors -> score_mod
    flex_per_batch: bool = False  # the mask reads per-sequence tensors: one BlockMask row per batch
    sdpa_causal: bool = False
    na: na_cases.NACase | None = None
    layout: str = "bhld"  # "blhd": fla's (B, L, H, D) memory, which attngen and SDPA read through views
    tensors: dict[str, Callable[["Case"], Tensor]] = field(default_factory=dict)  # name -> CPU tensor maker
    computes: dict[str, ag.Variant] = field(default_factory=dict)  # backends computing another function

    def flops(self, mode: str) -> float:
        fwd = 4.0 * self.B * self.H * self.D * self.attended
        return fwd * (3.5 if mode == "fwdbwd" else 1.0)

    def variant_of(self, backend: str) -> ag.Variant:
        return self.computes.get(backend, self.variant)

    def same_function(self, backend: str) -> bool:
        return backend != ATTNGEN and self.variant_of(backend) == self.variant


def causal_entries(L: int) -> int:
    return L * (L + 1) // 2


def window_entries(L: int, W: int) -> int:
    """Causal window of W tokens (the query included): sum over i of min(i + 1, W)."""
    W = min(W, L)
    return W * (W + 1) // 2 + (L - W) * W


def shape_title(B: int, H: int, L: int, D: int) -> str:
    return f"B={B} H={H} L={L} D={D}"


def causal_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def window_mod(W: int) -> Callable:
    return lambda b, h, q_idx, kv_idx: (q_idx >= kv_idx) & (q_idx - kv_idx < W)


def document_mod(doc: Tensor) -> Callable:
    return lambda b, h, q_idx, kv_idx: (q_idx >= kv_idx) & (doc[b, q_idx] == doc[b, kv_idx])


def softcap_score(score, b, h, q_idx, kv_idx):
    """tanh soft-capping (Gemma-2, Grok): attngen traces this function, Flex runs it."""
    return SOFTCAP * torch.tanh(score / SOFTCAP)


@dataclass(frozen=True)
class Sizes:
    B: int
    H: int
    L: int
    D: int
    second: tuple[int, int, int, int]  # the other dense/causal shape (B, H, L, D)
    window: int
    docs: int
    na: tuple[na_cases.NACase, ...]
    na_main: str
    linear: tuple[int, int, int]  # B, H, D
    linear_lengths: tuple[int, ...]
    linear_main: int


def _na(pool: tuple[na_cases.NACase, ...], keys: tuple[str, ...]) -> tuple[na_cases.NACase, ...]:
    by_key = {c.key: c for c in pool}
    return tuple(by_key[k] for k in keys)


NA_KEYS = ("na1d", "na2d_31", "na3d")  # the neighborhood benchmark's 1-D k2047, 2-D 128x128 k31, 3-D k7x15x15
FULL = Sizes(2, 16, 8192, 128, (4, 16, 4096, 64), 1024, 4, _na(na_cases.CASES, NA_KEYS), "na2d_31",
             (8, 32, 128), (2048, 4096, 16384), 4096)
# smoke neighborhoods: two 64-token tiles each, one head (the neighborhood benchmark's smoke cases take seconds
# per forward+backward under the interpreter)
SMOKE_NA = (na_cases.NACase("na1d", (128,), (15,), B=1, H=1, D=16),
            na_cases.NACase("na2d_31", (8, 16), (3, 5), B=1, H=1, D=16),
            na_cases.NACase("na3d", (4, 4, 8), (3, 3, 5), B=1, H=1, D=16))
SMOKE = Sizes(1, 2, 128, 32, (2, 2, 64, 16), 32, 4, SMOKE_NA, "na2d_31", (1, 2, 32), (64, 128), 128)


def softmax_mask_cases(family: str, s: Sizes) -> list[Case]:
    causal = family == "causal"
    out = []
    for i, (B, H, L, D) in enumerate(((s.B, s.H, s.L, s.D), s.second)):
        out.append(Case(family, f"{family}_L{L}_D{D}", shape_title(B, H, L, D), B, H, L, D,
                        causal_entries(L) if causal else L * L, ag.Variant(mask=ag.causal() if causal else None),
                        ("attngen", "attngen_gluon", "flex", *SDPA), main=i == 0,
                        flex_mask=(lambda t: causal_mod) if causal else None,
                        sdpa_causal=causal))
    return out


def window_cases(s: Sizes) -> list[Case]:
    W = s.window
    return [Case("window", f"window{W}", f"{shape_title(s.B, s.H, s.L, s.D)}, causal window {W}", s.B, s.H, s.L, s.D,
                 window_entries(s.L, W), ag.Variant(mask=ag.sliding_window(W - 1, 0)), ("attngen", "attngen_gluon", "flex"),
                 main=True, flex_mask=lambda t: window_mod(W))]


def document_ids(case: Case, docs: int) -> Tensor:
    """``docs`` equal documents per sequence, the same layout in every sequence."""
    return (torch.arange(case.L) // (case.L // docs)).expand(case.B, case.L).contiguous()


def document_cases(s: Sizes) -> list[Case]:
    n = s.L // s.docs
    title = f"{shape_title(s.B, s.H, s.L, s.D)}, {s.docs} docs x {n}, causal"
    return [Case("document", f"documents{s.docs}x{n}", title, s.B, s.H, s.L, s.D, s.docs * causal_entries(n),
                 ag.Variant(mask=ag.document() & ag.causal()), ("attngen", "flex"), main=True,
                 flex_mask=lambda t: document_mod(t["document_ids"]), flex_per_batch=True,
                 tensors={"document_ids": lambda c: document_ids(c, s.docs)})]


def score_mod_cases(s: Sizes) -> list[Case]:
    title = shape_title(s.B, s.H, s.L, s.D)
    alibi = Case("score_mods", "alibi", f"{title}, ALiBi, causal", s.B, s.H, s.L, s.D, causal_entries(s.L),
                 ag.Variant(score=common.alibi_score, mask=ag.causal()), ("attngen", "attngen_gluon", "flex"), main=True,
                 flex_mask=lambda t: causal_mod,
                 flex_score=lambda t: (lambda sc, b, h, q, kv: common.alibi_score(sc, b, h, q, kv, t["slopes"])),
                 tensors={"slopes": lambda c: common.alibi_slopes(c.H)})
    softcap = Case("score_mods", "softcap30", f"{title}, softcap {SOFTCAP:g}, causal", s.B, s.H, s.L, s.D,
                   causal_entries(s.L), ag.Variant(score=softcap_score, mask=ag.causal()),
                   ("attngen", "attngen_gluon", "flex"),
                   flex_mask=lambda t: causal_mod, flex_score=lambda t: softcap_score)
    return [alibi, softcap]


def neighborhood_cases(s: Sizes) -> list[Case]:
    out = []
    for na in s.na:
        mask_mod = na_peers.na_mask_mod(na)
        out.append(Case("neighborhood", na.key, na.name, na.B, na.H, na.L, na.D, na.attended, na.variant,
                        ("attngen", "flex"), main=na.key == s.na_main, flex_mask=lambda t, m=mask_mod: m, na=na))
    return out


def sigmoid_cases(s: Sizes) -> list[Case]:
    out = []
    for causal in (False, True):
        mask = ag.causal() if causal else None
        name = "causal" if causal else "dense"
        out.append(Case("sigmoid", f"sigmoid_{name}", f"{shape_title(s.B, s.H, s.L, s.D)}, {name}", s.B, s.H, s.L, s.D,
                        causal_entries(s.L) if causal else s.L * s.L, ag.Variant(mask=mask, norm=ag.sigmoid()),
                        ("attngen", "attngen_softmax", "flex"), main=not causal,
                        flex_mask=(lambda t: causal_mod) if causal else None,
                        computes={"attngen_softmax": ag.Variant(mask=mask), "flex": ag.Variant(mask=mask)}))
    return out


def linear_cases(s: Sizes) -> list[Case]:
    B, H, D = s.linear
    softmax = ag.Variant(mask=ag.causal())
    return [Case("linear", f"lightning_L{L}", shape_title(B, H, L, D), B, H, L, D, causal_entries(L),
                 builtin("lightning"), ("attngen", "fla", *SDPA), main=L == s.linear_main, sdpa_causal=True,
                 layout="blhd", tensors={"decay_log": lambda c: alibi_decay(c.H)},
                 computes={b: softmax for b in SDPA})
            for L in s.linear_lengths]


def all_cases(smoke: bool) -> list[Case]:
    s = SMOKE if smoke else FULL
    per_family = {
        "dense": softmax_mask_cases("dense", s), "causal": softmax_mask_cases("causal", s),
        "window": window_cases(s), "document": document_cases(s), "score_mods": score_mod_cases(s),
        "neighborhood": neighborhood_cases(s), "sigmoid": sigmoid_cases(s), "linear": linear_cases(s),
    }
    return [c for family in FAMILIES for c in per_family[family]]


def cases_by_key(keys: str) -> list[Case]:
    """The full-size cases named in ``keys`` (comma-separated), in that order; exits naming
    any key that is not a case."""
    by_key = {c.key: c for c in all_cases(smoke=False)}
    picked = [k.strip() for k in keys.split(",") if k.strip()]
    unknown = [k for k in picked if k not in by_key]
    if unknown:
        raise SystemExit(f"--cases: unknown {', '.join(unknown)}; known: {', '.join(by_key)}")
    return [by_key[k] for k in picked]


# --------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """q, k, v, dout as (B, H, L, D) tensors (views of fla's layout for linear cases), the
    leaves whose .grad the backward fills, and the runtime tensors."""
    q: Tensor
    k: Tensor
    v: Tensor
    dout: Tensor
    leaves: tuple[Tensor, Tensor, Tensor]
    tensors: dict[str, Tensor]
    blhd: bool  # the leaves are (B, L, H, D)

    def zero_grad(self) -> None:
        for t in self.leaves:
            t.grad = None

    def grads(self) -> tuple[Tensor, Tensor, Tensor]:
        """dq, dk, dv as (B, H, L, D) copies (the next step accumulates into the leaves)."""
        return tuple((t.grad.transpose(1, 2) if self.blhd else t.grad).clone() for t in self.leaves)


def make_inputs(case: Case, device: torch.device, dtype: torch.dtype, seed: int) -> Inputs:
    """Random (never zero) inputs; q, k, v are leaves requiring grad (fwd runs under no_grad)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shape = (case.B, case.L, case.H, case.D) if case.layout == "blhd" else (case.B, case.H, case.L, case.D)
    q, k, v, dout = (torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(4))
    leaves = tuple(t.requires_grad_() for t in (q, k, v))
    view = (lambda t: t.transpose(1, 2)) if case.layout == "blhd" else (lambda t: t)
    tensors = {name: make(case).to(device) for name, make in case.tensors.items()}
    return Inputs(*(view(t) for t in (q, k, v, dout)), leaves, tensors, case.layout == "blhd")


# --------------------------------------------------------------------------- backends


def attngen_kwargs(case: Case, variant: ag.Variant, tensors: dict[str, Tensor]) -> dict:
    names = {p.name for p in variant.tensors()}
    kwargs = {n: t for n, t in tensors.items() if n in names}
    if case.na is not None:
        kwargs["spatial_shape"] = case.na.spatial
    return kwargs


def build_attngen(case: Case, inp: Inputs, variant: ag.Variant, dialect: str | None = None) -> Fn:
    """attngen's call; ``dialect``: force the forward's kernel language ("gluon": the Hopper
    forward, beside the selected one in the "attngen" column)."""
    attn = ag.compile(variant)
    kwargs = attngen_kwargs(case, variant, inp.tensors)
    if dialect is not None:
        kwargs["dialect"] = dialect
    return lambda: attn(inp.q, inp.k, inp.v, **kwargs)


def build_flex(case: Case, inp: Inputs) -> Fn:
    flex = common.compiled_flex()
    block_mask = None
    if case.flex_mask is not None:
        block_mask = common.flex_block_mask(case.flex_mask(inp.tensors), case.L, inp.q.device,
                                            B=case.B if case.flex_per_batch else None)
    score_mod = case.flex_score(inp.tensors) if case.flex_score is not None else None
    return lambda: flex(inp.q, inp.k, inp.v, score_mod=score_mod, block_mask=block_mask)


def build_fla(case: Case, inp: Inputs) -> Fn:
    chunk_simple_gla = load_fla()
    q, k, v = (t.transpose(1, 2) for t in (inp.q, inp.k, inp.v))  # back to fla's (B, L, H, D)
    decay_log = inp.tensors["decay_log"]
    return lambda: chunk_simple_gla(q, k, v, g_gamma=decay_log, scale=1.0)[0].transpose(1, 2)


def build(backend: str, case: Case, inp: Inputs) -> Fn:
    """A call of ``backend`` on the case's inputs, returning (B, H, L, Dv)."""
    if backend in (ATTNGEN, "attngen_softmax"):
        return build_attngen(case, inp, case.variant_of(backend))
    if backend == "attngen_gluon":  # the Gluon (sm90) forward forced: a ValueError elsewhere says why
        return build_attngen(case, inp, case.variant_of(backend), dialect="gluon")
    if backend == "flex":
        return build_flex(case, inp)
    if backend == "fla":
        return build_fla(case, inp)
    if backend in SDPA:
        return common.sdpa_fn(backend, inp.q, inp.k, inp.v, causal=case.sdpa_causal)
    raise ValueError(f"unknown backend {backend!r}")


# --------------------------------------------------------------------------- references


@dataclass
class Reference:
    """What a backend's output (and gradients) are compared with: ``pick`` selects the part of
    a (B, H, L, Dv) tensor that ``out`` covers; gradients cover batch 0, head 0."""
    out: Tensor
    pick: Callable[[Tensor], Tensor]
    detail: str
    grads: tuple[Tensor, Tensor, Tensor] | None = None
    grad_detail: str = ""


def first_slice(t: Tensor) -> Tensor:
    return t[:1, :1]


def slice_reference(case: Case, variant: ag.Variant, inp: Inputs, with_grads: bool):
    """float64 ``ag.reference`` on batch 0, head 0 (every query row): (out, grads or None).
    Heads and sequences are independent, so this is exactly that slice of the full problem.
    Every runtime tensor here is indexed by batch (document_ids) or head (slopes, decay_log)
    on its first axis, so [:1] slices it alike."""
    q, k, v = (first_slice(t).detach().double().requires_grad_(with_grads) for t in (inp.q, inp.k, inp.v))
    kwargs = {n: t[:1] for n, t in attngen_kwargs(case, variant, inp.tensors).items() if n != "spatial_shape"}
    if case.na is not None:
        kwargs["spatial_shape"] = case.na.spatial
    with torch.set_grad_enabled(with_grads):
        out = ag.reference(variant)(q, k, v, **kwargs)
        if not with_grads:
            return out, None
        out.backward(first_slice(inp.dout).double())
    return out.detach(), (q.grad, k.grad, v.grad)


def reference(case: Case, variant: ag.Variant, inp: Inputs, mode: str, seed: int) -> Reference:
    """Neighborhoods: the neighborhood benchmark's float64 oracle on sampled rows of every head (a
    32768-token L x L matrix would not fit), gradients on the b=0, h=0 slice where it fits.
    Everything else: the b=0, h=0 slice, output and gradients."""
    want_grads = mode == "fwdbwd" and case.L <= GRAD_REF_MAX_L
    if case.na is None:
        out, grads = slice_reference(case, variant, inp, want_grads)
        return Reference(out, first_slice, "float64, b=0 h=0", grads, "float64, b=0 h=0")
    rows = na_cases.sample_rows(case.L, seed, inp.q.device)
    with torch.no_grad():
        out = na_cases.oracle_rows(case.na, inp.q, inp.k, inp.v, case.D ** -0.5, rows)
    grads = slice_reference(case, variant, inp, True)[1] if want_grads else None
    return Reference(out, lambda t: t[:, :, rows], f"float64, {len(rows)} query rows", grads, "float64, b=0 h=0")


def runs_on(backend: str, device: torch.device) -> bool:
    return device.type == "cuda" or backend in CPU_BACKENDS
