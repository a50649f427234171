"""The textual IR: printing, parsing back, round trips, and a parser that never runs code."""
from __future__ import annotations

import textwrap
import warnings

import ir_fuzz
import pytest
import torch
import variant_strategies as vs
from helpers import DEVICE, check, compare, make_qkv
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import attngen as ag

SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def _alibi(score, b, h, q_idx, kv_idx, slopes):
    return score - slopes[h] * abs(q_idx - kv_idx)


def _same_doc(b, h, q_idx, kv_idx, doc):
    return doc[b, q_idx] == doc[b, kv_idx]


def _softcap(score, b, h, q_idx, kv_idx):
    return 30.0 * torch.tanh(score / 30.0)


def _blocks(b, h, q_idx, kv_idx):
    return (q_idx // 16) == (kv_idx // 16)


def _assert_round_trip(v: ag.Variant) -> ag.Variant:
    text = v.to_text()
    back = ag.loads(text)
    assert back == v, f"round trip changed the variant:\n{text}\n{back.to_text()}"
    assert hash(back) == hash(v)
    assert back.to_text() == text, "printing is not canonical"
    assert back.name == v.name
    return back


EXAMPLES = {
    "identity": lambda: ag.Variant(),
    "named": lambda: ag.Variant(name="plain"),
    "causal": lambda: ag.Variant(mask=ag.causal()),
    "bottom_right": lambda: ag.Variant(mask=ag.causal(bottom_right=True)),
    "window": lambda: ag.Variant(mask=ag.sliding_window(127, 3)),
    "document": lambda: ag.Variant(mask=ag.document()),
    "alibi_doc": lambda: ag.Variant(score=_alibi, mask=ag.causal() & _same_doc, name="alibi_doc"),
    "softcap": lambda: ag.Variant(score=_softcap, mask=~ag.sliding_window(4) | ag.document()),
    "blocks": lambda: ag.Variant(mask=ag.mask_mod(_blocks) & ~ag.causal()),
    "float_consts": lambda: ag.Variant(score=lambda s, b, h, q_idx, kv_idx: s * 0.1 + 1e-300 - 1 / 3 + 2.5e17),
    "neg_inf": lambda: ag.Variant(score=lambda s, b, h, q_idx, kv_idx: torch.where(q_idx >= kv_idx, s,
                                                                                   float("-inf"))),
    "sigmoid": lambda: ag.Variant(norm=ag.sigmoid(), mask=ag.causal()),
    "sigmoid_bias": lambda: ag.Variant(norm=ag.sigmoid(bias=-2.5)),
    "sink": lambda: ag.Variant(norm=ag.softmax(sink=True), mask=ag.sliding_window(10)),
    "linear": lambda: ag.Variant(norm=ag.linear("relu", decay=True, normalize=False), mask=ag.causal()),
    "same_name_mods": lambda: ag.Variant(mask=ag.mask_mod(lambda b, h, q_idx, kv_idx: q_idx > 3)
                                         & ag.mask_mod(lambda b, h, q_idx, kv_idx: kv_idx < 9)),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_round_trip_examples(name):
    _assert_round_trip(EXAMPLES[name]())


def test_text_format_example():
    v = EXAMPLES["alibi_doc"]()
    text = v.to_text()
    assert text.startswith("attngen 1\n")
    assert "variant alibi_doc" in text
    assert "tensor slopes[1]" in text and "tensor doc[2]" in text
    assert "captured" not in text
    assert "causal()" in text and "norm = softmax()" in text
    assert str(v) == text


def test_equality_is_structural():
    a = ag.Variant(score=_alibi, mask=ag.causal(), name="one")
    b = ag.Variant(score=ag.score_mod(_alibi), mask=ag.causal(), name="two")
    assert a == b and hash(a) == hash(b)
    assert a != ag.Variant(score=_alibi, mask=ag.causal(bottom_right=True))
    assert a != ag.Variant(score=_alibi)
    assert ag.Variant(mask=ag.sliding_window(3, 1)) != ag.Variant(mask=ag.sliding_window(3, 2))
    assert ag.Variant(mask=ag.causal() & ag.document()) != ag.Variant(mask=ag.causal() | ag.document())


def test_load_from_file(tmp_path):
    v = EXAMPLES["alibi_doc"]()
    path = tmp_path / "alibi_doc.ir"
    path.write_text(v.to_text())
    assert ag.load(path) == v
    assert ag.load(str(path)) == v
    with pytest.raises(FileNotFoundError, match="missing.ir"):
        ag.load(tmp_path / "missing.ir")


def test_hand_written_text_with_comments(tmp_path):
    text = textwrap.dedent("""\
        # a hand-written variant
        attngen 1
        variant windowed_alibi   # trailing comment

        tensor slopes[1]
        score alibi = score - slopes[h]*Abs(q_idx - kv_idx)
        maskmod near = Abs(q_idx - kv_idx) <= 8
        mask = (near & causal())
        norm = softmax()
        """)
    v = ag.loads(text)
    assert v.name == "windowed_alibi"
    assert v == ag.Variant(score=_alibi, mask=ag.mask_mod(lambda b, h, q_idx, kv_idx: abs(q_idx - kv_idx) <= 8)
                           & ag.causal())
    slopes = torch.rand(2, device=DEVICE)
    check(v, 1, 2, 2, 40, 40, 32, 32, torch.float32, slopes=slopes)


def test_loaded_variant_compiles_like_the_original():
    v = EXAMPLES["alibi_doc"]()
    back = ag.loads(v.to_text())
    a, b = ag.compile(v), ag.compile(back)
    assert a.key == b.key and a.source == b.source
    q, k, vv = make_qkv(1, 2, 2, 32, 32, 16, 16, torch.float32)
    tensors = dict(slopes=torch.rand(2, device=DEVICE), doc=torch.zeros(1, 32, dtype=torch.int64, device=DEVICE))
    torch.testing.assert_close(a(q, k, vv, **tensors), b(q, k, vv, **tensors), rtol=0, atol=0)


def test_loaded_mod_has_no_python_body():
    back = ag.loads(EXAMPLES["alibi_doc"]().to_text())
    with pytest.raises(TypeError, match="no Python body"):
        back.score(0.0, 0, 0, 0, 0)


# --------------------------------------------------------------------------- captures
def test_captured_tensors_print_captured_and_need_binding():
    head_offset = torch.rand(4, device=DEVICE)

    def score_mod(score, b, h, m, n):
        return score * head_offset[h]

    v = ag.Variant(score=score_mod)
    text = v.to_text()
    assert "tensor head_offset[1] captured" in text
    back = ag.loads(text)
    assert back != v  # the tensor itself is not in the text
    assert back.to_text() == text
    attn = ag.compile(back)
    q, k, vv = make_qkv(1, 4, 4, 24, 24, 16, 16, torch.float32)
    with pytest.raises(TypeError, match="head_offset"):
        attn(q, k, vv)
    bound = back.with_captures(head_offset=head_offset)
    assert bound == v and hash(bound) == hash(v)
    compare(bound, q, k, vv)
    torch.testing.assert_close(ag.compile(bound)(q, k, vv), ag.compile(v)(q, k, vv), rtol=0, atol=0)
    with pytest.raises(TypeError, match="nope"):
        back.with_captures(nope=head_offset)


def test_captured_mask_tensor_round_trip():
    allowed = torch.tensor([1, 0, 1, 1] * 8, device=DEVICE, dtype=torch.int32)

    def keys(b, h, q_idx, kv_idx):
        return allowed[kv_idx] != 0

    v = ag.Variant(mask=ag.causal() & keys)
    back = ag.loads(v.to_text())
    assert "tensor allowed[1] captured" in v.to_text()
    assert back.with_captures(allowed=allowed) == v
    check(back.with_captures(allowed=allowed), 1, 2, 2, 32, 32, 16, 16, torch.float32)


# --------------------------------------------------------------------------- parser safety
MALICIOUS = [
    "score s = __import__('os').system('touch {marker}')",
    "score s = __import__('pathlib').Path('{marker}').touch()",
    "score s = score.__class__",
    "score s = score.real",
    "score s = (lambda: open('{marker}', 'w'))()",
    "score s = [x for x in ()]",
    "score s = exec('open(\"{marker}\", \"w\")')",
    "score s = eval('1')",
    "score s = open('{marker}', 'w')",
    "score s = getattr(score, 'real')",
    "score s = score if True else 0",
    "score s = {{1: 2}}[1]",
    "score s = 'text'",
    "score s = score; import os",
    "score s = (score := 1)",
    "score s = exp(score, key=1)",
    "maskmod m = __import__('os').system('touch {marker}') == 0\nmask = m",
    "mask = __import__('os').system('touch {marker}')",
    "mask = causal(bottom_right=__import__('os').system('touch {marker}'))",
    "norm = softmax(sink=__import__('os').system('touch {marker}'))",
    "norm = __import__('os').system('touch {marker}')",
    "tensor os[1]\nscore s = os.system('touch {marker}')",
    "variant __import__('os')",
    "import os",
    "attngen 2",
    "score s = unknown_name + score",
    "mask = causal(True)",
    "mask = sliding_window(right=2)",
    "tensor t[1]\nscore s = t",
    "tensor t[1]\nscore s = t[h, h]",
    "tensor t[1]\nscore s = score",
    "maskmod m = q_idx + 1\nmask = m",
    "score s = q_idx > kv_idx",
    "score s = 1 < q_idx < 3",
    "score s = score\nscore t = score",
    "score s = inf",
    "score s = 1e400",
    "score s = nan",
    "score s = zoo",
    "score s = oo - oo",
    "score s = score + 1/0",
    "maskmod m = q_idx < log(0)\nmask = m",
    "norm = sigmoid(bias=1e400)",
]


@pytest.mark.parametrize("body", MALICIOUS)
def test_parser_rejects_and_never_executes(body, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    text = "attngen 1\n" + body.format(marker=marker) + "\n"
    with ir_fuzz.no_code_execution(monkeypatch):
        with pytest.raises(ag.IRSyntaxError) as info:
            ag.loads(text)
    assert not marker.exists()
    assert "<text>:" in str(info.value)  # names where the problem is
    assert isinstance(info.value, ValueError)


def test_parser_rejects_piecewise_without_default():
    with pytest.raises(ag.IRSyntaxError):
        ag.loads("attngen 1\nscore s = Piecewise((score, q_idx > 1))\n")


def test_parse_errors_name_the_line():
    text = "attngen 1\n\n# comment\nscore s = score.real\n"
    with pytest.raises(ag.IRSyntaxError, match=r"<text>:4"):
        ag.loads(text)
    with pytest.raises(ag.IRSyntaxError, match=r"my.ir:2"):
        ag.loads("attngen 1\nbogus statement\n", source="my.ir")


def test_loads_rejects_non_text():
    with pytest.raises(TypeError):
        ag.loads(b"attngen 1\n")


# --------------------------------------------------------------------------- hypothesis
@settings(max_examples=60, **SETTINGS)
@given(tree=vs.float_exprs(), mask=st.one_of(st.none(), vs.masks()), name=st.sampled_from([None, "v", "my_variant"]))
def test_round_trip_random_variants(tree, mask, name):
    v = vs.variant(score=vs.score_fn(tree), mask=mask, name=name)
    _assert_round_trip(v)


@settings(max_examples=40, **SETTINGS)
@given(mask=vs.masks(max_depth=4))
def test_round_trip_random_masks(mask):
    _assert_round_trip(ag.Variant(mask=mask))


def _reference_outputs(v: ag.Variant):
    """The oracle's (out, lse) for ``v`` on fixed tiny inputs (every tensor the grammar uses)."""
    g = torch.Generator().manual_seed(1)
    B, H, L = 2, 2, 12
    q, k, val = (torch.randn(B, H, L, 16, generator=g, dtype=torch.float64) for _ in range(3))
    pool = {"bias": torch.randn(H, generator=g), "table": torch.randn(L, L, generator=g),
            "flags": torch.randint(-3, 6, (L,), generator=g),
            "document_ids": torch.tensor([[0] * 5 + [1] * 7, [0] * 9 + [2] * 3])}
    tensors = {p.name: pool[p.name] for p in v.runtime_tensors()}
    return ag.reference(v)(q.float(), k.float(), val.float(), return_lse=True, **tensors)


@settings(max_examples=60, **SETTINGS)
@given(tree=vs.float_exprs(max_leaves=10), mask=st.one_of(st.none(), vs.masks()))
def test_round_trip_preserves_meaning(tree, mask):
    """Bigger random variants: the text parses back to an equal variant, printing it again is
    a fixed point, and the parsed variant computes exactly what the original does."""
    v = vs.variant(score=vs.score_fn(tree), mask=mask)
    text = v.to_text()
    back = ag.loads(text)
    assert back == v
    again = ag.loads(back.to_text())
    assert again == back and again.to_text() == back.to_text()
    assert back.tensors() == v.tensors()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = _reference_outputs(v)
        except (NotImplementedError, RuntimeError, OverflowError):  # e.g. a huge integer power
            reject()
        got = _reference_outputs(back)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, equal_nan=True)


# ---- regressions: round-trip bugs this suite found ---------------------------------------
def test_round_trip_sigmoid_over_two():
    _assert_round_trip(ag.Variant(score=lambda score, b, h, q_idx, kv_idx: torch.sigmoid(score) / 2))


def test_round_trip_reads_under_abs_exp():
    v = ag.Variant(score=lambda score, b, h, q_idx, kv_idx, w: score * abs(torch.exp(w[h])))
    _assert_round_trip(v)
    check(v, 1, 2, 2, 16, 16, 16, 16, torch.float32, w=torch.randn(2, device=DEVICE))


def test_round_trip_tautology_over_reads():
    def always(b, h, q_idx, kv_idx, flags):
        x = abs(flags[kv_idx] // 2) % 2
        return (x >= 5) | ((x < 5) | (-abs(flags[kv_idx]) < flags[kv_idx] // 5))

    v = ag.Variant(mask=ag.mask_mod(always) & ag.causal())
    _assert_round_trip(v)


# ---- non-finite constants: sympy folds constants with an unbounded exponent, so a traced
# score can hold a Float beyond the double range; it must print as oo, which the parser reads
def exp_of_folded_constant(score, b, h, q_idx, kv_idx):
    return torch.exp(torch.where(b < b, score, 12345.678))  # b < b folds: exp(12345.678)


NON_FINITE = {
    "exp_overflow": (exp_of_folded_constant, "score exp_of_folded_constant = oo"),
    "product_overflow": (lambda score, b, h, q_idx, kv_idx: score * 1e308 * 10, "= oo*score"),
    "negative_overflow": (lambda score, b, h, q_idx, kv_idx: torch.where(q_idx >= kv_idx, score,
                                                                          -torch.exp(score * 0 + 800.0)),
                          "(-oo, True)"),
    "inf": (lambda score, b, h, q_idx, kv_idx: torch.where(q_idx >= kv_idx, score, float("inf")), "(oo, True)"),
    "neg_inf": (lambda score, b, h, q_idx, kv_idx: torch.where(q_idx >= kv_idx, score, float("-inf")),
                "(-oo, True)"),
}


@pytest.mark.parametrize("name", list(NON_FINITE))
def test_round_trip_non_finite_score_constants(name):
    fn, printed = NON_FINITE[name]
    v = _assert_round_trip(ag.Variant(score=ag.score_mod(fn)))
    assert printed in v.to_text()
    assert "inf" not in v.to_text()  # one spelling: sympy's oo


@pytest.mark.parametrize("pred", [
    lambda b, h, q_idx, kv_idx: (kv_idx - q_idx) * 1e300 * 1e300 < 1.0,
    lambda b, h, q_idx, kv_idx: (kv_idx - q_idx) * 0.5 > float("-inf"),
    lambda b, h, q_idx, kv_idx: kv_idx * 1.5 < torch.exp(torch.where(b < b, q_idx * 1.0, 12345.678)) + q_idx,
])
def test_round_trip_non_finite_mask_constants(pred):
    _assert_round_trip(ag.Variant(mask=ag.mask_mod(pred) & ag.causal()))


@pytest.mark.parametrize("body, printed", [("score + 1e300*1e300", "oo"), ("exp(12345.678)*score", "oo*score"),
                                           ("-exp(1000.0)", "-oo"), ("score + -oo", "-oo")])
def test_parsed_overflow_prints_canonically(body, printed):
    """Finite literals that fold past the double range read as oo, so printing is a fixed point."""
    v = ag.loads(f"attngen 1\nscore s = {body}\n")
    assert v.to_text() == f"attngen 1\nscore s = {printed}\nnorm = softmax()\n"
    _assert_round_trip(v)


@pytest.mark.parametrize("fn, what", [
    (lambda score, b, h, q_idx, kv_idx: score + float("inf") - float("inf"), "NaN"),
    (lambda score, b, h, q_idx, kv_idx: score * 0 * float("inf"), "NaN"),
    (lambda score, b, h, q_idx, kv_idx: score + 1 / torch.where(b < b, score, 0.0), "unknown sign"),
    (lambda score, b, h, q_idx, kv_idx: torch.log(torch.where(b < b, score, 0.0)), "unknown sign"),
])
def test_undefined_scores_are_refused_when_traced(fn, what):
    """A score that folds to NaN or to sympy's unsigned infinity is a bug in the function: the
    tracer names it, instead of the text parser failing on 'nan' or 'zoo' later."""
    with pytest.raises(ag.TraceError, match=rf"score_mod 'undefined'.*{what}"):
        ag.score_mod(fn, name="undefined")


def test_undefined_mask_is_refused_when_traced():
    # sympy itself refuses to order against zoo; the TraceError still names the function
    with pytest.raises(ag.TraceError, match=r"mask_mod 'undefined'.*zoo"):
        ag.mask_mod(lambda b, h, q_idx, kv_idx: q_idx * 1.0 < 1 / torch.where(b < b, q_idx * 1.0, 0.0),
                    name="undefined")


def test_non_finite_sigmoid_bias_is_refused():
    for bias in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ValueError, match="finite"):
            ag.sigmoid(bias=bias)
