"""Experiments that time a hand-edited variant of a generated module: load the edited source
as a module and make a compiled variant launch it (forward and backward alike), and time the
variants in interleaved rounds."""
from __future__ import annotations

import gzip
import importlib.util
import re
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

_FOLDER = Path(tempfile.mkdtemp(prefix="attngen-rewritten-"))


def load_source(source: str, name: str) -> ModuleType:
    """``source`` imported as module ``name`` (written to a temporary folder)."""
    path = _FOLDER / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def replace_once(source: str, old: str, new: str) -> str:
    """``source`` with its one occurrence of ``old`` replaced; stops the experiment when the
    generated code no longer has exactly one."""
    assert source.count(old) == 1, f"generated source changed: update the experiment ({old[:60]!r})"
    return source.replace(old, new)


def edit_kernel(source: str, suffix: str, edit: Callable[[str], str]) -> str:
    """``source`` with ``edit`` applied to the text of the one @triton.jit function whose name
    ends with ``suffix`` (``_bwd_dkdv``, ``_bwd_dq_step``, ...)."""
    name = re.search(rf"\ndef (\w+{suffix})\(", source).group(1)
    start = source.index(f"\ndef {name}(")
    end = source.find("\n@triton.jit", start + 1)
    end = len(source) if end < 0 else end
    return source[:start] + edit(source[start:end]) + source[end:]


def use_rewritten(attn, edit: Callable[[str], str]) -> None:
    """Make ``attn`` (a CompiledAttention) launch ``edit(attn.source)`` instead of its module."""
    attn._module = load_source(edit(attn.source), f"{attn.ir.name}_rewritten")


def interleaved_ms(runs: dict, rounds: int, rep: float = 200) -> dict:
    """{key: [ms per round]}: every function of ``runs`` timed once per round (do_bench median),
    round after round, so that clock drift under sustained load hits them alike."""
    import triton

    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            times[key].append(triton.testing.do_bench(fn, warmup=25, rep=rep))
    return times


def print_rates(times: dict, flops: dict | float, width: int = 26, vs: str | None = None) -> None:
    """One line per key: TFLOP/s per round and their median (``flops`` per key, or one for all).
    ``vs``: keys are (case, label) pairs, and each line also gives the median per-round speed
    ratio to its case's ``(case, vs)`` entry, where there is one."""
    for key, t in times.items():
        f = flops[key] if isinstance(flops, dict) else flops
        r = [f / ms / 1e9 for ms in t]
        base = times.get((key[0], vs)) if vs is not None and key[1] != vs else None
        ratio = "" if base is None else \
            f"  vs {vs} median {sorted(b / m for b, m in zip(base, t))[len(t) // 2]:.3f}"
        name = " ".join(map(str, key)) if isinstance(key, tuple) else str(key)
        print(f"{name:{width}s}: " + " ".join(f"{x:5.0f}" for x in r)
              + f"  TFLOP/s (median {sorted(r)[len(r) // 2]:.0f}){ratio}", flush=True)


def neighborhood_ab(cases: dict, old_edit: Callable, labels: tuple[str, str], rounds: int,
                    heads: int = 16, d: int = 128, forward: bool = False) -> None:
    """Forward+backward (and with ``forward`` the forward alone, under no_grad) of each
    neighborhood case ({name: (spatial shape, kernel[, stride])}) with the generated module
    ("new") and with ``old_edit(attn, shape, name)(source)`` ("old"), H100 bf16 B=1: the
    gradients compared, then ``rounds`` interleaved timing rounds printed per case and label."""
    import math

    import torch
    import triton

    import attngen as ag

    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    runs = {}
    for case, (name, (shape, kernel, *stride)) in enumerate(cases.items()):
        L = math.prod(shape)
        q, k, v = (torch.randn(1, heads, L, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)
        na = ag.neighborhood(kernel, stride=stride[0] if stride else 1)
        tag = re.sub(r"\W", "_", labels[0].split()[0].lower())  # part of a variant name
        new = ag.compile(ag.Variant(mask=na, name=f"na_new_{tag}_{len(shape)}d_{case}"))
        old = ag.compile(ag.Variant(mask=na, name=f"na_old_{tag}_{len(shape)}d_{case}"))
        use_rewritten(old, old_edit(old, shape, name))
        grads = [torch.autograd.grad(a(q, k, v, spatial_shape=shape), (q, k, v), do) for a in (new, old)]
        err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(*grads))
        print(f"{name}: {labels[0]} vs {labels[1]} gradients, max rel err {err:.1e}", flush=True)
        for label, attn in zip(labels, (new, old)):
            runs[(name, label, "fwd+bwd")] = (lambda a=attn, q=q, k=k, v=v, do=do, s=shape:
                                              torch.autograd.grad(a(q, k, v, spatial_shape=s), (q, k, v), do))
            if forward:
                runs[(name, label, "fwd")] = (lambda a=attn, q=q, k=k, v=v, s=shape:
                                              call_no_grad(a, q, k, v, spatial_shape=s))
    times = interleaved_ms(runs, rounds)
    for (name, label, mode), t in sorted(times.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        print(f"{name:24s} {mode:7s} {label:20s}: " + " ".join(f"{x:.3f}" for x in t)
              + f" ms (median {sorted(t)[len(t) // 2]:.3f})", flush=True)


def saved_module(path: Path, saved_name: str, attn) -> str:
    """A generated module kept gzipped in results (every neighborhood case's module differs
    only in its name), renamed to ``attn``'s variant."""
    return gzip.decompress(path.read_bytes()).decode().replace(saved_name, attn.ir.name)


def neighborhood_ab_cli(doc: str, cases: dict, old_edit: Callable, labels: tuple[str, str]) -> None:
    """The command line of a two-module neighborhood A/B: ``--rounds N``, then neighborhood_ab."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    neighborhood_ab(cases, old_edit, labels, ap.parse_args().rounds)


def call_no_grad(attn, *args, **kwargs):
    """``attn(*args, **kwargs)`` under torch.no_grad (forward-only timing)."""
    import torch

    with torch.no_grad():
        return attn(*args, **kwargs)
