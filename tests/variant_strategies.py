"""Hypothesis strategies for random FlexAttention-style score_mods and mask trees.

A strategy draws an expression *tree* (nested tuples); ``score_fn(tree)`` / ``mask_fn(tree)``
turn it into an ordinary Python function written the way a user would (operators, ``abs``,
``torch.where/exp/tanh/...``), which attngen then traces. So the trees exercise the tracer,
the IR printer/parser and (in the numeric tests) the code generator.
"""
from __future__ import annotations

import math

import torch
from hypothesis import reject
from hypothesis import strategies as st

import attngen as ag

INDEX = ("b", "h", "q_idx", "kv_idx")

# ----------------------------------------------------------------------------- evaluation
_UNARY = {
    "neg": lambda x: -x,
    "abs": lambda x: abs(x),
    "exp": lambda x: torch.exp(x),
    "tanh": lambda x: torch.tanh(x),
    "sin": lambda x: torch.sin(x),
    "cos": lambda x: torch.cos(x),
    "sigmoid": lambda x: torch.sigmoid(x),
    "sqrt1": lambda x: torch.sqrt(x * x + 1),
    "exp2": lambda x: torch.exp2(x),
    "log1": lambda x: torch.log(abs(x) + 1),
    "clamp": lambda x: torch.clamp(x, min=-1.5, max=2),
}
# The same functions on plain Python numbers (a subtree of constants, which a user would
# not hand to torch.* but which the grammar can draw).
_UNARY_PY = {
    "neg": lambda x: -x,
    "abs": abs,
    "exp": math.exp,
    "tanh": math.tanh,
    "sin": math.sin,
    "cos": math.cos,
    "sigmoid": lambda x: 1 / (1 + math.exp(-x)),
    "sqrt1": lambda x: math.sqrt(x * x + 1),
    "exp2": lambda x: 2.0 ** x,
    "log1": lambda x: math.log(abs(x) + 1),
    "clamp": lambda x: min(max(x, -1.5), 2),
}
_BINARY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "min": lambda a, b: torch.minimum(a, b),
    "max": lambda a, b: torch.maximum(a, b),
}
_CMP = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class Unrepresentable(Exception):
    """A constant subtree overflowed; the example is discarded (see ``variant``)."""


def _constant(fn, *args):
    try:
        out = fn(*args)
    except (OverflowError, ValueError, ZeroDivisionError):
        raise Unrepresentable from None
    if isinstance(out, float) and not math.isfinite(out):
        raise Unrepresentable
    return out


def variant(**kwargs) -> ag.Variant:
    """``ag.Variant(**kwargs)``, discarding examples whose constants overflow while tracing."""
    try:
        return ag.Variant(**kwargs)
    except ag.TraceError as exc:
        if isinstance(exc.__cause__, Unrepresentable):
            reject()
        raise


def evaluate(tree, env):
    kind = tree[0]
    if kind == "var":
        return env[tree[1]]
    if kind == "const":
        return tree[1]
    if kind == "read":
        name, idx = tree[1], tree[2]
        return env[name][tuple(evaluate(i, env) for i in idx)] if len(idx) > 1 else env[name][evaluate(idx[0], env)]
    if kind == "un":
        x = evaluate(tree[2], env)
        return _constant(_UNARY_PY[tree[1]], x) if _number(x) else _UNARY[tree[1]](x)
    if kind == "bin":
        a, b = evaluate(tree[2], env), evaluate(tree[3], env)
        if tree[1] in ("min", "max") and (_number(a) or _number(b)):
            if _number(a) and _number(b):
                return min(a, b) if tree[1] == "min" else max(a, b)
            # torch.minimum/maximum need two tensors; with a number one writes clamp
            x, c = (b, a) if _number(a) else (a, b)
            return torch.clamp(x, max=c) if tree[1] == "min" else torch.clamp(x, min=c)
        return _constant(_BINARY[tree[1]], a, b) if _number(a) and _number(b) else _BINARY[tree[1]](a, b)
    if kind == "div":  # by a non-zero constant
        return evaluate(tree[1], env) / tree[2]
    if kind == "floordiv":  # int expression // positive int
        return evaluate(tree[1], env) // tree[2]
    if kind == "mod":
        return evaluate(tree[1], env) % tree[2]
    if kind == "where":
        c, a, b = evaluate(tree[1], env), evaluate(tree[2], env), evaluate(tree[3], env)
        if isinstance(c, bool):  # torch.where needs a tensor condition
            return a if c else b
        return torch.where(c, a, b)
    if kind == "cmp":
        return _CMP[tree[1]](evaluate(tree[2], env), evaluate(tree[3], env))
    if kind == "and":
        return evaluate(tree[1], env) & evaluate(tree[2], env)
    if kind == "or":
        return evaluate(tree[1], env) | evaluate(tree[2], env)
    if kind == "not":
        x = evaluate(tree[1], env)
        return (not x) if isinstance(x, bool) else ~x
    raise ValueError(tree)


