"""Render a KernelIR into a Triton module through the Jinja2 templates.

This module decides only what the template needs to know: which expressions are computed
once per query tile (hoisted out of the KV loop: anything that does not read ``kv_idx`` or
``qk``) and which per KV tile, which tensors each kernel reads, and the code of each
expression (``printer.TritonPrinter``). The loop structure lives in the template.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from .._version import __version__
from .._resources import template_dir
from ..ir.expr import B, H, KV_IDX, LKV, LQ, Q_IDX, QK, QK_SCALE, SCORE, SM_SCALE
from ..ir.kernel import BAND, DENSE, NEIGHBORHOOD, TILES, KernelIR
from ..ir.nodes import Linear, Sigmoid, Softmax
from ..passes.normalization import CHUNKED_LINEAR, ONLINE_SOFTMAX
from .environment import template_environment
from .printer import HostPrinter, TritonPrinter
from .render_decode import decode_context
from .render_linear import render as render_linear

TEMPLATE = "attention_fwd.py.j2"

# Names of the IR's symbols inside the generated kernels.
KERNEL_NAMES = {QK: "qk", QK_SCALE: "qk_scale", SM_SCALE: "sm_scale", B: "off_b", H: "off_h",
                Q_IDX: "q_idx", KV_IDX: "kv_idx", LQ: "Lq", LKV: "Lkv"}
# Host-side names, for band bounds computed before the launch.
HOST_NAMES = {LQ: "Lq", LKV: "Lkv"}
PER_KV_TILE = {KV_IDX, QK}


@dataclass(frozen=True)
class TensorArgs:
    name: str
    ndim: int

    @property
    def params(self) -> str:
        return ", ".join([f"{self.name}_ptr"] + [f"{self.name}_stride{d}" for d in range(self.ndim)])

    @property
    def flag(self) -> str:
        return f"{self.name.upper()}_AS_F32"

    @property
    def grad_params(self) -> str:
        """The fp32 gradient buffer of this tensor (backward kernels), and its strides."""
        return ", ".join([f"{self.name}_grad_ptr"] + [f"{self.name}_gstride{d}" for d in range(self.ndim)])

    @property
    def grad_flag(self) -> str:
        return f"{self.name.upper()}_GRAD"


@dataclass(frozen=True)
class GradRead:
    """One read ``t[idx]`` of a runtime tensor by the score: where its gradient goes and the
    score's derivative with respect to it. ``per_q``/``per_kv``: whether the index varies
    along the tile's query/key axis (otherwise the tile is summed before the atomic add)."""

    tensor: TensorArgs
    offset: str
    deriv: str
    per_q: bool
    per_kv: bool


@dataclass(frozen=True)
class Statement:
    var: str
    code: str


def _reads(exprs: list[sympy.Basic]) -> list[str]:
    return sorted({str(r.base.label) for e in exprs for r in e.atoms(sympy.Indexed)})


def _invariant_reads(exprs: list[sympy.Basic], loop_symbols: frozenset | set, prefix: str) -> dict:
    """Each tensor read in ``exprs`` whose index uses none of ``loop_symbols`` (so a loop over
    them can read it once, before it starts), mapped to a new symbol ``prefix`` + i."""
    reads = sorted({r for e in exprs for r in e.atoms(sympy.Indexed) if not r.free_symbols & loop_symbols},
                   key=sympy.default_sort_key)
    return {r: sympy.Symbol(f"{prefix}{i}", real=True) for i, r in enumerate(reads)}


def _hoist_reads(ir: KernelIR) -> tuple[list[tuple[sympy.Symbol, sympy.Basic]], sympy.Basic, sympy.Basic | None]:
    """Give every tensor read that does not depend on the KV position a per-row temporary.

    Returns the definitions (those reads, then the IR's temporaries, in dependency order),
    the score and the partial-tile predicate rewritten over them.
    """
    exprs = [e for _, e in ir.temps] + [ir.score_log2] + ([ir.tile_pred] if ir.tile_pred is not None else [])
    subs = _invariant_reads(exprs, PER_KV_TILE, "row")
    hoisted = [(s, r) for r, s in subs.items()]
    temps = [(s, e.xreplace(subs)) for s, e in ir.temps]
    score = ir.score_log2.xreplace(subs)
    pred = ir.tile_pred.xreplace(subs) if ir.tile_pred is not None else None
    return hoisted + temps, score, pred


