"""The `attngen` command line: compile (and the pytest file it writes), list, explain, errors."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import attngen as ag
from attngen.library import builtin_names

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "attngen", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"attngen {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def run_pytest(path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
                          capture_output=True, text=True, env=env, cwd=path.parent, timeout=900)


def test_help_explains_every_command():
    top = run_cli("--help").stdout
    for word in ("compile", "list", "explain", "SPEC", "file.py:NAME"):
        assert word in top
    for cmd in ("compile", "list", "explain"):
        assert "usage: attngen " + cmd in run_cli(cmd, "--help").stdout


def test_list_shows_the_library():
    out = run_cli("list").stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == builtin_names()
    assert {"causal", "sliding_window", "alibi", "softcap", "document", "prefix_lm", "relative_bias"} <= set(names)


def test_compile_builtin_writes_module_ir_and_a_passing_test(tmp_path):
    proc = run_cli("compile", "prefix_lm", "-o", str(tmp_path))
    module, ir_file, test = tmp_path / "prefix_lm.py", tmp_path / "prefix_lm.ir", tmp_path / "test_prefix_lm.py"
    assert module.is_file() and ir_file.is_file() and test.is_file()
    assert str(module) in proc.stdout
    attn = ag.compile(ag.library.builtin("prefix_lm"))
    assert module.read_text() == attn.source
    assert ir_file.read_text() == attn.ir.to_text()
    result = run_pytest(test)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_compile_python_spec_with_captured_tensor(tmp_path):
    src = tmp_path / "my_variants.py"
    src.write_text(textwrap.dedent("""
        import torch
        import attngen as ag

        head_scale = torch.rand(4) + 0.5

        def scaled(score, b, h, q_idx, kv_idx):
            return score * head_scale[h]

        variant = ag.Variant(score=scaled, mask=ag.sliding_window(8, 3), name="scaled_window")
    """))
    out = tmp_path / "out"
    run_cli("compile", f"{src}:variant", "-o", str(out))
    text = (out / "scaled_window.ir").read_text()
    assert "head_scale[1] captured" in text and "band(-8 <= kv_idx - q_idx <= 3)" in text
    result = run_pytest(out / "test_scaled_window.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_print_after_all_shows_every_pass(tmp_path):
    out = run_cli("compile", "alibi", "-o", str(tmp_path), "--print-after-all").stdout
    for p in ag.passes.pass_order():
        assert f"IR after {p.name}" in out
    assert "band(-inf <= kv_idx - q_idx <= 0)" in out


@pytest.mark.parametrize("args, message", [
    (("compile", "no_such_variant"), "neither a file nor a built-in"),
    (("compile", "missing.ir"), "no such file"),
    (("compile", "missing.py:variant"), "no such Python file"),
])
def test_errors_are_one_line_without_traceback(args, message, tmp_path):
    proc = run_cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = run_cli("--debug", *args, cwd=tmp_path, check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_bad_ir_file_names_the_line(tmp_path):
    bad = tmp_path / "bad.ir"
    marker = tmp_path / "pwned"
    bad.write_text(f"attngen 1\nscore s = __import__('os').mkdir('{marker}')\n")
    proc = run_cli("compile", str(bad), "-o", str(tmp_path), check=False)
    assert proc.returncode == 1 and "bad.ir:2" in proc.stderr and "not allowed" in proc.stderr
    assert not marker.exists()  # the parser never executes the text


def test_unsupported_variant_is_a_clear_error(tmp_path):
    ir = tmp_path / "lin.ir"
    ir.write_text("attngen 1\nvariant lin\nmask = sliding_window(left=4)\nnorm = linear()\n")
    proc = run_cli("compile", str(ir), check=False)
    assert proc.returncode == 1 and "linear attention allows only no mask or ag.causal()" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_explain_causal_density_and_bounds():
    out = run_cli("explain", "causal", "--shape", "512", "--block-m", "64", "--block-n", "64").stdout
    # 512 * 513 / 2 of 512^2 entries; 8x8 tiles: 28 full below the diagonal, 8 partial on it
    assert "density          0.5010" in out
    assert "tiles visited    36 of 64 (28 full, 8 partial)" in out
    assert "1.78x with these tiles" in out
    assert "rows as runs     8 of 8 query tiles' KV tiles form one run (a tile-list mask walks them as loop ranges)" in out


def test_explain_rejects_bad_shape():
    proc = run_cli("explain", "causal", "--shape", "abc", check=False)
    assert proc.returncode == 2 and "--shape" in proc.stderr


NA31 = "attngen 1\nvariant na31\nmask = neighborhood(kernel_size=(31, 31), dilation=1, stride=1, is_causal=False)\n" \
       "norm = softmax()\n"


def test_explain_neighborhood_prints_every_field(tmp_path):
    spec = tmp_path / "na31.ir"
    spec.write_text(NA31)
    out = run_cli("explain", str(spec), "--shape", "128x128").stdout
    assert out == run_cli("explain", str(spec), "--shape", "128,128").stdout
    for field in ("spatial shape    128x128", "axis 0           size 128, kernel 31, dilation 1, stride 1",
                  "axis 1", "query box 8x8 (block_m 64), KV box 8x8 (block_n 64)", "density          0.0587",
                  "query tiles      256", "KV tiles visited", " full, ", " partial)", "masked in visited tiles",
                  "17.05x speed of light (1/density)", "x with these tiles (L*L / visited entries)",
                  "block sparse     no"):
        assert field in out, field
    boxed = run_cli("explain", str(spec), "--shape", "128x128", "--q-box", "8x16", "--kv-box", "8x8").stdout
    assert "query box 8x16 (block_m 128), KV box 8x8 (block_n 64)" in boxed


def test_explain_blocked_neighborhood_is_block_sparse(tmp_path):
    spec = tmp_path / "blocked.ir"
    spec.write_text(NA31.replace("(31, 31)", "16").replace("stride=1", "stride=16"))
    out = run_cli("explain", str(spec), "--shape", "128x128").stdout
    assert "block sparse     yes" in out and "64.00x speed of light" in out and "64.00x with these tiles" in out


def test_explain_neighborhood_and_other_mask_says_how_it_counts(tmp_path):
    spec = tmp_path / "combo.ir"
    spec.write_text(NA31.replace("mask = neighborhood", "mask = causal() & neighborhood").replace("(31, 31)", "(5, 5)"))
    out = run_cli("explain", str(spec), "--shape", "16x16").stdout
    assert "other masks      & causal(): counted exactly" in out


@pytest.mark.parametrize("shape, extra, message", [
    ("16x16", (), "--shape 16x16: neighborhood does not fit spatial_shape axis 0: kernel_size 31 x dilation 1"),
    ("128x20", (), "axis 1"),
    ("16384", (), "has 1 axes but the neighborhood is 2-D"),
    ("128x128", ("--q-box", "8"), "--q-box 8 has 1 axes but --shape 128x128 has 2"),
])
def test_explain_neighborhood_bad_shape_is_one_line(tmp_path, shape, extra, message):
    spec = tmp_path / "na31.ir"
    spec.write_text(NA31)
    proc = run_cli("explain", str(spec), "--shape", shape, *extra, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_explain_1d_rejects_spatial_shape_and_boxes():
    proc = run_cli("explain", "causal", "--shape", "8x8x8", check=False)
    assert proc.returncode == 1 and "no neighborhood mask" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("explain", "causal", "--shape", "512", "--q-box", "8x8", check=False)
    assert proc.returncode == 1 and "--q-box" in proc.stderr
