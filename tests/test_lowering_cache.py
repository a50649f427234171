"""The lowering cache: a stored IR renders exactly what the passes produce, stale or broken
files are ignored, and watching the passes always runs them."""
from __future__ import annotations

import pickle

import pytest
import torch
import variant_strategies as vs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attngen as ag
from attngen.codegen.render import render
from attngen.library import builtin, builtin_names
from attngen.passes import lower
from attngen.runtime import lowering_cache


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(root))
    return root


def _round_trip(v: ag.Variant):
    fresh = lower(v)
    lowering_cache.store(v, fresh, fresh.to_text())
    found = lowering_cache.load(v)
    assert found is not None and found[1] == fresh.to_text()
    return fresh, found[0]


def _assert_same_kernel(fresh, stored):
    assert stored.to_text() == fresh.to_text()
    assert stored.passes == fresh.passes
    assert render(stored) == render(fresh)


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_variants_round_trip(cache_dir, name):
    fresh, stored = _round_trip(builtin(name))
    _assert_same_kernel(fresh, stored)
    assert stored == fresh  # no captured tensors: equal as values too


def test_captured_tensors_and_functions_are_not_stored(cache_dir):
    bias = torch.randn(4, 8)
    doc = torch.zeros(2, 64, dtype=torch.int32)

    def biased(score, b, h, q_idx, kv_idx):
        return score + bias[h, q_idx % 8]

    def same_doc(b, h, q_idx, kv_idx):
        return doc[b, q_idx] == doc[b, kv_idx]

    v = ag.Variant(score=biased, mask=ag.causal() & ag.mask_mod(same_doc), name="captures")
    fresh, stored = _round_trip(v)
    _assert_same_kernel(fresh, stored)
    data = next(cache_dir.glob("lowered/*/*.pickle")).read_bytes()
    assert b"_rebuild_tensor" not in data, "a captured tensor was pickled"
    loaded = pickle.loads(data)[1]  # (key, ir, text)
    traced = [m for m in _mask_nodes(loaded.mask) if isinstance(m, ag.MaskMod)]
    assert traced and all(m.fn is None and m.captures == () for m in traced)


def _mask_nodes(mask):
    yield mask
    for child in getattr(mask, "children", lambda: ())():
        yield from _mask_nodes(child)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=vs.float_exprs(max_leaves=8), mask=st.one_of(st.none(), vs.masks()))
def test_random_variants_round_trip(cache_dir, tree, mask):
    v = vs.variant(score=vs.score_fn(tree), mask=mask)
    try:
        fresh, stored = _round_trip(v)
    except ag.UnsupportedVariant:
        return
    _assert_same_kernel(fresh, stored)


def test_overflowing_constant_round_trips(cache_dir):
    """The draw hypothesis found: ``b < b`` folds, so the score is exp(12345.678), a sympy Float
    beyond the double range; its text (and so the cache key) must read back (it prints oo)."""
    tree = ("un", "exp", ("where", ("cmp", "<", ("var", "b"), ("var", "b")), ("var", "score"),
                          ("const", 12345.678)))
    v = vs.variant(score=vs.score_fn(tree))
    try:
        fresh, stored = _round_trip(v)
    except ag.UnsupportedVariant:
        return
    _assert_same_kernel(fresh, stored)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_key"])
def test_broken_entries_are_ignored_and_replaced(cache_dir, damage):
    v = builtin(builtin_names()[0])
    lowering_cache.store(v, lower(v), lower(v).to_text())
    path = next(cache_dir.glob("lowered/*/*.pickle"))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a pickle")
    else:
        path.write_bytes(pickle.dumps(("another key", lower(v), "text")))
    assert lowering_cache.load(v) is None
    attn = ag.compile(v)  # lowers again and stores a whole entry
    assert lowering_cache.load(v) is not None
    assert str(attn.ir) == str(lower(v))


def test_a_change_to_the_compiler_misses(cache_dir, monkeypatch):
    v = builtin(builtin_names()[0])
    lowering_cache.store(v, lower(v), lower(v).to_text())
    assert lowering_cache.load(v) is not None
    monkeypatch.setattr(lowering_cache, "compiler_fingerprint", lambda: "an edited pass")
    assert lowering_cache.load(v) is None


def test_watching_the_passes_runs_them(cache_dir):
    v = builtin(builtin_names()[0])
    ag.compile(v)  # stores the lowering
    seen = []
    ag.compile(v, after_each_pass=lambda name, ir: seen.append(name))
    assert seen[0] == "input" and len(seen) > 3
