"""Compile-time benchmark: how long a new attention variant takes to become callable.

    PYTHONPATH=. python benchmarks/bench_compile.py [--out DIR] [--variants causal,na2d] [--libraries attngen]
    PYTHONPATH=. python benchmarks/bench_compile.py --smoke        # CPU, Triton interpreter: checks the plumbing

For each variant, attngen (``ag.compile`` + the first call) and FlexAttention
(``create_block_mask`` + the first call of ``torch.compile(flex_attention)``) are measured in
two fresh Python processes that share one temporary cache folder (ATTNGEN_CACHE_DIR,
TRITON_CACHE_DIR and TORCHINDUCTOR_CACHE_DIR point into it): the first process starts with
empty caches (code generation and JIT compilation), the second loads what the first left
(the disk-cache path). Every variant and library gets a fresh folder. Targets (issue
"Autotuning ...", item 3): attngen's first call under 5 s in the first process and under
0.5 s in the second; imports and CUDA initialization are reported separately, not counted.

Results go to DIR/compile.md and DIR/compile.json (DIR: --out, else $OUT, else
benchmarks/results/latest), rewritten after every process, so a run cut short keeps what it
measured; a worker's stderr is kept in DIR/compile_logs/. ``--worker`` is the measuring side:
it prints its timings as JSON on its last stdout line.
"""
from __future__ import annotations

# Only the standard library at module level: a worker process times its own imports.
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("causal", "alibi", "sliding_window", "documents", "na2d", "sigmoid", "lightning")
LIBRARIES = ("attngen", "flex")
LIBRARY_TITLES = {"attngen": "attngen", "flex": "FlexAttention", "triton": "Triton"}
PROCESSES = ("first", "second")
FLEX_CANNOT = {"sigmoid": "FlexAttention normalizes with softmax only",
               "lightning": "FlexAttention has no linear attention"}
# The targets for attngen's first call, per process.
TARGET_S = {"first": 5.0, "second": 0.5}
# What a user waits for before the first output (imports and CUDA initialization excluded).
FIRST_CALL_PARTS = ("block_mask", "compile", "first_fwd")
DETAIL_COLUMNS = (("import_torch", "import torch"), ("import_library", "import library"), ("declare", "declare"),
                  ("setup", "setup (CUDA, inputs)"), ("block_mask", "create_block_mask"), ("compile", "compile"),
                  ("first_fwd", "first fwd"), ("second_fwd", "second fwd"), ("first_call", "first call"),
                  ("first_fwd_bwd", "first fwd+bwd"))
REASON_CHARS = 60
STDERR_TAIL_CHARS = 300


@dataclass(frozen=True)
class Sizes:
    """The problem every variant is called on (only compile and load time matter)."""

    B: int
    H: int
    L: int
    D: int
    dtype: str
    device: str
    grid: tuple[int, int]  # na2d's token grid; its L is the product
    kernel: int  # na2d's window per axis
    window: int  # the causal sliding window in tokens, the query's own included
    documents: int  # equal-length documents per sequence

    def seq_len(self, variant: str) -> int:
        return self.grid[0] * self.grid[1] if variant == "na2d" else self.L


GPU_SIZES = Sizes(B=1, H=8, L=4096, D=128, dtype="bfloat16", device="cuda", grid=(128, 128), kernel=31,
                  window=1024, documents=8)
# Tiny, so that the interpreter runs every kernel in seconds; float32 because the interpreter
# computes tl.dot on bfloat16 wrongly (shared/DESIGN.md).
SMOKE_SIZES = Sizes(B=1, H=2, L=128, D=32, dtype="float32", device="cpu", grid=(16, 16), kernel=5, window=32,
                    documents=4)


def short_reason(exc: BaseException) -> str:
    """One line naming the exception: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


# =========================================================================== worker side
# Everything below up to the parent side runs in the measured subprocess; torch, attngen
# and triton are imported inside functions, after the clock for their import started.


class StageFailed(Exception):
    """A stage raised; its reason is in ``Stopwatch.errors`` and later stages are skipped."""


class Stopwatch:
    """Times named stages, each ending with a device synchronization (set once CUDA is up)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.sync: Callable[[], None] = lambda: None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
            self.sync()
        except Exception as exc:
            self.errors[name] = short_reason(exc)
            traceback.print_exc()  # the parent keeps stderr in compile_logs/
            raise StageFailed(name) from exc
        self.times[name] = time.perf_counter() - start


