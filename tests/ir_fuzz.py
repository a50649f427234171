"""Hostile inputs for the IR parser: strategies that mutate valid IR files and build random
text, a guard that fails the test if parsing runs code, and a time limit per parse.

``check_parse(text)`` is the property every input must satisfy: ``ag.loads`` returns a
Variant or raises ``IRSyntaxError`` carrying a line and a column inside the text, within
``TIME_LIMIT_S`` seconds, and never calls eval/exec/open or imports os-like modules.
"""
from __future__ import annotations

import builtins
import contextlib
import signal
import sys
import types
from typing import Iterator

from hypothesis import strategies as st

import attngen as ag
from attngen._resources import library_dir

IR_TEXTS = {p.stem: p.read_text() for p in sorted(library_dir().glob("*.ir"))}
TIME_LIMIT_S = 10

# Fragments a hostile or careless file contains: operators, deep openers, huge and odd
# numbers, unicode look-alikes, control characters, statement keywords, valid calls.
TOKENS = [
    "(", ")", "[", "]", "**", "*", "+", "-", "/", "//", "%", "&", "|", "~", "^", "==", "<", ">=", ",", "=", ":",
    "9" * 60, "1e308", "1e-400", "10**10**10", "9**9**9", "2.0**4000", "0", "-0.0", "0x1F", "1_000",
    "Piecewise((1, True))", "Max(", "Min(", "Eq(", "FloorDiv(", "Mod(", "exp(", "log(", "sqrt(", "Abs(",
    "oo", "-oo", "nan", "inf", "zoo", "pi", "I", "True", "score", "q_idx", "kv_idx", "h", "b", "slopes[h]",
    "é", "٣", "ℌ", "𝟙", "\u200b", "\ufeff", "\x00", "\t", "\x0c", "\r", "\n", "\u2028", "\ud800", " ", "#",
    "\nattngen 1\n", "\nvariant v\n", "\ntensor t[1]\n", "\ntensor t[99999999]\n", "\nscore s = ",
    "\nmaskmod m = ", "\nmask = ", "\nnorm = ", "causal()", "sliding_window(left=3)",
    "neighborhood(kernel_size=(3, 5))", "document()", "softmax(sink=True)", "sigmoid(bias=-2)",
    "linear(decay=True)", "__import__('os')", "open('x')", "lambda: 0", "score.real", "(" * 120, ")" * 120,
    "-" * 300, "~" * 300,
]


@st.composite
def mutated_ir(draw) -> str:
    """A built-in IR file with a few random edits (deletions, insertions of hostile tokens or
    random characters, duplicated slices)."""
    chars = list(IR_TEXTS[draw(st.sampled_from(sorted(IR_TEXTS)), label="file")])
    for _ in range(draw(st.integers(1, 6), label="edits")):
        pos = draw(st.integers(0, len(chars)))
        op = draw(st.sampled_from(["delete", "token", "char", "duplicate"]))
        if op == "delete" and chars:
            end = min(len(chars), pos + draw(st.integers(1, 20)))
            del chars[pos:end]
        elif op == "token":
            chars[pos:pos] = list(draw(st.sampled_from(TOKENS)))
        elif op == "char":
            chars[pos:pos] = [draw(st.characters(codec=None))]
        else:
            a, b = sorted((draw(st.integers(0, len(chars))), draw(st.integers(0, len(chars)))))
            chars[pos:pos] = chars[a:min(b, a + 300)]
    return "".join(chars)


def token_soup() -> st.SearchStrategy[str]:
    """Random sequences of hostile tokens and arbitrary characters (surrogates included)."""
    return st.lists(st.one_of(st.sampled_from(TOKENS), st.characters()), max_size=60).map("".join)


def expression_soup() -> st.SearchStrategy[str]:
    """A header and one statement whose body is token soup: reaches the expression parser."""
    return st.tuples(st.sampled_from(["score s = ", "maskmod m = ", "mask = ", "norm = ", "tensor t[1]\nscore s = "]),
                     token_soup()).map(lambda t: "attngen 1\n" + t[0] + t[1] + "\n")


@contextlib.contextmanager
def no_code_execution(monkeypatch) -> Iterator[None]:
    """Fail the test if, while inside, anything evaluates a string (eval/exec of source text or
    of code compiled from a string), opens a file, or imports a module from such code: the
    parser must build expressions from the AST itself. (Code objects of real files stay
    allowed: importing sympy's lazily loaded submodules execs them.)"""
    def forbidden(*args, **kwargs):
        raise AssertionError("the IR parser evaluated text, opened a file or imported from evaluated text")

    def from_file(code: object) -> bool:
        name = code.co_filename if isinstance(code, types.CodeType) else "<string>"
        return not name.startswith("<") or name.startswith("<frozen ")  # importlib is frozen

    def guard(real):
        def run(code, *args, **kwargs):
            return real(code, *args, **kwargs) if from_file(code) else forbidden()
        return run

    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        if not from_file(sys._getframe(1).f_code):
            forbidden()
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "eval", guard(builtins.eval))
        m.setattr(builtins, "exec", guard(builtins.exec))
        m.setattr(builtins, "open", forbidden)
        m.setattr(builtins, "__import__", guarded_import)
        yield


class ParseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise ParseTimeout if the block runs longer than ``seconds`` (SIGALRM: the parser and
    sympy are Python code, so the signal interrupts them)."""
    def expire(signum, frame):
        raise ParseTimeout(f"parsing took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_parse(text: str, source: str = "<text>") -> ag.Variant | ag.IRSyntaxError:
    """Parse ``text``; return the Variant or the IRSyntaxError after checking its location."""
    with time_limit(TIME_LIMIT_S):
        try:
            return ag.loads(text, source=source)
        except ag.IRSyntaxError as exc:
            err = exc
    n_lines = text.count("\n") + text.count("\r") + 1
    assert err.source == source, err
    assert isinstance(err.line, int) and 1 <= err.line <= n_lines, (err.line, n_lines, str(err))
    assert isinstance(err.column, int) and err.column >= 1, str(err)
    assert str(err).startswith(f"{source}:{err.line}:{err.column}: "), str(err)
    return err
