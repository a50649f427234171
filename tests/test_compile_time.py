"""Compile-time work: the pass order computed once (networkx imported lazily), imports kept
off the warm path, and
benchmarks/bench_compile.py and its modules (the report functions, the Flex mask, one smoke run)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import attngen as ag
from attngen.passes.pipeline import Pass, pass_order
from attngen.reference import neighborhood_matrix

REPO = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark scripts import their siblings by name
import bench_compile  # noqa: E402
import compile_processes  # noqa: E402
import compile_report  # noqa: E402
import compile_variants  # noqa: E402
from result_files import default_out  # noqa: E402


# ---- pass order ------------------------------------------------------------------------

def _pass(name: str, requires=(), provides=()) -> Pass:
    return Pass(name, lambda ir: ir, tuple(requires), tuple(provides) or (name,), "")


def test_pass_order_refuses_cycles_and_missing_providers():
    loop = {"a": _pass("a", requires=("b",)), "b": _pass("b", requires=("a",)), "c": _pass("c")}
    with pytest.raises(RuntimeError, match="form a cycle"):
        pass_order(loop)
    with pytest.raises(RuntimeError, match="requires 'nothing'"):
        pass_order({"a": _pass("a", requires=("nothing",))})


def test_every_requirement_runs_before_its_pass():
    order = [p.name for p in pass_order()]
    providers = {fact: p.name for p in pass_order() for fact in p.provides}
    for p in pass_order():
        assert all(order.index(providers[need]) < order.index(p.name) for need in p.requires)


# ---- imports -----------------------------------------------------------------------------

def test_warm_compile_imports_neither_jinja2_nor_networkx():
    """A compile whose module and lowered IR are in the disk cache renders nothing (no
    Jinja2) and runs no pass (no networkx); a new variant runs the passes, which import
    networkx then, not at ``import attngen``."""
    ag.compile(ag.Variant(mask=ag.causal(), name="import_probe"))  # fills the session's cache
    code = textwrap.dedent("""
        import sys
        import attngen as ag
        eager = [m for m in ("networkx", "jinja2") if m in sys.modules]
        attn = ag.compile(ag.Variant(mask=ag.causal(), name="import_probe"))
        warm = [m for m in ("networkx", "jinja2") if m in sys.modules]
        ag.compile(ag.Variant(mask=ag.sliding_window(3, 1), name="import_probe_new"), rebuild=True)
        print(eager, warm, attn.from_cache, "networkx" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "[] [] True True"


# ---- bench_compile: the Flex mask ----------------------------------------------------------

@pytest.mark.parametrize("grid, kernel", [((9, 12), 5), ((7, 7), 7), ((6, 10), 3)])
def test_flex_na2d_mask_is_natten_semantics(grid, kernel):
    L = grid[0] * grid[1]
    i, j = torch.arange(L).view(-1, 1), torch.arange(L).view(1, -1)
    flex = compile_variants.flex_na2d_mask(grid, kernel)(0, 0, i, j)
    assert torch.equal(flex, neighborhood_matrix(ag.neighborhood(kernel), grid, i, j).expand(L, L))


# ---- bench_compile: records and report ------------------------------------------------------

def _rec(library, variant, process, **times):
    return compile_processes.Record(library, variant, process, times=times)


def test_first_call_sums_what_the_user_waits_for():
    a = _rec("attngen", "causal", "first", import_torch=2.0, setup=0.5, compile=0.25, first_fwd=1.0, second_fwd=0.1)
    assert a.first_call_s == pytest.approx(1.25)
    f = _rec("flex", "causal", "first", block_mask=0.5, compile=0.01, first_fwd=6.0)
    assert f.first_call_s == pytest.approx(6.51)
    assert _rec("attngen", "causal", "first", compile=0.2).first_call_s is None


def test_cells_say_why_a_number_is_missing():
    failed = compile_processes.Record("attngen", "na2d", "first", times={"compile": 0.2}, errors={"first_fwd": "ValueError: bad"})
    assert compile_report.cell(failed, "compile") == "0.200"
    assert compile_report.cell(failed, "first_fwd") == "n/a (ValueError: bad)"
    assert compile_report.cell(failed, "first_call") == "n/a (first_fwd: ValueError: bad)"
    died = compile_processes.Record("flex", "na2d", "second", errors={"process": "timed out after 300 s"})
    assert compile_report.cell(died, "first_fwd") == "n/a (timed out after 300 s)"
    skipped = compile_processes.Record("flex", "sigmoid", "-", skipped="FlexAttention normalizes with softmax only")
    assert compile_report.cell(skipped, "first_call") == "n/a"  # the reason goes below the table
    assert compile_report.cell(None, "first_call") == "-"
    assert compile_report.fmt_s(12.345) == "12.3" and compile_report.fmt_s(0.01234) == "0.012"


def test_verdicts_and_ratios():
    assert compile_report.verdict(4.9, 5.0, smoke=False) == "yes"
    assert compile_report.verdict(5.0, 5.0, smoke=False) == "**NO**"
    assert compile_report.verdict(0.1, 0.5, smoke=True) == "n/a (interpreter)"
    assert compile_report.verdict(None, 0.5, smoke=False) == "-"
    assert compile_report.ratio(6.0, 1.5) == "x4.0" and compile_report.ratio(None, 1.0) == "-"


def _records():
    return [
        compile_processes.Record("triton", "-", "primer", times={"triton_setup": 1.5}),
        _rec("attngen", "causal", "first", compile=0.3, first_fwd=1.7, first_fwd_bwd=4.0),
        compile_processes.Record("attngen", "causal", "second", times={"compile": 0.03, "first_fwd": 0.07}, from_cache=True),
        _rec("flex", "causal", "first", block_mask=0.5, first_fwd=5.5),
        _rec("flex", "causal", "second", block_mask=0.5, first_fwd=1.5),
        compile_processes.Record("flex", "sigmoid", "-", skipped="FlexAttention normalizes with softmax only"),
        _rec("attngen", "sigmoid", "first", compile=0.3, first_fwd=5.2),
    ]


def test_summary_table_rows():
    rows = compile_report.summary_table(_records(), smoke=False).splitlines()
    assert len(rows) == 4  # header, rule, causal, sigmoid (in VARIANTS order)
    causal = [c.strip() for c in rows[2].strip("|").split("|")]
    assert causal[:8] == ["causal", "2.000", "yes", "0.100", "yes", "6.000", "2.000", "x3.0, x20.0"]
    assert causal[8] == "4.000 / -"
    sigmoid = [c.strip() for c in rows[3].strip("|").split("|")]
    assert sigmoid[1:3] == ["5.500", "**NO**"] and sigmoid[5:7] == ["n/a", "n/a"]


def test_detail_table_and_header():
    records = _records()
    detail = compile_report.detail_table(records).splitlines()
    assert len(detail) == 2 + 5  # primer and skipped rows are left out
    assert detail[3].startswith("| attngen | causal | second |") and detail[3].endswith("| yes |")
    config = {"sizes": asdict(compile_variants.GPU_SIZES), "smoke": False}
    md = compile_report.full_markdown({"device": "NVIDIA H100", "torch": "2.11"}, config, records)
    assert "ran once in a primer process (1.500 s), not counted" in md
    assert "device: NVIDIA H100; torch 2.11" in md and "smoke run" not in md
    assert "n/a: FlexAttention cannot run sigmoid (FlexAttention normalizes with softmax only)" in md
    assert compile_report.missed_targets(records) == ["sigmoid (first): 5.500 s"]
    smoke = compile_report.full_markdown({}, {**config, "smoke": True}, records[1:3])
    assert "**smoke run**" in smoke and "one-time setup was not separated" in smoke


def test_merge_keeps_only_whole_scenarios():
    records = _records() + [_rec("attngen", "na2d", "first", compile=0.3, first_fwd=2.0)]  # its 2nd never ran
    assert compile_processes.measured_pairs(records) == {("attngen", "causal"), ("flex", "causal"), ("flex", "sigmoid")}


def test_worker_output_parsing():
    good = {"times": {"compile": 0.1}, "errors": {}}
    assert compile_processes.parse_worker_output("noise\n" + json.dumps(good) + "\n\n", "", 0) == good
    died = compile_processes.parse_worker_output("", "Traceback ...\nRuntimeError: CUDA error\n", 1)
    assert died == {"times": {}, "errors": {"process": "exit status 1: RuntimeError: CUDA error"}}
    assert compile_processes.parse_worker_output("[1, 2]", "", -9)["errors"]["process"] == "exit status -9: no output"


def test_worker_env_isolates_the_caches(tmp_path):
    base = {"PATH": "/bin", "PYTHONPATH": "/elsewhere", "TRITON_INTERPRET": "1", "ATTNGEN_POISON_OUTPUTS": "1"}
    gpu = compile_processes.worker_env(base, tmp_path, smoke=False)
    assert gpu["ATTNGEN_CACHE_DIR"] == str(tmp_path / "attngen")
    assert gpu["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert gpu["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert gpu["PYTHONPATH"].split(":") == [str(REPO), "/elsewhere"]
    assert "TRITON_INTERPRET" not in gpu and "ATTNGEN_POISON_OUTPUTS" not in gpu and gpu["PATH"] == "/bin"
    assert compile_processes.worker_env({}, tmp_path, smoke=True)["TRITON_INTERPRET"] == "1"


def test_arguments():
    args = bench_compile.parse_args(["--variants", "na2d,causal", "--libraries", "attngen", "--out", "x"])
    assert args.variants == ["na2d", "causal"] and args.libraries == ["attngen"] and args.prime
    with pytest.raises(SystemExit):
        bench_compile.parse_args(["--variants", "causal,nope"])
    assert not bench_compile.parse_args(["--smoke"]).prime
    assert default_out("compile", environ={"OUT": "/o"}) == Path("/o")
    assert default_out("compile", environ={}) == REPO / "benchmarks" / "results" / "compile"
    assert "attngen-bench-smoke" in str(default_out("compile", smoke=True, environ={}))  # never a committed folder


# ---- bench_compile: one smoke run -------------------------------------------------------------

def test_smoke_run_measures_a_cold_then_a_warm_process(tmp_path, device):
    if device != "cpu":  # the smoke path forces the interpreter, which Triton 3.6 runs wrongly with numpy >= 2.4
        pytest.skip("the smoke run's CPU path (the Triton interpreter) is what this checks")
    assert bench_compile.main(["--smoke", "--variants", "causal", "--no-backward", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "compile.json").read_text())
    first, second = data["records"]
    assert (first["process"], first["from_cache"], second["process"], second["from_cache"]) == (
        "first", False, "second", True)
    assert not first["errors"] and not second["errors"]
    assert {"import_torch", "import_library", "compile", "first_fwd"} <= set(second["times"])
    assert "| causal |" in (tmp_path / "compile.md").read_text()
    # a later run merges these records instead of measuring them again
    assert bench_compile.main(["--smoke", "--variants", "causal", "--no-backward", "--out", str(tmp_path / "again"),
                       "--merge", str(tmp_path / "compile.json")]) == 0
    merged = json.loads((tmp_path / "again" / "compile.json").read_text())
    assert merged["records"] == data["records"] and "earlier run" in (tmp_path / "again" / "compile.md").read_text()