def _split_by_loop(defs: list[tuple[sympy.Symbol, sympy.Basic]]):
    """Partition temporaries into per-query-tile (hoisted) and per-KV-tile ones."""
    per_tile: set[sympy.Symbol] = set()
    row, tile = [], []
    for sym, expr in defs:
        if expr.free_symbols & (PER_KV_TILE | per_tile):
            per_tile.add(sym)
            tile.append((sym, expr))
        else:
            row.append((sym, expr))
    return row, tile


def _per_tile_symbols(defs: list[tuple[sympy.Symbol, sympy.Basic]]) -> set[sympy.Symbol]:
    """qk, kv_idx and every temporary computed from them."""
    out = set(PER_KV_TILE)
    for sym, expr in defs:
        if expr.free_symbols & out:
            out.add(sym)
    return out


def _needed(defs: list[tuple[sympy.Symbol, sympy.Basic]], roots: list[sympy.Basic]) -> list:
    need = set().union(*(r.free_symbols for r in roots)) if roots else set()
    out = []
    for sym, expr in reversed(defs):
        if sym in need:
            need |= expr.free_symbols
            out.append((sym, expr))
    return list(reversed(out))


def build_context(ir: KernelIR, ir_text: str) -> dict:
    """Everything the template needs, as plain strings and flags."""
    defs, score, pred = _hoist_reads(ir)
    row_defs, tile_defs = _split_by_loop(defs)
    names = dict(KERNEL_NAMES)
    names.update({s: str(s) for s, _ in defs})
    printer = TritonPrinter(names)

    def stmts(items):
        return [Statement(str(s), printer.define(s, e)) for s, e in items]

    tensors = {p.name: TensorArgs(p.name, p.ndim) for p in ir.tensors}
    fwd_row = _needed(row_defs, [score] + [e for _, e in tile_defs] + ([pred] if pred is not None else []))
    fwd_tile = _needed(tile_defs, [score] + ([pred] if pred is not None else []))
    ctx = {
        "version": __version__,
        "name": ir.name,
        "ir_lines": ir_text.rstrip("\n").splitlines(),
        "strategy": ir.strategy,
        "row_stmts": stmts(fwd_row),
        "row_vars": [str(s) for s, _ in fwd_row],
        "tile_stmts": stmts(fwd_tile),
        "score_code": printer.code(score),
        "score_is_tile": bool(_per_tile_symbols(defs) & score.free_symbols),
        "mask_code": printer.code(pred) if pred is not None else None,
        "fwd_tensors": [tensors[n] for n in _reads([e for _, e in fwd_row + fwd_tile] + [score]
                                                        + ([pred] if pred is not None else []))],
        "tile_tensors": [tensors[n] for n in _reads([e for _, e in fwd_tile] + [score]
                                                         + ([pred] if pred is not None else []))],
        "band_lo": None, "band_hi": None,
        "tile_depends_b": "b" in ir.tile_depends, "tile_depends_h": "h" in ir.tile_depends,
    }
    if ir.strategy == BAND:
        host = HostPrinter(HOST_NAMES)
        ctx["band_lo"] = host.code(ir.band.lo) if ir.band.lo is not None else None
        ctx["band_hi"] = host.code(ir.band.hi) if ir.band.hi is not None else None
    if ir.strategy == TILES:
        cls_tile = _needed(tile_defs, [pred])
        cls_row = _needed(row_defs, [pred] + [e for _, e in cls_tile])
        ctx["cls_row_stmts"] = stmts(cls_row)
        ctx["cls_tile_stmts"] = stmts(cls_tile)
        ctx["cls_tensors"] = [tensors[n] for n in _reads([e for _, e in cls_row + cls_tile] + [pred])]
    ctx["algorithm"] = ir.algorithm
    ctx["softmax"] = ir.algorithm == ONLINE_SOFTMAX
    # softmax of the plain score qk * qk_scale: unmasked tiles take the row max of the raw
    # products and fold the scale into exp2's argument (needs scale > 0, a launch constexpr)
    ctx["plain_score"] = ctx["softmax"] and ir.plain_score
    # sigmoid of the plain score: scale, bias and tanh's ln(2)/2 fold into one FMA per score
    ctx["plain_sigmoid"] = isinstance(ir.norm, Sigmoid) and ir.plain_score
    ctx["sink"] = isinstance(ir.norm, Softmax) and ir.norm.sink
    if ctx["sink"] and "sinks" not in {t.name for t in ctx["fwd_tensors"]}:
        ctx["fwd_tensors"].append(TensorArgs("sinks", 1))  # read once per row, after the KV loop
    ctx["sigmoid_bias"] = ir.norm.bias if isinstance(ir.norm, Sigmoid) else None
    ctx["bwd"] = None
    try:
        ctx["bwd"] = backward_context(ir, printer, tensors)
    except NotImplementedError:
        pass  # a derivative the printer cannot emit: forward only (calls that need grads say so)
    ctx["decode"] = decode_context(ir, printer)  # templates/decode.py.j2; None: the variant cannot decode
    ctx["helpers"] = sorted(printer.helpers)
    ctx["na_keep"] = "na_keep" in printer.helpers  # a neighborhood under '|' or '~'
    # Closed-form tile ranges (dense, bands, neighborhood boxes without other masks) also get
    # the kernel whose query tile is two interleaved halves (KernelConfig.halves); tile lists
    # keep one kind of tile.
    ctx["halves"] = (ir.strategy in (DENSE, BAND) or (ir.strategy == NEIGHBORHOOD and ctx["mask_code"] is None)) \
        and not ctx["na_keep"]
    # Dense and band kernels walk one contiguous run of full KV tiles, the loop Triton's
    # automatic warp specialization handles (KernelConfig.warp_specialize); neighborhoods
    # measured -1% with it (benchmarks/NOTES.md, "warp specialization as a config option")
    # and tile lists walk index lists.
    ctx["warp_specialize"] = ir.strategy in (DENSE, BAND)
    ctx["uses_reads"] = bool(ctx["fwd_tensors"]) or bool(ctx.get("cls_tensors")) or bool(
        ctx["bwd"] and ctx["bwd"]["tensors"])
    return ctx


