"""The textual IR under hostile input: random bytes and characters, mutations of the built-in
IR files, deep nesting, huge numbers, unicode. ``ag.loads`` / ``ag.load`` either return a
Variant or raise ``IRSyntaxError`` with a line and a column, within seconds, without running
code; an empty text or one without a variant is an error. Cases the fuzzers found are kept
below as explicit regressions."""
from __future__ import annotations

import ir_fuzz
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from properties import examples

import attngen as ag
from attngen.library import builtin, builtin_names


@settings(max_examples=examples(150))
@given(text=ir_fuzz.mutated_ir())
def test_mutated_ir_files(text, monkeypatch):
    with ir_fuzz.no_code_execution(monkeypatch):
        result = ir_fuzz.check_parse(text)
    if isinstance(result, ag.Variant):  # an edit that left valid IR: it must print and read back
        assert ag.loads(result.to_text()) == result


@settings(max_examples=examples(150))
@given(text=st.one_of(ir_fuzz.token_soup(), ir_fuzz.expression_soup(), st.text()))
def test_random_text(text, monkeypatch):
    with ir_fuzz.no_code_execution(monkeypatch):
        ir_fuzz.check_parse(text)


@settings(max_examples=examples(40))
@given(data=st.binary(max_size=400))
def test_random_bytes_through_load(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("ir") / "fuzz.ir"
    path.write_bytes(data)
    with ir_fuzz.time_limit(ir_fuzz.TIME_LIMIT_S):
        try:
            ag.load(path)
        except ag.IRSyntaxError as exc:
            assert exc.source == str(path) and exc.line >= 1 and exc.column >= 1


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_files_round_trip(name):
    v = builtin(name)
    assert ag.loads(v.to_text()) == v
    assert ag.loads(ir_fuzz.IR_TEXTS[name]) == v


# --------------------------------------------------------------------------- no variant
@pytest.mark.parametrize("text,message", [
    ("", "empty text"),
    ("   \n\n", "empty text"),
    ("# only a comment\n", "empty text"),
    ("attngen 1\n", "no variant"),
    ("attngen 1\n# and a comment\n", "no variant"),
    ("norm = softmax()\n", "expected 'attngen 1' as the first statement"),
])
def test_text_without_a_variant_is_an_error(text, message):
    with pytest.raises(ag.IRSyntaxError, match=message):
        ag.loads(text)


def test_load_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.ir"
    path.write_text("")
    with pytest.raises(ag.IRSyntaxError, match="empty text") as info:
        ag.load(path)
    assert info.value.source == str(path)


def test_load_non_utf8_names_the_byte(tmp_path):
    path = tmp_path / "latin1.ir"
    path.write_bytes("attngen 1\nvariant caf\xe9\n".encode("latin-1"))
    with pytest.raises(ag.IRSyntaxError, match="0xe9 is not UTF-8") as info:
        ag.load(path)
    assert (info.value.line, info.value.column) == (2, 12)


def test_load_directory_or_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot read IR file"):
        ag.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="cannot read IR file"):
        ag.load(tmp_path / "missing.ir")


def test_byte_order_mark_and_line_endings_are_accepted():
    v = ag.Variant(mask=ag.causal())
    text = v.to_text()
    assert ag.loads("\ufeff" + text) == v
    assert ag.loads(text.replace("\n", "\r\n")) == v
    assert ag.loads(text.replace("\n", "\r")) == v