def uses(tree, name: str) -> bool:
    if isinstance(tree, tuple):
        if tree[:2] == ("read", name):
            return True
        return any(uses(t, name) for t in tree[1:])
    return False


def score_fn(tree, tensors: dict | None = None):
    """``fn(score, b, h, q_idx, kv_idx, bias, table)`` evaluating ``tree``; ``bias`` (read as
    ``bias[h]``) and ``table`` (``table[q_idx, kv_idx]``) are runtime tensor parameters, and
    ``tensors`` are closure captures."""
    captured = dict(tensors or {})

    def generated(score, b, h, q_idx, kv_idx, bias, table):
        return evaluate(tree, {"score": score, "b": b, "h": h, "q_idx": q_idx, "kv_idx": kv_idx, "bias": bias,
                               "table": table, **captured})

    return generated


def mask_fn(tree, tensors: dict | None = None):
    """``fn(b, h, q_idx, kv_idx, flags)`` evaluating ``tree`` (``flags[kv_idx]`` is a runtime read)."""
    captured = dict(tensors or {})

    def generated(b, h, q_idx, kv_idx, flags):
        return evaluate(tree, {"b": b, "h": h, "q_idx": q_idx, "kv_idx": kv_idx, "flags": flags, **captured})

    return generated


# ----------------------------------------------------------------------------- round-trip grammar
def int_exprs(max_leaves: int = 6, reads: bool = False):
    choices = [st.sampled_from([("var", n) for n in INDEX]), st.integers(-7, 40).map(lambda c: ("const", c))]
    if reads:
        choices.append(st.just(("read", "flags", (("var", "kv_idx"),))))
    leaves = st.one_of(*choices)
    return st.recursive(leaves, lambda sub: st.one_of(
        st.tuples(st.just("bin"), st.sampled_from(["+", "-", "*"]), sub, sub),
        st.tuples(st.just("un"), st.sampled_from(["neg", "abs"]), sub),
        st.tuples(st.just("floordiv"), sub, st.integers(1, 9)),
        st.tuples(st.just("mod"), sub, st.integers(1, 9)),
    ), max_leaves=max_leaves)


def bool_exprs(ints, floats=None, max_leaves: int = 4):
    operands = ints if floats is None else st.one_of(ints, floats)
    cmp = st.tuples(st.just("cmp"), st.sampled_from(list(_CMP)), operands, operands)
    return st.recursive(cmp, lambda sub: st.one_of(
        st.tuples(st.just("and"), sub, sub),
        st.tuples(st.just("or"), sub, sub),
        st.tuples(st.just("not"), sub),
    ), max_leaves=max_leaves)


# Float constants a score_mod plausibly contains. (sympy folds constants with unbounded
# exponents, so e.g. exp2 of 1e3 or a product of 1e-200s leaves the double range; the text
# prints such a constant as oo, but folding it further can give NaN, which the tracer refuses.
# That is not something users write; test_text has explicit cases.)
FLOAT_CONSTANTS = st.one_of(
    st.floats(-8, 8, allow_nan=False, width=64),
    st.sampled_from([0.1, 1 / 3, -2.5e-3, 1e-6, 12345.678, 0.5, 2.0, 1.4426950408889634]),
)


