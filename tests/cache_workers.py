"""Processes racing on one kernel cache; run as a script by tests/test_cache_faults.py.

``python cache_workers.py SALT`` (with ATTNGEN_CACHE_DIR set) forks 8 workers that start
together (a barrier) and compile three different variants into the cache (3, 3 and 2
workers each), run them and compare with the reference. Then it forks one more process that
dies by SIGKILL while it builds a fourth variant, holding that entry's lock, and compiles
that variant itself. It prints one JSON report on its last line.

One script forks everything, before this process runs any torch operation: forking a
process whose OpenMP pool has started can deadlock the child, and each fresh interpreter
would cost seconds of imports.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import time

import torch

import attngen as ag

WORKERS = 8
VARIANTS = 3


def variant(i: int, salt: float) -> ag.Variant:
    tag = salt + i / 16  # the salt gives each test run keys of its own

    def shifted(score, b, h, q_idx, kv_idx):
        return score - 0.02 * abs(q_idx - kv_idx) + tag

    return ag.Variant(score=shifted, mask=ag.causal() if i % 2 else None)


def run_and_check(attn) -> float:
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 24, 16, generator=g) for _ in range(3))
    out = attn(q, k, v)
    ref = ag.reference(attn.variant)(q, k, v)
    return float((out.double() - ref).norm() / ref.norm())


def worker(i: int, salt: float, barrier, results) -> None:
    torch.set_num_threads(1)
    barrier.wait()
    attn = ag.compile(variant(i % VARIANTS, salt))
    results.put({"worker": i, "variant": i % VARIANTS, "built": not attn.from_cache, "err": run_and_check(attn)})


def holder(salt: float, marker: str) -> None:
    """Builds variant VARIANTS but is killed inside the build, with the entry's lock held."""
    import attngen.compiler as compiler

    real_render = compiler.render

    def render_then_hang(ir):
        source = real_render(ir)
        open(marker, "w").close()
        time.sleep(600)
        return source

    compiler.render = render_then_hang
    ag.compile(variant(VARIANTS, salt))


def main(salt: float) -> dict:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(i, salt, barrier, results)) for i in range(WORKERS)]
    t0 = time.time()
    for p in procs:
        p.start()
    race = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    race_s = time.time() - t0

    marker = os.path.join(os.environ["ATTNGEN_CACHE_DIR"], "holder-is-building")
    victim = ctx.Process(target=holder, args=(salt, marker))
    victim.start()
    deadline = time.time() + 120
    while not os.path.exists(marker) and time.time() < deadline and victim.is_alive():
        time.sleep(0.05)
    built_by_victim = os.path.exists(marker)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    t1 = time.time()
    attn = ag.compile(variant(VARIANTS, salt))  # must not wait for the dead process's lock
    after_kill_s = time.time() - t1
    lock_file = attn.path.parent.parent / f"{attn.key}.lock"
    return {"race": race, "race_s": race_s, "exit_codes": [p.exitcode for p in procs],
            "victim_reached_build": built_by_victim, "victim_exit": victim.exitcode,
            "after_kill_s": after_kill_s, "after_kill_built": not attn.from_cache,
            "after_kill_err": run_and_check(attn), "lock_file_left": lock_file.exists()}


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]))))