@dataclass
class Inputs:
    q: Any
    k: Any
    v: Any
    dout: Any
    tensors: dict[str, Any]  # the variant's runtime tensors, by name


def device_sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def alibi_slopes(heads: int, device: str):
    """ALiBi's geometric head slopes 2^(-8 i / H), i = 1..H."""
    import torch

    return torch.exp2(-8.0 * torch.arange(1, heads + 1, device=device, dtype=torch.float32) / heads)


def runtime_tensors(variant: str, sizes: Sizes) -> dict[str, Any]:
    import torch

    L = sizes.seq_len(variant)
    if variant == "alibi":
        return {"slopes": alibi_slopes(sizes.H, sizes.device)}
    if variant == "documents":
        ids = (torch.arange(L, device=sizes.device) * sizes.documents // L).to(torch.int32)
        return {"document_ids": ids.expand(sizes.B, L).contiguous()}
    if variant == "lightning":  # Lightning Attention's per-head decay rates are ALiBi's slopes
        return {"decay_log": -alibi_slopes(sizes.H, sizes.device)}
    return {}


def make_inputs(variant: str, sizes: Sizes) -> Inputs:
    """Random q, k, v, an output gradient and the runtime tensors, on the device (the first
    CUDA allocation initializes the context, which is why this is timed apart)."""
    import torch

    gen = torch.Generator(device=sizes.device).manual_seed(0)
    shape = (sizes.B, sizes.H, sizes.seq_len(variant), sizes.D)
    q, k, v, dout = (torch.randn(shape, generator=gen, device=sizes.device, dtype=getattr(torch, sizes.dtype))
                     for _ in range(4))
    return Inputs(q, k, v, dout, runtime_tensors(variant, sizes))


def forward_backward(fn: Callable, inputs: Inputs) -> None:
    """One training step's attention: a forward with gradients, then its backward."""
    q, k, v = (t.detach().requires_grad_() for t in (inputs.q, inputs.k, inputs.v))
    fn(q, k, v).backward(inputs.dout)


def attngen_variant(ag, variant: str, sizes: Sizes):
    """The variant as an attngen user declares it."""
    if variant == "alibi":
        @ag.score_mod
        def alibi(score, b, h, q_idx, kv_idx, slopes):
            return score - slopes[h] * abs(q_idx - kv_idx)

        return ag.Variant(score=alibi, mask=ag.causal(), name="alibi")
    if variant == "lightning":
        from attngen.library import builtin

        return builtin("lightning")
    if variant == "sigmoid":
        return ag.Variant(mask=ag.causal(), norm=ag.sigmoid(), name="sigmoid")
    masks = {"causal": ag.causal, "sliding_window": lambda: ag.sliding_window(sizes.window - 1),
             "documents": lambda: ag.causal() & ag.document(), "na2d": lambda: ag.neighborhood(sizes.kernel)}
    return ag.Variant(mask=masks[variant](), name=variant)


def attngen_call_kwargs(variant: str, sizes: Sizes, inputs: Inputs) -> dict[str, Any]:
    return {**inputs.tensors, **({"spatial_shape": sizes.grid} if variant == "na2d" else {})}


def attngen_worker(variant: str, sizes: Sizes, backward: bool) -> dict[str, Any]:
    watch, result = Stopwatch(), {"from_cache": None}
    try:
        with watch.stage("import_torch"):
            import torch
        with watch.stage("import_library"):
            import attngen as ag
        with watch.stage("declare"):
            declared = attngen_variant(ag, variant, sizes)
        with watch.stage("setup"):
            inputs = make_inputs(variant, sizes)
            watch.sync = device_sync(sizes.device)
        with watch.stage("compile"):
            attn = ag.compile(declared)
        result["from_cache"] = attn.from_cache
        kwargs = attngen_call_kwargs(variant, sizes, inputs)
        with torch.no_grad():
            for stage in ("first_fwd", "second_fwd"):
                with watch.stage(stage):
                    attn(inputs.q, inputs.k, inputs.v, **kwargs)
        if backward:
            with watch.stage("first_fwd_bwd"):
                forward_backward(lambda q, k, v: attn(q, k, v, **kwargs), inputs)
    except StageFailed:
        pass
    return {**result, "times": watch.times, "errors": watch.errors}


def flex_na2d_mask(grid: tuple[int, int], kernel: int) -> Callable:
    """NATTEN's 2-D neighborhood (dilation 1, stride 1, not causal) as a FlexAttention
    mask_mod over row-major token indices: per axis the window starts at the query's
    position minus kernel // 2, shifted inward at the borders (shared/SEMANTICS.md)."""
    import torch

    rows, cols = grid

    def axis_keep(x, y, size):
        start = torch.clamp(x - kernel // 2, 0, size - kernel)
        return (y >= start) & (y < start + kernel)

    def mask_mod(b, h, q_idx, kv_idx):
        return (axis_keep(q_idx // cols, kv_idx // cols, rows)
                & axis_keep(q_idx % cols, kv_idx % cols, cols))

    return mask_mod


def flex_mods(variant: str, sizes: Sizes, tensors: dict[str, Any]) -> tuple[Callable | None, Callable]:
    """(score_mod, mask_mod) as a FlexAttention user writes them; tensors by closure."""
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    if variant == "causal":
        return None, causal
    if variant == "alibi":
        slopes = tensors["slopes"]

        def alibi(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx).abs()

        return alibi, causal
    if variant == "sliding_window":
        def window(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < sizes.window)

        return None, window
    if variant == "documents":
        doc = tensors["document_ids"]

        def causal_documents(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (doc[b, q_idx] == doc[b, kv_idx])

        return None, causal_documents
    if variant == "na2d":
        return None, flex_na2d_mask(sizes.grid, sizes.kernel)
    raise ValueError(f"FlexAttention cannot run variant '{variant}': {FLEX_CANNOT.get(variant, 'unknown')}")


def flex_worker(variant: str, sizes: Sizes, backward: bool) -> dict[str, Any]:
    watch = Stopwatch()
    try:
        with watch.stage("import_torch"):
            import torch
        with watch.stage("import_library"):
            # Dynamo and Inductor too: torch.compile imports them lazily, and imports are
            # reported apart from the first call for attngen as well.
            import torch._dynamo
            import torch._inductor.compile_fx
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        with watch.stage("setup"):
            inputs = make_inputs(variant, sizes)
            watch.sync = device_sync(sizes.device)
        with watch.stage("declare"):
            score_mod, mask_mod = flex_mods(variant, sizes, inputs.tensors)
        L = sizes.seq_len(variant)
        with watch.stage("block_mask"):  # documents depend on the batch; the others broadcast
            block_mask = create_block_mask(mask_mod, sizes.B if variant == "documents" else None, None, L, L,
                                           device=sizes.device)
        with watch.stage("compile"):  # lazy: the work happens in the first call
            flex = torch.compile(flex_attention, dynamic=False)

        def call(q, k, v):
            return flex(q, k, v, score_mod=score_mod, block_mask=block_mask)

        with torch.no_grad():
            for stage in ("first_fwd", "second_fwd"):
                with watch.stage(stage):
                    call(inputs.q, inputs.k, inputs.v)
        if backward:
            with watch.stage("first_fwd_bwd"):
                forward_backward(call, inputs)
    except StageFailed:
        pass
    return {"times": watch.times, "errors": watch.errors}


def primer_worker(sizes: Sizes) -> dict[str, Any]:
    """Triton's one-time setup in a fresh Triton cache (its driver utilities, built with a C
    compiler). A new variant on a machine that has run Triton before does not pay it, so it
    runs once here, is reported apart, and its cache seeds every scenario's."""
    watch = Stopwatch()
    try:
        with watch.stage("import_torch"):
            import torch  # noqa: F401 - Triton's driver takes the current device and stream from torch
        with watch.stage("triton_setup"):
            import triton

            triton.runtime.driver.active.get_current_device()
    except StageFailed:
        pass
    return {"times": watch.times, "errors": watch.errors}


def worker_environment(sizes: Sizes) -> dict[str, Any]:
    """Versions and device, read after the timed stages."""
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as exc:
        env["triton"] = f"n/a ({short_reason(exc)})"
    if "attngen" in sys.modules:
        env["attngen"] = sys.modules["attngen"].__version__
    if sizes.device == "cuda":
        env["device"] = torch.cuda.get_device_name()
    else:
        env["device"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores), Triton interpreter"
    return env


def worker_main(args: argparse.Namespace) -> int:
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    backward = not args.no_backward
    if args.worker == "primer":
        result = primer_worker(sizes)
    elif args.worker == "attngen":
        result = attngen_worker(args.variant, sizes, backward)
    else:
        result = flex_worker(args.variant, sizes, backward)
    try:
        result["environment"] = worker_environment(sizes)
    except Exception as exc:  # a broken torch import is already in result["errors"]
        result["environment"] = {"error": short_reason(exc)}
    print(json.dumps(result), flush=True)  # the last stdout line is what the parent reads
    return 0


# =========================================================================== parent side


@dataclass
class Record:
    """One worker process: its stage times (seconds) and errors, or why it did not run."""

    library: str  # "attngen", "flex" ("triton" for the primer)
    variant: str
    process: str  # "first", "second" or "primer"
    times: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    from_cache: bool | None = None  # attngen: whether ag.compile found the module on disk
    skipped: str | None = None  # set when the library cannot express the variant

    @property
    def first_call_s(self) -> float | None:
        """Seconds from the declared variant to the first output (None if it did not run)."""
        if "first_fwd" not in self.times:
            return None
        return sum(self.times[p] for p in FIRST_CALL_PARTS if p in self.times)

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def worker_env(base: Mapping[str, str], cache_dir: Path, smoke: bool) -> dict[str, str]:
    """The environment of a scenario's workers: every cache inside ``cache_dir``, this
    checkout first on the import path, the interpreter only in smoke mode, and no output
    poisoning (a test-suite aid that would add a fill to every timed call)."""
    env = dict(base)
    env.pop("ATTNGEN_POISON_OUTPUTS", None)
    env["ATTNGEN_CACHE_DIR"] = str(cache_dir / "attngen")
    env["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else []))
    if smoke:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def worker_command(kind: str, variant: str, smoke: bool, backward: bool) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--variant", variant]
    return cmd + (["--smoke"] if smoke else []) + ([] if backward else ["--no-backward"])


def parse_worker_output(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """The worker's JSON (its last stdout line), or an error naming the exit status and the
    last line of stderr when the process died before printing it."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if lines:
        try:
            data = json.loads(lines[-1])
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
    tail = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no output")
    return {"times": {}, "errors": {"process": f"exit status {returncode}: {tail[-STDERR_TAIL_CHARS:]}"}}


def run_worker(cmd: list[str], env: dict[str, str], timeout: float, log_path: Path) -> dict[str, Any]:
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        save_log(log_path, stderr)
        return {"times": {}, "errors": {"process": f"timed out after {timeout:g} s"}}
    save_log(log_path, proc.stderr)
    return parse_worker_output(proc.stdout, proc.stderr, proc.returncode)


def save_log(path: Path, text: str) -> None:
    if text.strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def to_record(library: str, variant: str, process: str, data: Mapping[str, Any]) -> Record:
    return Record(library, variant, process, dict(data.get("times", {})), dict(data.get("errors", {})),
                  data.get("from_cache"))


def load_earlier(path: Path, config: Mapping[str, Any]) -> tuple[list[Record], dict[str, Any]]:
    """Records and environment of an earlier run's compile.json (--merge), which must have
    measured the same problem in the same mode."""
    data = json.loads(path.read_text())
    for key in ("sizes", "smoke", "backward"):
        if data["config"].get(key) != json.loads(json.dumps(config[key])):  # as JSON has it: tuples are lists
            raise SystemExit(f"--merge: {path} was measured with {key}={data['config'].get(key)!r}, "
                             f"this run uses {config[key]!r}")
    names = {f.name for f in fields(Record)}
    records = [Record(**{k: v for k, v in r.items() if k in names}) for r in data["records"]]
    complete = measured_pairs(records)
    return [r for r in records if (r.library, r.variant) in complete], data["environment"]


def measured_pairs(records: Sequence[Record]) -> set[tuple[str, str]]:
    """(library, variant) pairs with both processes recorded or skipped; a scenario cut short
    in the middle is measured again."""
    have = {(r.library, r.variant, r.process) for r in records}
    return ({(r.library, r.variant) for r in records if r.skipped}
            | {(lib, v) for lib, v, _ in have if all((lib, v, p) in have for p in PROCESSES)})


# --------------------------------------------------------------------------- formatting


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}" if seconds >= 10 else f"{seconds:.3f}"


def clip(reason: str) -> str:
    reason = reason.replace("|", "\\|").replace("\n", " ")
    return reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS] + "..."


def cell(record: Record | None, key: str) -> str:
    """A stage's seconds, or why there are none (the first call: whichever stage failed;
    a variant the library cannot express: see skipped_notes)."""
    if record is None:
        return "-"
    if record.skipped:
        return "n/a"
    value = record.first_call_s if key == "first_call" else record.times.get(key)
    if value is not None:
        return fmt_s(value)
    reason = record.errors.get(key) or record.errors.get("process")
    if reason is None and key == "first_call" and record.errors:
        stage, why = next(iter(record.errors.items()))
        reason = f"{stage}: {why}"
    return f"n/a ({clip(reason)})" if reason else "-"


def verdict(seconds: float | None, limit: float, smoke: bool) -> str:
    if smoke:
        return "n/a (interpreter)"
    if seconds is None:
        return "-"
    return "yes" if seconds < limit else "**NO**"


def ratio(flex_s: float | None, attngen_s: float | None) -> str:
    """How many times longer FlexAttention's first call took than attngen's."""
    if flex_s is None or attngen_s is None or attngen_s <= 0:
        return "-"
    return f"x{flex_s / attngen_s:.1f}"


def find(records: Sequence[Record], library: str, variant: str, process: str) -> Record | None:
    for r in records:
        if r.library == library and r.variant == variant and (r.process == process or r.skipped):
            return r
    return None


def first_call_of(record: Record | None) -> float | None:
    return record.first_call_s if record is not None else None


def variants_in(records: Sequence[Record]) -> list[str]:
    return [v for v in VARIANTS if any(r.variant == v for r in records)]


def summary_table(records: Sequence[Record], smoke: bool) -> str:
    rows = [f"| variant | attngen first call, 1st process | < {TARGET_S['first']:g} s | attngen, 2nd process | "
            f"< {TARGET_S['second']:g} s | "
            "Flex first call, 1st process | Flex, 2nd process | Flex / attngen (1st, 2nd) | "
            "first fwd+bwd, 1st process: attngen / Flex | 2nd process: attngen / Flex |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants_in(records):
        a1, a2 = find(records, "attngen", v, "first"), find(records, "attngen", v, "second")
        f1, f2 = find(records, "flex", v, "first"), find(records, "flex", v, "second")
        rows.append(" | ".join([
            f"| {v}", cell(a1, "first_call"), verdict(first_call_of(a1), TARGET_S["first"], smoke),
            cell(a2, "first_call"), verdict(first_call_of(a2), TARGET_S["second"], smoke),
            cell(f1, "first_call"), cell(f2, "first_call"),
            f"{ratio(first_call_of(f1), first_call_of(a1))}, {ratio(first_call_of(f2), first_call_of(a2))}",
            f"{cell(a1, 'first_fwd_bwd')} / {cell(f1, 'first_fwd_bwd')}",
            f"{cell(a2, 'first_fwd_bwd')} / {cell(f2, 'first_fwd_bwd')} |"]))
    return "\n".join(rows)


def detail_table(records: Sequence[Record]) -> str:
    titles = [title for _, title in DETAIL_COLUMNS]
    rows = ["| library | variant | process | " + " | ".join(titles) + " | attngen cache hit |",
            "|---|---|---|" + "---|" * (len(titles) + 1)]
    for r in records:
        if r.skipped or r.process == "primer":
            continue
        hit = "-" if r.from_cache is None else ("yes" if r.from_cache else "no")
        rows.append(f"| {LIBRARY_TITLES[r.library]} | {r.variant} | {r.process} | "
                    + " | ".join(cell(r, key) for key, _ in DETAIL_COLUMNS) + f" | {hit} |")
    return "\n".join(rows)


def primer_note(records: Sequence[Record]) -> str:
    primers = [r for r in records if r.process == "primer"]
    if not primers:
        return "- Triton's one-time setup was not separated (--no-prime or smoke): 1st processes include it"
    took = primers[-1].times.get("triton_setup")
    what = f"{fmt_s(took)} s" if took is not None else cell(primers[-1], "triton_setup")
    return (f"- Triton's one-time setup (driver utilities, built with a C compiler; any earlier Triton use on a "
            f"machine has it cached) ran once in a primer process ({what}), not counted; its Triton cache seeded "
            "every scenario's")


def skipped_notes(records: Sequence[Record]) -> str:
    """Why some cells are n/a: variants a library cannot express."""
    return "; ".join(f"{LIBRARY_TITLES[r.library]} cannot run {r.variant} ({r.skipped})" for r in records if r.skipped)


def markdown_header(env: Mapping[str, Any], config: Mapping[str, Any], records: Sequence[Record]) -> str:
    sizes = config["sizes"]
    lines = [
        "# attngen compile time",
        "",
        f"- date (UTC): {env.get('date_utc', '?')}; commit {env.get('commit', '?')}",
        f"- device: {env.get('device', '?')}; torch {env.get('torch', '?')}, Triton {env.get('triton', '?')}, "
        f"attngen {env.get('attngen', '?')}, CUDA {env.get('cuda', '?')}, Python {env.get('python', '?')}",
        f"- problem: B={sizes['B']} H={sizes['H']} L={sizes['L']} D={sizes['D']} {sizes['dtype']}; "
        f"na2d: {sizes['grid'][0]}x{sizes['grid'][1]} tokens, kernel {sizes['kernel']}x{sizes['kernel']}; "
        f"causal sliding window {sizes['window']}; causal documents: {sizes['documents']} per sequence; "
        "alibi: causal with runtime slopes; sigmoid: causal; lightning: the built-in",
        "- every row is one fresh Python process; 1st process: empty attngen, Triton and Inductor caches (a new "
        "temporary folder per variant and library); 2nd process: a new process on the caches the 1st left",
        "- first call = attngen: `ag.compile` + the first forward; FlexAttention: `create_block_mask` + "
        "`torch.compile(flex_attention)` + its first forward; synchronized, under `torch.no_grad()`; imports "
        "(Flex: with Dynamo and Inductor) and CUDA initialization are not counted (see the detail table)",
        "- first fwd+bwd: the first forward with gradients and its backward, after the first call (backward kernels "
        "compile here; Flex also recompiles its forward for training)",
        f"- targets (issue \"Autotuning ...\", item 3): attngen first call < {TARGET_S['first']:g} s in the 1st "
        f"process, < {TARGET_S['second']:g} s in the 2nd; PEERS.md: FlexAttention compiles each new mask in 5-8 s "
        "per process",
        primer_note(records),
    ]
    if env.get("merged"):
        lines.append(f"- includes the records of an earlier run: {env['merged']}")
    if config.get("smoke"):
        lines.append("- **smoke run**: CPU, Triton interpreter, float32, tiny sizes, no FlexAttention. The "
                     "interpreter has no JIT compile, so these numbers measure code generation and module loading "
                     "only (and the interpreter's run time in the calls); they check the script, not the targets")
    return "\n".join(lines)


def full_markdown(env: Mapping[str, Any], config: Mapping[str, Any], records: Sequence[Record]) -> str:
    notes = skipped_notes(records)
    return "\n".join([markdown_header(env, config, records), "", "## First call (seconds)", "",
                      summary_table(records, bool(config.get("smoke")))] + (["", f"n/a: {notes}"] if notes else [])
                     + ["", "## Every part (seconds)", "", detail_table(records)]) + "\n"


def to_json(env: Mapping[str, Any], config: Mapping[str, Any], records: Sequence[Record]) -> dict[str, Any]:
    return {"environment": dict(env), "config": dict(config), "targets_s": TARGET_S,
            "records": [{**asdict(r), "first_call_s": r.first_call_s} for r in records]}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out: Path, env: Mapping[str, Any], config: Mapping[str, Any],
                  records: Sequence[Record]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "compile.md", out / "compile.json"
    write_atomic(md, full_markdown(env, config, records))
    write_atomic(js, json.dumps(to_json(env, config, records), indent=2) + "\n")
    return md, js


def missed_targets(records: Sequence[Record]) -> list[str]:
    """attngen first calls over their target, as 'variant (process): seconds'."""
    return [f"{r.variant} ({r.process}): {fmt_s(r.first_call_s)} s" for r in records
            if r.library == "attngen" and r.process in TARGET_S and r.first_call_s is not None
            and r.first_call_s >= TARGET_S[r.process]]


def progress_line(r: Record) -> str:
    if r.skipped:
        return f"{LIBRARY_TITLES[r.library]} {r.variant}: n/a ({r.skipped})"
    parts = [f"{key} {fmt_s(value)}" for key, value in r.times.items()]
    errors = [f"{key}: {reason}" for key, reason in r.errors.items()]
    return (f"{LIBRARY_TITLES[r.library]} {r.variant} {r.process}: " + ", ".join(parts)
            + (f" | first call {fmt_s(r.first_call_s)} s" if r.first_call_s is not None else "")
            + (f" | FAILED {'; '.join(errors)}" if errors else ""))


# --------------------------------------------------------------------------- parent main


def git_commit() -> str:
    """``$ATTNGEN_COMMIT`` if set (the device tool's copy of the tree carries stale git
    metadata), else ``git rev-parse HEAD``. Every benchmark's results header takes it from
    here (bench_forward re-exports it), since this script imports only the standard library."""
    if os.environ.get("ATTNGEN_COMMIT"):
        return os.environ["ATTNGEN_COMMIT"]
    try:
        res = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=REPO, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else "unknown"


def run_primer(args: argparse.Namespace, cache_dir: Path) -> tuple[Record, dict[str, Any]]:
    """Triton's one-time setup into ``cache_dir/triton`` (primer_worker)."""
    cmd = worker_command("primer", VARIANTS[0], args.smoke, not args.no_backward)
    data = run_worker(cmd, worker_env(os.environ, cache_dir, args.smoke), args.worker_timeout,
                      args.out / "compile_logs" / "triton-primer.txt")
    return to_record("triton", "-", "primer", data), data.get("environment", {})


def run_scenario(library: str, variant: str, args: argparse.Namespace,
                 seed: Path | None) -> Iterator[tuple[Record, dict[str, Any]]]:
    """The 1st and 2nd process on one fresh cache folder, whose Triton cache starts as a
    copy of ``seed`` (the primer's) when given."""
    with tempfile.TemporaryDirectory(prefix=f"bench-compile-{library}-{variant}-") as tmp:
        env = worker_env(os.environ, Path(tmp), args.smoke)
        if seed is not None and seed.is_dir():
            shutil.copytree(seed, env["TRITON_CACHE_DIR"])
        for process in PROCESSES:
            cmd = worker_command(library, variant, args.smoke, not args.no_backward)
            log = args.out / "compile_logs" / f"{library}-{variant}-{process}.txt"
            data = run_worker(cmd, env, args.worker_timeout, log)
            yield to_record(library, variant, process, data), data.get("environment", {})


def parent_main(args: argparse.Namespace) -> int:
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    libraries = ["attngen"] if args.smoke else args.libraries
    config = {"sizes": asdict(sizes), "variants": args.variants, "libraries": libraries, "smoke": args.smoke,
              "backward": not args.no_backward, "prime": args.prime, "worker_timeout_s": args.worker_timeout}
    records, earlier_env = load_earlier(args.merge, config) if args.merge else ([], {})
    env: dict[str, Any] = {**earlier_env, "commit": git_commit(),
                           "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")}
    if args.merge:
        env["merged"] = (f"{args.merge} (measured {earlier_env.get('date_utc', '?')}, "
                         f"commit {earlier_env.get('commit', '?')})")
    done = measured_pairs(records)
    # library by library, so a run cut short has every attngen number first
    plan = [(lib, v) for lib in libraries for v in args.variants if (lib, v) not in done]
    with tempfile.TemporaryDirectory(prefix="bench-compile-primer-") as primer_dir:
        seed = None
        if args.prime and plan:
            record, worker_info = run_primer(args, Path(primer_dir))
            records.append(record)
            env = {**worker_info, **env} if "error" not in worker_info else env
            print(f"[primer] {progress_line(record)}", flush=True)
            seed = Path(primer_dir) / "triton"
        for i, (library, variant) in enumerate(plan):
            if library == "flex" and variant in FLEX_CANNOT:
                records.append(Record(library, variant, "-", skipped=FLEX_CANNOT[variant]))
                print(f"[{i + 1}/{len(plan)}] {progress_line(records[-1])}", flush=True)
                continue
            for record, worker_info in run_scenario(library, variant, args, seed):
                records.append(record)
                env = {**worker_info, **env} if "error" not in worker_info else env
                print(f"[{i + 1}/{len(plan)}] {progress_line(record)}", flush=True)
                write_results(args.out, env, config, records)
    md, js = write_results(args.out, env, config, records)
    print(f"wrote {md} and {js}\n", flush=True)
    failed = [f"{r.library} {r.variant} {r.process}" for r in records if r.failed]
    if failed:
        print("!!! failed: " + ", ".join(failed), flush=True)
    missed = [] if args.smoke else missed_targets(records)
    if missed:
        print("!!! attngen first call over target: " + ", ".join(missed), flush=True)
    print(full_markdown(env, config, records), flush=True)  # last, so the output's tail holds the tables
    return 1 if any(r.failed and r.library == "attngen" and r.process in PROCESSES for r in records) else 0


# --------------------------------------------------------------------------- arguments


def name_list(known: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown) or '(empty)'}; known: {', '.join(known)}")
        return names

    return parse


def default_out(environ: Mapping[str, str]) -> Path:
    return Path(environ["OUT"]) if environ.get("OUT") else REPO / "benchmarks" / "results" / "latest"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for compile.md, compile.json and compile_logs/ "
                        "(default: $OUT, else benchmarks/results/latest)")
    p.add_argument("--variants", type=name_list(VARIANTS), default=list(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    p.add_argument("--libraries", type=name_list(LIBRARIES), default=list(LIBRARIES),
                   help="comma-separated subset of attngen,flex (default: both; --smoke runs attngen only)")
    p.add_argument("--no-backward", action="store_true", help="skip the first forward+backward (backward kernels)")
    p.add_argument("--no-prime", dest="prime", action="store_false",
                   help="do not run Triton's one-time setup in a primer process first (its cache seeds every "
                        "scenario's): each 1st process then pays it, as on a machine that never ran Triton")
    p.add_argument("--worker-timeout", type=float, default=300.0,
                   help="seconds one worker process may take before it is recorded as timed out (default 300)")
    p.add_argument("--merge", type=Path, default=None,
                   help="compile.json of an earlier run on the same problem (one cut short by a time limit, or "
                        "another --libraries): its records are kept and not measured again")
    p.add_argument("--smoke", action="store_true",
                   help="CPU check of the plumbing: Triton interpreter, float32, tiny sizes, no FlexAttention; the "
                        "numbers measure code generation and module loading only (the interpreter has no JIT)")
    p.add_argument("--worker", choices=("attngen", "flex", "primer"), help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, default=VARIANTS[0], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = default_out(os.environ)
    if args.smoke:
        args.prime = False  # the interpreter builds nothing
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return worker_main(args) if args.worker else parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
