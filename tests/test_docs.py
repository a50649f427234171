"""Every command and Python example the README and docs show runs as written.

Fenced ```python blocks are executed (each in a fresh namespace); ```sh blocks run line by
line, in a scratch folder that links the repository's examples/ and benchmarks/. An HTML
comment on the line before a fence changes that:

    <!-- check: skip (reason) -->   not run here (a GPU, or minutes of work), with the reason
    <!-- check: help -->            each command runs with --help only (benchmarks need a GPU)

Plain ``` fences (output, diagrams) are not code. The Python examples use CPU tensors, so they
run where the suite runs on the CPU (the Triton interpreter).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md",
         REPO / "benchmarks" / "results" / "README.md", REPO / "benchmarks" / "experiments" / "README.md"]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*check:\s*(skip|help)\b\s*(.*?)\s*-->$")
COMMAND_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    check: str  # "run", "skip" or "help"
    reason: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.match(before)
        lang = opening.group(1)
        if lang in ("python", "sh", "bash"):
            found.append(Block(page, i + 1, lang, "\n".join(lines[i + 1:end]),
                               mark.group(1) if mark else "run", mark.group(2).strip("()") if mark else ""))
        i = end + 1
    return found


ALL = [b for page in PAGES if page.exists() for b in blocks(page)]


def shell_commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        line = re.split(r"\s+#", line, maxsplit=1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def argv_of(command: str, help_only: bool) -> tuple[dict[str, str], list[str]]:
    """(extra environment, argv) of a documented command line."""
    words = shlex.split(command)
    env = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[0] == "attngen":
        words = [sys.executable, "-m", "attngen"] + words[1:]
    elif words[0] in ("python", "python3"):
        words = [sys.executable] + words[1:]
    else:
        raise AssertionError(f"a documented command this test cannot run: {command!r}; mark its block")
    if help_only:
        script = next(i for i, w in enumerate(words) if w.endswith(".py"))
        words = words[:script + 1] + ["--help"]
    return env, words


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A working folder whose examples/ and benchmarks/ are the repository's."""
    folder = tmp_path_factory.mktemp("docs")
    for name in ("examples", "benchmarks"):
        (folder / name).symlink_to(REPO / name, target_is_directory=True)
    return folder


def test_pages_have_code_to_check():
    assert any(b.page.name == "README.md" and b.page.parent == REPO and b.lang == "python" for b in ALL)
    assert {b.page.name for b in ALL} >= {"README.md", "variants.md", "cli.md"}


@pytest.mark.parametrize("block", ALL, ids=lambda b: b.id)
def test_documented_code_runs(block: Block, scratch: Path, device: str):
    if block.check == "skip":
        pytest.skip(block.reason or "marked skip")
    if block.lang == "python":
        if device != "cpu":
            pytest.skip("the documented examples use CPU tensors (the Triton interpreter)")
        namespace = {"__name__": f"docs_{block.page.stem}_{block.line}"}
        exec(compile(block.code, block.id, "exec"), namespace)  # noqa: S102 - the docs' own examples
        return
    for command in shell_commands(block.code):
        extra, argv = argv_of(command, block.check == "help")
        env = {**os.environ, **extra}
        if "PYTHONPATH" in extra:  # `PYTHONPATH=.` means the checkout
            paths = extra["PYTHONPATH"].split(":")
            env["PYTHONPATH"] = os.pathsep.join(str(REPO) if p == "." else str(REPO / p) for p in paths)
        done = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        assert done.returncode == 0, f"{block.id}: `{command}` exited {done.returncode}:\n{done.stdout[-2000:]}" \
                                     f"\n{done.stderr[-2000:]}"
