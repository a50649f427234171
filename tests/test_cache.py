"""The on-disk kernel cache: hits, corrupt entries, other processes, deterministic output."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import DEVICE, check, tolerance

import attngen as ag

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh, empty cache root for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(root))
    return root


def _variant(tag: float = 0.0):
    """A variant of its own (the constant makes the key unique to the test)."""

    def biased(score, b, h, q_idx, kv_idx):
        return score - 0.01 * abs(q_idx - kv_idx) + tag

    return ag.Variant(score=biased, mask=ag.causal())


def _entry(root: Path, key: str) -> Path:
    return root / key[:2] / key


def test_entry_layout(cache_dir):
    attn = ag.compile(_variant(0.125))
    entry = _entry(cache_dir, attn.key)
    assert attn.path == entry / "kernel.py"
    assert sorted(p.name for p in entry.iterdir()) == ["kernel.ir", "kernel.py", "manifest.json"]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256((entry / "kernel.py").read_bytes()).hexdigest()
    assert manifest["key"] == attn.key
    assert (entry / "kernel.ir").read_text() == attn.ir.to_text()
    assert attn.source == (entry / "kernel.py").read_text()
    assert len(attn.key) == 64


def test_second_compile_hits_cache(cache_dir):
    v = _variant(0.25)
    first = ag.compile(v)
    assert first.from_cache is False
    mtime = first.path.stat().st_mtime_ns
    second = ag.compile(v)
    assert second.from_cache is True
    assert second.key == first.key and second.source == first.source
    assert first.path.stat().st_mtime_ns == mtime  # not rewritten
    rebuilt = ag.compile(v, rebuild=True)
    assert rebuilt.from_cache is False and rebuilt.source == first.source


def _corrupt_truncate(entry: Path):
    p = entry / "kernel.py"
    p.write_text(p.read_text()[: len(p.read_text()) // 2])


def _corrupt_edit(entry: Path):
    p = entry / "kernel.py"
    text = p.read_text()
    p.write_text(text.replace("LOG2E = 1.4426950408889634", "LOG2E = 1.4426950408889635"))
    assert p.read_text() != text


def _corrupt_manifest(entry: Path):
    (entry / "manifest.json").write_text("{not json")


def _delete_manifest(entry: Path):
    (entry / "manifest.json").unlink()


def _delete_ir(entry: Path):
    (entry / "kernel.ir").unlink()


def _empty_module(entry: Path):
    (entry / "kernel.py").write_text("")


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_edit, _corrupt_manifest, _delete_manifest,
                                     _delete_ir, _empty_module], ids=lambda f: f.__name__.strip("_"))
def test_corrupt_entry_is_rebuilt(cache_dir, corrupt):
    v = _variant(0.5)
    first = ag.compile(v)
    entry = _entry(cache_dir, first.key)
    original = first.source
    corrupt(entry)
    second = ag.compile(v)
    assert second.from_cache is False, "a corrupt entry must be regenerated"
    assert (entry / "kernel.py").read_text() == original
    assert (entry / "kernel.ir").exists()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(original.encode()).hexdigest()
    # the module was never imported in this process before the corruption, so this call
    # loads the rebuilt file from disk
    check(second, 1, 2, 2, 40, 40, 16, 16, torch.float32)
    assert ag.compile(v).from_cache is True


def test_second_process_loads_from_disk(cache_dir):
    """A second process finds the module, the lowered IR and (on a GPU) the compiled binaries:
    it runs no pass (networkx is never imported) and never computes Triton's cache key."""
    v = _variant(0.75)
    parent = ag.compile(v)
    assert parent.from_cache is False
    q, k, val = (torch.randn(1, 2, 24, 16, device=DEVICE) for _ in range(3))
    parent(q, k, val)  # compiles the binaries, which the entry's index records
    mtime = parent.path.stat().st_mtime_ns
    child_code = textwrap.dedent(f"""
        import json, sys, torch
        import attngen as ag
        import triton.runtime.cache as triton_cache

        def biased(score, b, h, q_idx, kv_idx):
            return score - 0.01 * abs(q_idx - kv_idx) + 0.75

        v = ag.Variant(score=biased, mask=ag.causal())
        attn = ag.compile(v)
        q, k, val = (torch.randn(1, 2, 24, 16, device={DEVICE!r}) for _ in range(3))
        out = attn(q, k, val)
        key_computed = triton_cache.triton_key.cache_info().currsize > 0
        ref = ag.reference(v)(q, k, val)
        err = float((out.double() - ref).norm() / ref.norm())
        print(json.dumps({{"from_cache": attn.from_cache, "key": attn.key, "path": str(attn.path),
                          "source_len": len(attn.source), "err": err, "ran_passes": "networkx" in sys.modules,
                          "triton_key_computed": key_computed}}))
    """)
    env = dict(os.environ)
    env["ATTNGEN_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-c", child_code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["from_cache"] is True
    assert report["key"] == parent.key, "the cache key must not depend on the process"
    assert report["path"] == str(parent.path)
    assert report["source_len"] == len(parent.source)
    assert report["err"] < tolerance(torch.float32)
    assert report["ran_passes"] is False, "the lowered IR should come from the lowering cache"
    assert report["triton_key_computed"] is False, "the binaries should load through the entry's index"
    assert parent.path.stat().st_mtime_ns == mtime


def test_deterministic_source_and_key(cache_dir):
    v = _variant(1.0)
    a = ag.compile(v, rebuild=True)
    b = ag.compile(v, rebuild=True)
    assert a.source == b.source and a.key == b.key and str(a.ir) == str(b.ir)


def test_structurally_equal_variants_share_a_key(cache_dir):
    def alibi(score, b, h, q_idx, kv_idx, slopes):
        return score - slopes[h] * abs(q_idx - kv_idx)

    built = [
        ag.Variant(score=alibi, mask=ag.causal() & ag.document()),
        ag.Variant(score=ag.score_mod(alibi), mask=ag.causal() & ag.document()),
        ag.loads(ag.Variant(score=alibi, mask=ag.causal() & ag.document()).to_text()),
        ag.Variant(score=lambda score, b, h, q_idx, kv_idx, slopes: score - slopes[h] * abs(kv_idx - q_idx),
                   mask=ag.causal() & ag.document()),
    ]
    keys = {ag.compile(v).key for v in built[:3]}
    assert len(keys) == 1
    assert built[0] == built[3]


def test_equal_variants_from_differently_named_functions_share_a_key(cache_dir):
    def alibi(score, b, h, q_idx, kv_idx, slopes):
        return score - slopes[h] * abs(q_idx - kv_idx)

    a = ag.Variant(score=alibi, mask=ag.causal())
    b = ag.Variant(score=lambda score, b, h, q_idx, kv_idx, slopes: score - slopes[h] * abs(q_idx - kv_idx),
                   mask=ag.causal())
    assert a == b and hash(a) == hash(b)
    assert ag.compile(a).key == ag.compile(b).key


def test_different_variants_have_different_keys(cache_dir):
    keys = {ag.compile(v).key for v in (ag.Variant(), ag.Variant(mask=ag.causal()),
                                        ag.Variant(mask=ag.causal(bottom_right=True)),
                                        ag.Variant(mask=ag.sliding_window(3)), ag.Variant(mask=ag.sliding_window(4)))}
    assert len(keys) == 5


def test_cache_dir_env_is_honoured(tmp_path, monkeypatch):
    for name in ("one", "two"):
        monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / name))
        attn = ag.compile(_variant(2.0))
        assert attn.from_cache is False
        assert str(attn.path).startswith(str(tmp_path / name))


def test_binaries_index_merges_writers_and_survives_damage(tmp_path):
    """Two processes' records both survive (each write re-reads under the lock), and a damaged
    index reads as empty instead of failing the call."""
    from attngen.runtime.triton_binaries import INDEX, _Index

    path = tmp_path / "entry" / INDEX
    first, second = _Index(path), _Index(path)
    assert first.get("a") is None and second.get("b") is None  # both have read the empty index
    first.put("a", {"hash": "h1", "name": "k1"})
    second.put("b", {"hash": "h2", "name": "k2"})
    merged = _Index(path)
    assert merged.get("a") == {"hash": "h1", "name": "k1"} and merged.get("b") == {"hash": "h2", "name": "k2"}
    path.write_text("{ truncated")
    assert _Index(path).get("a") is None
    assert not list(path.parent.glob(".*.tmp")), "no temporary file may be left behind"