def _expand_temps(ir: KernelIR, expr: sympy.Basic) -> sympy.Basic:
    """``expr`` with the CSE temporaries substituted back (temps are in dependency order)."""
    for sym, value in reversed(ir.temps):
        expr = expr.xreplace({sym: value})
    return expr


def _value_reads(expr: sympy.Basic) -> list[sympy.Indexed]:
    """Tensor reads whose value the expression uses (not reads nested in another read's
    index, which only select an element)."""
    found: set[sympy.Indexed] = set()

    def walk(e: sympy.Basic) -> None:
        if isinstance(e, sympy.Indexed):
            found.add(e)
            return
        for a in e.args:
            walk(a)

    walk(expr)
    return sorted(found, key=sympy.default_sort_key)


def _tensor_grads(ir: KernelIR, printer: TritonPrinter, tensors: dict[str, TensorArgs]
                  ) -> tuple[list[GradRead], set[str]]:
    """The score's derivative with respect to each tensor read, for the gradients of
    learnable tensors. Each read becomes a plain symbol before ``sympy.diff`` (sympy would
    otherwise relate reads at different indices through KroneckerDelta, while each read is
    its own term of the chain rule here). A tensor whose derivative cannot be printed gets
    no gradient (the runtime refuses it when it requires grad). Also returns the names of
    the tensors the derivatives read."""
    if ir.score is None:
        return [], set()
    reads = _value_reads(ir.score)
    stand_in = {r: sympy.Dummy(f"read{i}", real=True) for i, r in enumerate(reads)}
    back = {s: r for r, s in stand_in.items()}
    expr = ir.score.xreplace(stand_in)
    grads: dict[str, list[GradRead]] = {}
    failed: set[str] = set()
    deriv_reads: set[str] = set()
    for r in reads:
        name = str(r.base.label)
        deriv = sympy.diff(expr, stand_in[r]).xreplace(back).xreplace({SCORE: QK * SM_SCALE})
        if deriv == 0 or name in failed:
            continue
        try:
            code = printer.code(deriv)
        except NotImplementedError:
            failed.add(name)
            continue
        deriv_reads |= set(_reads([deriv]))
        index_symbols = set().union(*(sympy.sympify(i).free_symbols for i in r.indices))
        grads.setdefault(name, []).append(GradRead(tensors[name], printer.offset(r, "gstride"), code,
                                                   Q_IDX in index_symbols, KV_IDX in index_symbols))
    return [g for name in sorted(grads) if name not in failed for g in grads[name]], deriv_reads


# Symbols that change inside each backward pass's loop. A dK/dV program owns a KV tile and walks
# query tiles, and the query heads of its GQA group; a dQ program owns a query tile (one head)
# and walks KV tiles.
DKDV_LOOP_SYMBOLS = frozenset({Q_IDX, H, QK})
DQ_LOOP_SYMBOLS = frozenset({KV_IDX, QK})