def float_exprs(max_leaves: int = 8, reads: bool = True):
    """Score expressions for round trips (any floats; no numeric safety)."""
    ints = int_exprs(3)
    leaf_choices = [st.just(("var", "score")),
                    FLOAT_CONSTANTS.map(lambda c: ("const", c)),
                    ints]
    if reads:
        leaf_choices.append(st.sampled_from([("read", "bias", (("var", "h"),)),
                                             ("read", "table", (("var", "q_idx"), ("var", "kv_idx")))]))
    leaves = st.one_of(*leaf_choices)
    return st.recursive(leaves, lambda sub: st.one_of(
        st.tuples(st.just("bin"), st.sampled_from(list(_BINARY)), sub, sub),
        st.tuples(st.just("un"), st.sampled_from(list(_UNARY)), sub),
        st.tuples(st.just("div"), sub, st.sampled_from([2, 3, 7, 0.5, -1.25])),
        st.tuples(st.just("where"), bool_exprs(ints, max_leaves=2), sub, sub),
    ), max_leaves=max_leaves)


def safe_int_exprs(reads: bool = True):
    """Index arithmetic for the compile-and-run fuzz tests: sums of simple terms (variables,
    small multiples, ``//`` and ``%`` by constants, distances, an integer tensor read), so that
    values stay in a range where every comparison is exact in float32 as well."""
    var = st.sampled_from([("var", n) for n in INDEX])
    term = st.one_of(
        var,
        st.integers(-20, 60).map(lambda c: ("const", c)),
        st.tuples(st.just("bin"), st.just("*"), var, st.integers(-3, 3).map(lambda c: ("const", c))),
        st.tuples(var, st.integers(1, 17)).map(lambda t: ("floordiv", t[0], t[1])),
        st.tuples(var, st.integers(1, 9)).map(lambda t: ("mod", t[0], t[1])),
        st.tuples(st.integers(-3, 3), var, st.integers(1, 9)).map(
            lambda t: ("bin", "*", ("const", t[0]), ("mod", t[1], t[2]))),
        st.tuples(var, var).map(lambda t: ("un", "abs", ("bin", "-", t[0], t[1]))),
        *([st.just(("read", "flags", (("var", "kv_idx"),)))] if reads else []),
    )
    return st.recursive(term, lambda sub: st.tuples(st.just("bin"), st.sampled_from(["+", "-"]), sub, sub),
                        max_leaves=3)


@st.composite
def masks(draw, max_depth: int = 3, allow_document: bool = True, allow_mods: bool = True,
          safe_arith: bool = False):
    """A mask tree of built-ins and mask_mods composed with &, | and ~."""
    def leaf():
        options = ["causal", "window"] + (["document"] if allow_document else []) + (["mod"] if allow_mods else [])
        kind = draw(st.sampled_from(options))
        if kind == "causal":
            return ag.causal(bottom_right=draw(st.booleans()))
        if kind == "window":
            return ag.sliding_window(draw(st.integers(0, 40)), draw(st.integers(0, 40)))
        if kind == "document":
            return ag.document()
        ints = safe_int_exprs() if safe_arith else int_exprs(4, reads=True)
        tree = draw(bool_exprs(ints, max_leaves=3))
        return ag.mask_mod(mask_fn(tree))

    def node(depth):
        if depth == 0 or draw(st.integers(0, 2)) == 0:
            return leaf()
        op = draw(st.sampled_from(["&", "|", "~"]))
        if op == "~":
            return ~node(depth - 1)
        a, b = node(depth - 1), node(depth - 1)
        return a & b if op == "&" else a | b

    return node(max_depth)