# --------------------------------------------------------------------------- regressions
H = "attngen 1\n"
REGRESSIONS = {
    # (text, line, column, message): each escaped as another exception, hung, or was accepted
    "deep unary minus (RecursionError)": (H + "score s = " + "-" * 500 + "score", 2, 111, "nested too deeply"),
    "deep invert (RecursionError)": (H + "maskmod m = " + "~" * 3000 + "(q_idx < 1)\nmask = m", 2, 13,
                                     "nested too deeply"),
    "deep mask tree (RecursionError)": (H + "mask = " + "~" * 3000 + "causal()", 2, 8, "nested too deeply"),
    "long mask chain (RecursionError)": (
        H + "".join(f"maskmod m{i} = q_idx < {i}\n" for i in range(150))
        + "mask = " + " & ".join(f"m{i}" for i in range(150)), 152, 8, "nested too deeply"),
    "sum of 20000 terms (RecursionError)": (H + "score s = " + "+".join(["score"] * 20000), 2, 11, ""),
    "modulo zero (ZeroDivisionError)": (H + "score s = score + Mod(q_idx, 0)", 2, 19, "Modulo by zero"),
    "floordiv zero (ZeroDivisionError)": (H + "score s = score + q_idx // 0", 2, 19, "division by zero"),
    "bitwise not of a number (TypeError)": (H + "score s = score + ~q_idx", 2, 20, "number where a condition"),
    "condition in arithmetic (TypeError)": (H + "score s = score + (q_idx < 1)", 2, 20, "condition where a number"),
    "lone surrogate (UnicodeEncodeError)": (H + "score s = score + \ud800", 2, 19, "U+D800"),
    "huge int bias (OverflowError)": (H + "norm = sigmoid(bias=" + "9" * 400 + ")", 2, 21, "out of range"),
    "bool bias (accepted as 1.0)": (H + "norm = sigmoid(bias=True)", 2, 21, "wrong type"),
    "sqrt(-1) (accepted as I)": (H + "score s = score + sqrt(-1)", 2, 11, "not a real number"),
    "log(-1) (accepted as I*pi)": (H + "score s = score + log(-1)", 2, 11, "not a real number"),
    "number as a condition (accepted)": (H + "maskmod m = q_idx & kv_idx\nmask = m", 2, 13, "number where a condition"),
    "Piecewise condition a number (accepted)": (H + "score s = Piecewise((score, q_idx), (1, True))", 2, 29,
                                                "number where a condition"),
    "Piecewise mixing conditions and numbers (accepted)": (
        H + "score s = Piecewise((q_idx < 1, q_idx > 3), (1, True))", 2, 11, "mixes conditions and numbers"),
    "float tensor index (accepted)": (H + "tensor t[1]\nscore s = score + t[0.5]", 3, 21, "not an integer"),
    "score as tensor index (accepted)": (H + "tensor t[1]\nscore s = t[score]", 3, 13, "not an integer"),
    "tensor declared twice (second won)": (H + "tensor t[1]\ntensor t[2]\nscore s = score + t[h, h]", 3, 8,
                                           "declared twice"),
    "second mask (replaced the first)": (H + "mask = causal()\nmask = document()", 3, 1, "second 'mask'"),
    "second norm (replaced the first)": (H + "norm = softmax()\nnorm = sigmoid()", 3, 1, "second 'norm'"),
    "window of 10**43 (accepted)": (H + "mask = sliding_window(left=" + "9" * 43 + ")", 2, 28, "out of range"),
    "reserved variant name (no line)": (H + "variant b\n", 2, 9, "reserved"),
    "unused tensor (no line)": (H + "tensor t[1]\nscore s = score\n", 2, 8, "never read"),
    "Max of 40 arguments (minutes in sympy)": (
        H + "score s = Max(" + ", ".join(f"score*{i} + q_idx" for i in range(40)) + ")", 2, 11, "more than 32"),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_hostile_input_regressions(name, monkeypatch):
    text, line, column, message = REGRESSIONS[name]
    with ir_fuzz.no_code_execution(monkeypatch):
        err = ir_fuzz.check_parse(text)
    assert isinstance(err, ag.IRSyntaxError), f"accepted: {err}"
    assert (err.line, err.column) == (line, column), str(err)
    assert message in str(err)


@pytest.mark.parametrize("power", ["10**10**10", "9**9**9", "(-3)**(7**99)", "10**(-10**10)"])
def test_huge_constant_powers_fold_in_floating_point(power):
    """sympy folded these exactly (a number of billions of digits: parsing never ended); past
    4096 bits they fold as floats, which print as oo or 0 and read back equal."""
    with ir_fuzz.time_limit(5):
        v = ag.loads(H + f"score s = score + q_idx*{power}\n")
    assert ag.loads(v.to_text()) == v


def test_deep_but_reasonable_expressions_still_parse():
    """The limits leave room for what tracing produces: long sums and 60 nested calls."""
    long_sum = ag.loads(H + "score s = " + " + ".join(f"{i}*score" for i in range(1, 300)) + " + q_idx")
    assert long_sum.score is not None
    nested = ag.loads(H + "score s = " + "tanh(" * 60 + "score" + ")" * 60)
    assert ag.loads(nested.to_text()) == nested


def test_errors_pickle_with_their_location():
    import pickle

    err = pytest.raises(ag.IRSyntaxError, ag.loads, H + "score s = score +\n").value
    back = pickle.loads(pickle.dumps(err))
    assert (back.source, back.line, back.column, str(back)) == (err.source, err.line, err.column, str(err))