def _program_reads(pred: sympy.Basic | None, printer: TritonPrinter, prefix: str,
                   loop_symbols: frozenset) -> tuple[list[Statement], sympy.Basic | None]:
    """The mask's tensor reads that do not change along one backward program's loop, as
    statements its kernel runs once (named ``prefix`` + i), and the mask over them.

    The masked steps of packed documents read both sides' document ids; the dK/dV program's
    keys are fixed, so their ids are one read per program instead of one per step. On the
    H100 that measured even (benchmarks/NOTES.md, "serialized wgmma"): the step's registers
    go to the comparison itself. It keeps each step's loads to the side that changes."""
    if pred is None:
        return [], None
    subs = _invariant_reads([pred], loop_symbols, prefix)
    pred = pred.xreplace(subs)
    statements = []
    for read, sym in subs.items():
        if sym in pred.free_symbols:  # not a read nested in another hoisted one
            printer.names[sym] = str(sym)
            statements.append(Statement(str(sym), printer.define(sym, read)))
    return statements, pred


def backward_context(ir: KernelIR, printer: TritonPrinter, tensors: dict[str, TensorArgs]) -> dict:
    """The backward kernels' expressions: the score in log2 units (as the forward), its
    derivative with respect to the raw score (sympy.diff of the score_mod, evaluated at
    score = qk * sm_scale), its derivatives with respect to the tensors it reads, and the
    mask; printed inline, since the backward kernels also compute them transposed (keys x
    queries)."""
    score = _expand_temps(ir, ir.score_log2)
    dscore = sympy.Integer(1)
    if ir.score is not None:
        dscore = sympy.diff(ir.score, SCORE).xreplace({SCORE: QK * SM_SCALE})
    pred = _expand_temps(ir, ir.tile_pred) if ir.tile_pred is not None else None
    kv_reads, kv_pred = _program_reads(pred, printer, "kv_read", DKDV_LOOP_SYMBOLS)
    q_reads, q_pred = _program_reads(pred, printer, "q_read", DQ_LOOP_SYMBOLS)
    grads, deriv_reads = _tensor_grads(ir, printer, tensors)
    exprs = [score, dscore] + ([pred] if pred is not None else [])
    read_names = set(_reads(exprs)) | deriv_reads
    grad_tensors = sorted({g.tensor.name for g in grads})
    return {
        "score_code": printer.code(score),
        # a score that varies along the tile is already a tile; only a constant one needs
        # broadcasting (adding it to zeros would cost an add per score and block the FMA)
        "score_is_tile": QK in score.free_symbols,
        "dscore_code": None if dscore == 1 else printer.code(dscore),
        "mask_code": printer.code(pred) if pred is not None else None,
        # the mask as each pass's masked step computes it, over the reads its program makes
        # once (``kv_reads`` in the dK/dV kernel, ``q_reads`` in the dQ kernel)
        "kv_mask_code": printer.code(kv_pred) if kv_pred is not None else None,
        "q_mask_code": printer.code(q_pred) if q_pred is not None else None,
        "kv_reads": kv_reads,
        "q_reads": q_reads,
        "tensors": [tensors[n] for n in sorted(read_names)],
        "grads": grads,
        "grad_tensors": [tensors[n] for n in grad_tensors],
        # gradients the launcher computes in torch from per-row values (sink logits)
        "host_grads": ["sinks"] if isinstance(ir.norm, Softmax) and ir.norm.sink else [],
    }


def render(ir: KernelIR) -> str:
    """The Triton module for ``ir`` (deterministic: same IR, same bytes)."""
    if ir.algorithm == CHUNKED_LINEAR:  # its own template and context: render_linear.py
        return render_linear(ir)
    return template_environment().get_template(TEMPLATE).render(**build_context(ir, ir.to_text()))


def template_sources() -> str:
    """All template text, for the cache key: a template change invalidates every kernel."""
    return "\n".join(p.read_text() for p in sorted(template_dir().glob("*.j2")))


def render_generated_test(name: str, variant_text: str, kernel_ir: str) -> str:
    """The pytest module that checks ``name``.py against the reference."""
    for text in (variant_text, kernel_ir):
        if '"""' in text or "\\" in text:
            raise ValueError("IR text cannot be embedded in a Python string literal")
    from ..ir.text import loads  # late: only the CLI's generated tests parse text here

    return template_environment().get_template("test_kernel.py.j2").render(
        version=__version__, name=name, test_file=f"test_{name}.py", variant_text=variant_text,
        kernel_ir=kernel_ir, linear=isinstance(loads(variant_text).norm, Linear))
