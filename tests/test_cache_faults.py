"""The kernel cache under faults: an unwritable folder, a full disk during a write, entries
deleted or truncated under a running process, the folder removed mid-run, eight processes
compiling into one cache at once and one killed while it holds a lock; and `attngen cache`.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import ON_GPU, check, tolerance

import attngen as ag
from attngen import cli
from attngen.runtime import cache_dir

HERE = Path(__file__).resolve().parent


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(root))
    cache_dir.forget()
    yield root
    cache_dir.forget()


def _variant(tag: float, causal: bool = True) -> ag.Variant:
    """A variant of its own (the constant makes its key unique to the test)."""
    def shifted(score, b, h, q_idx, kv_idx):
        return score - 0.03 * abs(q_idx - kv_idx) + tag

    return ag.Variant(score=shifted, mask=ag.causal() if causal else None)


def _run(attn) -> None:
    check(attn, 1, 2, 1, 20, 24, 16, 16, torch.float32)


# --------------------------------------------------------------------------- unwritable folder
def test_unwritable_cache_falls_back_to_a_private_folder_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    configured = blocker / "cache"  # mkdir fails: a file is in the way (as root, chmod would not stop us)
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(configured))
    cache_dir.forget()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first, second = ag.compile(_variant(0.1)), ag.compile(_variant(0.2, causal=False))
            _run(first)
            _run(second)
            assert ag.compile(_variant(0.1)).from_cache  # the private folder works as a cache
        ours = [w for w in caught if "attngen: cannot write the kernel cache" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        message = str(ours[0].message)
        assert str(configured) in message and "ATTNGEN_CACHE_DIR" in message
        assert not first.path.is_relative_to(configured) and first.path.is_file()
    finally:
        cache_dir.forget()


def test_read_only_folder_falls_back(cache_root, monkeypatch):
    """EROFS on the probe (a read-only mount) takes the same path."""
    real_mkstemp = cache_dir.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == cache_root:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(cache_dir.tempfile, "mkstemp", read_only)
    with pytest.warns(RuntimeWarning, match="Read-only file system"):
        attn = ag.compile(_variant(0.3))
    _run(attn)


def test_no_writable_folder_at_all_is_one_clear_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(blocker / "cache"))

    def no_temporary_folder(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_dir.tempfile, "mkdtemp", no_temporary_folder)
    cache_dir.forget()
    try:
        with pytest.raises(cache_dir.CacheUnavailable, match="set ATTNGEN_CACHE_DIR to a writable folder"):
            ag.compile(_variant(0.4))
        assert cli.main(["compile", "causal", "-o", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("attngen: error: attngen: cannot write the kernel cache"), err
    finally:
        cache_dir.forget()


# --------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("failing_file", ["kernel.py", "kernel.ir", "manifest.json"])
def test_disk_full_during_a_write_leaves_nothing_loadable(cache_root, monkeypatch, failing_file):
    from attngen.runtime import cache

    v = _variant(0.5 + len(failing_file) / 100)
    real_write = cache.atomic_write

    def write_until_full(path, data):  # the data of one file does not fit: its fsync fails
        if path.name != failing_file:
            return real_write(path, data)
        with monkeypatch.context() as m:
            m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
            return real_write(path, data)

    monkeypatch.setattr(cache, "atomic_write", write_until_full)
    with pytest.raises(OSError, match="No space left on device") as info:
        ag.compile(v)
    assert info.value.errno == errno.ENOSPC and str(cache_root) in str(info.value)
    entry = next(cache_root.glob("??/" + "?" * 64))
    assert not (entry / "manifest.json").exists(), "a manifest would make the partial entry loadable"
    assert not list(entry.glob(".*.tmp")), "temporary files are removed"
    monkeypatch.setattr(cache, "atomic_write", real_write)
    attn = ag.compile(v)  # space is back: the next call rebuilds the entry
    assert attn.from_cache is False
    _run(attn)
    assert ag.compile(v).from_cache is True


def test_disk_full_while_storing_the_lowered_ir_is_harmless(cache_root, monkeypatch):
    from attngen.runtime import lowering_cache

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lowering_cache, "atomic_write", full)
    _run(ag.compile(_variant(0.9)))


# --------------------------------------------------------------------------- entries removed under us
@pytest.mark.parametrize("damage", ["truncate", "delete", "remove_folder"])
def test_entry_damaged_between_compile_and_first_call(cache_root, damage):
    """The module is imported at the first call; what the file holds by then does not matter:
    the loader runs the text verified at compile time (a truncated file was imported as half
    a module: AttributeError: no launch_forward)."""
    attn = ag.compile(_variant(1.0 + len(damage) / 100))
    if damage == "truncate":
        attn.path.write_text(attn.source[:200])
    elif damage == "delete":
        attn.path.unlink()
    else:
        import shutil

        shutil.rmtree(cache_root)
    _run(attn)
    again = ag.compile(attn.variant)  # the damaged entry is rebuilt
    assert again.from_cache is False
    assert again.path.read_text() == attn.source


def test_entry_damaged_after_first_call(cache_root):
    attn = ag.compile(_variant(1.5))
    _run(attn)
    attn.path.write_text("")
    _run(attn)


def test_cache_folder_removed_mid_run(cache_root):
    import shutil

    first = ag.compile(_variant(2.0))
    _run(first)
    shutil.rmtree(cache_root)
    second = ag.compile(_variant(2.1))  # a new entry: the folder is made again
    _run(second)
    assert second.path.is_file() and second.path.is_relative_to(cache_root)
    _run(first)


# --------------------------------------------------------------------------- many processes
@pytest.fixture(scope="module")
def race_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared-cache")
    env = dict(os.environ, ATTNGEN_CACHE_DIR=str(root))
    proc = subprocess.run([sys.executable, str(HERE / "cache_workers.py"), str(os.getpid() % 997 / 997)],
                          env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(ON_GPU, reason="the workers run under the interpreter (forked processes; CUDA cannot be forked)")
def test_eight_processes_compile_into_one_cache(race_report):
    race = race_report["race"]
    assert race_report["exit_codes"] == [0] * 8 and len(race) == 8
    for r in race:
        assert r["err"] < tolerance(torch.float32), r
    for i in range(3):
        builders = [r["worker"] for r in race if r["variant"] == i and r["built"]]
        assert len(builders) == 1, f"variant {i} was generated by workers {builders}: once is enough"


@pytest.mark.skipif(ON_GPU, reason="the workers run under the interpreter (forked processes; CUDA cannot be forked)")
def test_a_killed_builder_leaves_no_lock_behind(race_report):
    assert race_report["victim_reached_build"] and race_report["victim_exit"] == -9
    assert race_report["after_kill_s"] < 60, "waited on the dead process's lock"
    assert race_report["after_kill_built"] is True and race_report["after_kill_err"] < tolerance(torch.float32)


# --------------------------------------------------------------------------- attngen cache
def test_cache_cli_list_size_clear(cache_root, capsys):
    kept, damaged = ag.compile(_variant(3.0)), ag.compile(_variant(3.1))
    (damaged.path.parent / "manifest.json").unlink()
    assert cli.main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert kept.key[:16] in out and damaged.key[:16] in out and kept.ir.name in out
    assert f"2 kernel entries in {cache_root}" in out
    assert [line for line in out.splitlines() if damaged.key[:16] in line][0].endswith("damaged")

    assert cli.main(["cache", "size"]) == 0
    sizes = dict(line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.split())
    assert sizes["kernels"] != "0" and "total" in sizes

    assert cli.main(["cache", "clear", "--older-than", "1"]) == 0  # both are seconds old: kept
    assert "removed 0 kernel entries" in capsys.readouterr().out
    assert cli.main(["cache", "clear"]) == 0
    assert "removed 2 kernel entries" in capsys.readouterr().out
    assert not list(cache_root.glob("??/*")), "entries and their lock files are gone"
    assert ag.compile(_variant(3.0)).from_cache is False  # and compiling works again


def test_cache_cli_keeps_tuning_records_unless_asked(cache_root, capsys):
    record = cache_root / "autotune" / "gpu" / "k.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    assert cli.main(["cache", "clear"]) == 0 and record.exists()
    assert cli.main(["cache", "clear", "--records"]) == 0 and not record.exists()
    capsys.readouterr()


def test_cache_cli_errors_and_help(cache_root, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["cache", "clear", "--older-than", "soon"])
    assert info.value.code == 2 and "number of days" in capsys.readouterr().err
    assert cli.main(["cache", "list", "--records"]) == 1
    assert capsys.readouterr().err.strip() == ("attngen: error: --older-than and --records are options of "
                                              "`attngen cache clear`")
    with pytest.raises(SystemExit):
        cli.main(["cache", "--help"])
    help_text = capsys.readouterr().out
    assert "ATTNGEN_CACHE_DIR" in help_text and "list" in help_text and "clear" in help_text
    assert cli.main(["cache", "list"]) == 0  # a cache folder that does not exist yet is empty
    assert "0 kernel entries" in capsys.readouterr().out