# ----------------------------------------------------------------------------- numeric grammar
def bounded_float_exprs(max_leaves: int = 6):
    """Score perturbations whose values stay small (|x| <~ 20), for kernel-vs-oracle fuzzing.

    Index leaves are scaled by 1/32; only sums, bounded unary functions, and constant
    multiples combine them, so fp32 rounding stays far below the test tolerance.
    """
    idx_no_reads = st.one_of(
        st.sampled_from(INDEX).map(lambda n: ("div", ("var", n), 32)),
        st.tuples(st.sampled_from(["q_idx", "kv_idx"]), st.integers(2, 9)).map(
            lambda t: ("div", ("mod", ("var", t[0]), t[1]), 4)),
        st.tuples(st.sampled_from(["q_idx", "kv_idx"]), st.integers(2, 17)).map(
            lambda t: ("div", ("floordiv", ("var", t[0]), t[1]), 8)),
        st.tuples(st.sampled_from(["sin", "cos", "tanh"]), st.sampled_from(["q_idx", "kv_idx"]),
                  st.integers(2, 9)).map(lambda t: ("un", t[0], ("mod", ("var", t[1]), t[2]))),
        st.tuples(st.sampled_from(["sin", "cos", "tanh"]), st.sampled_from(["q_idx", "kv_idx"]),
                  st.integers(2, 17)).map(lambda t: ("un", t[0], ("floordiv", ("var", t[1]), t[2]))),
        st.just(("div", ("un", "abs", ("bin", "-", ("var", "q_idx"), ("var", "kv_idx"))), 64)),
    )
    idx = st.one_of(idx_no_reads, st.just(("read", "bias", (("var", "h"),))))
    # Constants of moderate size: a float32 kernel cannot tell 1e-234 from 0, and a comparison
    # against it would then legitimately differ from the float64 oracle.
    const = st.one_of(st.integers(-200, 200).map(lambda i: i / 100),
                      st.sampled_from([1 / 3, -0.7071067811865476, 1.4426950408889634]))
    leaves = st.one_of(st.just(("var", "score")), idx, const.map(lambda c: ("const", c)))
    cond = st.tuples(st.just("cmp"), st.sampled_from(["<", "<=", ">", ">=", "!="]),
                     st.one_of(st.just(("var", "score")), idx), const.map(lambda c: ("const", c / 2)))
    return st.recursive(leaves, lambda sub: st.one_of(
        st.tuples(st.just("bin"), st.sampled_from(["+", "-", "min", "max"]), sub, sub),
        st.tuples(st.just("un"), st.sampled_from(["neg", "abs", "tanh", "sin", "cos", "sigmoid", "sqrt1"]), sub),
        st.tuples(st.just("un"), st.just("exp"), st.tuples(st.just("un"), st.just("tanh"), sub)),
        st.tuples(st.just("bin"), st.just("*"), const.map(lambda c: ("const", c)), sub),
        st.tuples(st.just("where"), cond, sub, sub),
    ), max_leaves=max_leaves)


# ----------------------------------------------------------------------------- neighborhoods
@st.composite
def neighborhoods(draw, max_tokens: int = 150, ranks=(1, 2, 3)):
    """``(spatial_shape, kwargs of ag.neighborhood)``: a random grid of at most ``max_tokens``
    and a geometry valid on it (1 <= stride <= kernel, kernel * dilation <= side on every
    axis); per-axis tuples, or one all-int geometry for every axis."""
    rank = draw(st.sampled_from(ranks))
    side = {1: 40, 2: 13, 3: 6}[rank]
    shape = []
    for a in range(rank):
        budget = max_tokens // max(math.prod(shape), 1)
        shape.append(draw(st.integers(1, max(1, min(side, budget // (2 ** (rank - a - 1)) or 1)))))
    shape = tuple(shape)
    if draw(st.booleans()):  # all-int geometry: must fit the smallest axis
        n = min(shape)
        k = draw(st.integers(1, n))
        return shape, dict(kernel_size=k, dilation=draw(st.integers(1, n // k)), stride=draw(st.integers(1, k)),
                           is_causal=draw(st.booleans()))
    ks, ds, ss, cs = [], [], [], []
    for n in shape:
        k = draw(st.integers(1, n))
        ks.append(k)
        ds.append(draw(st.integers(1, n // k)))
        ss.append(draw(st.integers(1, k)))
        cs.append(draw(st.booleans()))
    return shape, dict(kernel_size=tuple(ks), dilation=tuple(ds), stride=tuple(ss), is_causal=tuple(cs))


# ----------------------------------------------------------------------------- normalizations
SOFTMAX_LIKE = {"softmax": ag.softmax(), "sinks": ag.softmax(sink=True), "sigmoid": ag.sigmoid(),
                "sigmoid_bias": ag.sigmoid(bias=-1.25)}


def normalizations():
    """Every non-linear normalization (linear attention has its own test: no score_mod,
    no mask but causal)."""
    return st.sampled_from(sorted(SOFTMAX_LIKE)).map(SOFTMAX_LIKE.get)


def linear_normalizations():
    return st.builds(ag.linear, st.sampled_from(["identity", "elu1", "relu"]), st.booleans(), st.booleans())
