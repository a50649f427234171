"""benchmarks/compare.py: the report's pure parts (tables, ratios, targets, headline, merge)
and one tiny smoke run under the Triton interpreter."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import compare  # noqa: E402
import compare_report as cr  # noqa: E402
from report import Measurement  # noqa: E402


def make_row(case="dense_L8192_D128", mode="fwd", family="dense", main=True, **ms) -> cr.Row:
    """A row whose backends ran in ``ms`` milliseconds (a string: the backend's error)."""
    row = cr.Row(family, case, "B=2 H=16 L=8192 D=128", mode, flops=1e12, main=main, backends=list(ms))
    for b, t in ms.items():
        row.measurements[b] = (Measurement(b, error=t) if isinstance(t, str)
                               else Measurement(b, ms=t, tflops=1e12 / (t * 1e-3) / 1e12, setup_s=1.0))
    row.checks.append(cr.Check("attngen", "reference", "out", 3e-3, "float64, b=0 h=0"))
    return row


def env(**extra) -> dict:
    return {"date_utc": "2026-01-01 00:00:00", "device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "triton": "3.6",
            "cuda": "13.0", "attngen": "0.1.0", "commit": "abc", "dtype": "bfloat16", "smoke": False, **extra}


def test_family_table_cells_ratios_and_missing_backends():
    row = make_row(attngen=1.0, flex=2.0, sdpa_flash=0.5, sdpa_cudnn="RuntimeError: no kernel")
    table = cr.family_table("dense", [row])
    assert "| attngen | attngen Gluon | FlexAttention | SDPA flash | SDPA cuDNN |" in table
    assert "1.000 ms, 1000 TF/s |" in table  # attngen: no ratio over itself
    assert "2.000 ms, 500 TF/s, x2.00" in table  # attngen twice as fast as Flex
    assert "0.500 ms, 2000 TF/s, x0.50" in table
    assert "n/a (RuntimeError: no kernel)" in table
    window = make_row("window1024", family="window", attngen=1.0, flex=1.5)
    cells = cr.family_table("window", [window]).splitlines()[-1].split(" | ")
    assert cells[5:7] == ["-", "-"], "SDPA cannot express a window: '-' rather than n/a"


def test_ratio_best_sdpa_and_targets():
    row = make_row(attngen=1.0, flex=1.25, sdpa_flash=1.5, sdpa_cudnn=0.8)
    assert row.ratio("flex") == pytest.approx(1.25)
    assert cr.best_sdpa(row) == "sdpa_cudnn"  # the faster one is the stronger peer
    dense = cr.target_cell(row, cr.FAMILIES["dense"])  # both issue-6 targets are judged
    assert ">= 1.1x Flex: met (min x1.25, FlexAttention)" in dense
    assert ">= 0.85x cuDNN fwd: **missed** (min x0.80, SDPA cuDNN)" in dense
    no_cudnn = make_row(attngen=1.0, flex=1.05, sdpa_flash=1.5, sdpa_cudnn="n/a")
    assert cr.target_cell(no_cudnn, cr.FAMILIES["dense"]) == ">= 1.1x Flex: **missed** (min x1.05, FlexAttention)"
    sig = make_row("sigmoid_dense", family="sigmoid", attngen=1.0, attngen_softmax=1.2, flex=1.4)
    assert ": met (min x1.20, attngen softmax)" in cr.target_cell(sig, cr.FAMILIES["sigmoid"])
    sig.mode = "fwdbwd"
    assert cr.target_cell(sig, cr.FAMILIES["sigmoid"]) == "-"  # issue 5's targets are forward targets


def test_wrong_results_are_flagged_and_fail():
    row = make_row(attngen=1.0, flex=2.0)
    row.checks += [cr.Check("attngen", "flex", "dq", 0.5, "whole tensors"),
                   cr.Check("flex", "reference", "out", float("nan"), "")]
    assert cr.err_cell(row) == "5.0e-01 **WRONG**; **wrong: flex**"
    assert len(row.failures()) == 2
    failed = make_row(attngen="OutOfMemoryError", flex=2.0)
    assert failed.failures() == ["dense_L8192_D128 fwd: attngen failed (OutOfMemoryError)"]
    assert "## FAILURES" in cr.markdown(env(), [row])
    no_ref = make_row(attngen=1.0)
    no_ref.checks = [cr.Check("attngen", "reference", "out", None, "reference failed: OutOfMemoryError")]
    assert cr.err_cell(no_ref) == "n/a **unchecked**" and no_ref.failures()


def test_headline_table_and_readme_rewrite(tmp_path):
    rows = [make_row(mode="fwd", attngen=1.0, flex=1.1, sdpa_flash=1.4, sdpa_cudnn=0.9),
            make_row(mode="fwdbwd", attngen=2.0, flex=2.2, sdpa_flash=2.8, sdpa_cudnn="no backward"),
            make_row("dense_L4096_D64", main=False, attngen=1.0),
            make_row("lightning_L4096", family="linear", attngen=1.0, fla=2.0, sdpa_flash=4.0, sdpa_cudnn=3.0)]
    table = cr.headline_table(rows)
    lines = table.splitlines()
    assert len(lines) == 4, "one row per family's main case"
    assert lines[2] == "| dense | B=2 H=16 L=8192 D=128 | 1000 / 500 | x1.10 / x1.10 | x0.90 cuDNN / x1.40 flash |"
    assert "x2.00 / - vs fla chunk_simple_gla" in lines[3]

    data = cr.to_json(env(), rows)
    (tmp_path / "compare.json").write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{cr.HEADLINE_START}\nold\n{cr.HEADLINE_END}\n\nafter\n")
    assert compare.main(["--headline", str(tmp_path / "compare.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n" + cr.HEADLINE_START + "\nMeasured on NVIDIA H100")
    assert text.endswith(cr.HEADLINE_END + "\n\nafter\n") and "old" not in text
    assert table in text
    again = cr.replace_between_markers(text, "new body")
    assert again.count(cr.HEADLINE_START) == 1 and "new body" in again and table not in again
    with pytest.raises(ValueError, match="exactly one"):
        cr.replace_between_markers("no markers here", "x")


def test_merge_keeps_every_run_and_later_rows_win(tmp_path):
    first = cr.to_json(env(date_utc="day 1"), [make_row(attngen=1.0, flex=2.0),
                                               make_row("causal_L8192_D128", family="causal", attngen=1.0)])
    second = cr.to_json(env(date_utc="day 2"), [make_row(attngen=0.5, flex=2.0),
                                                make_row("alibi", family="score_mods", attngen=1.0)])
    merged = cr.merge([first, second])
    got_env, rows, parts = cr.from_json(merged)
    assert got_env["date_utc"] == "day 2", "the newest run's environment heads the report"
    assert [p["date_utc"] for p in parts] == ["day 1", "day 2"]
    assert [(r.family, r.case) for r in rows] == [("dense", "dense_L8192_D128"), ("causal", "causal_L8192_D128"),
                                                 ("score_mods", "alibi")], "family order of the report"
    assert rows[0].ms("attngen") == 0.5, "a later run's row replaces an earlier one"
    assert isinstance(rows[0].measurements["flex"], Measurement) and rows[0].checks[0].ok
    assert cr.mismatched_parts(parts) == []
    assert cr.mismatched_parts(parts + [env(device="NVIDIA H200")]) == ["device"]
    with pytest.raises(ValueError, match="schema"):
        cr.from_json({"rows": []})

    for name, doc in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "compare.json").write_text(json.dumps(doc))
    out = tmp_path / "merged"
    assert compare.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "merged from 2 runs" in md and "## Causal" in md and "## Score mods" in md
    assert len(json.loads((out / "compare.json").read_text())["rows"]) == 3


def test_smoke_run_of_two_tiny_cases(tmp_path, device):
    if device != "cpu":
        pytest.skip("the smoke run's CPU path (the Triton interpreter) is what this checks")
    out = tmp_path / "smoke"
    rc = compare.main(["--smoke", "--families", "dense,linear", "--cases", "dense_L64_D16,lightning_L64",
                       "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "compare.json").read_text())
    assert [(r["case"], r["mode"]) for r in data["rows"]] == [
        ("dense_L64_D16", "fwd"), ("dense_L64_D16", "fwdbwd"), ("lightning_L64", "fwd"), ("lightning_L64", "fwdbwd")]
    for r in data["rows"]:
        whats = {c["what"] for c in r["checks"] if c["backend"] == "attngen"}
        assert whats == ({"out"} if r["mode"] == "fwd" else {"out", "dq", "dk", "dv"})
        assert all(c["err"] < 1e-4 for c in r["checks"]), "float32 under the interpreter"
        assert r["measurements"]["attngen"]["ms"] > 0
        assert r["measurements"]["flex" if r["family"] == "dense" else "fla"]["error"] == "smoke on CPU: not run"
    md = (out / "compare.md").read_text()
    assert "## Dense" in md and "## Linear attention" in md and "(smoke)" in md
