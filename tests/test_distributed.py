"""Context parallelism across processes: gloo on the CPU, kernels under the Triton interpreter.

One spawn of 4 processes serves every case (world sizes 2, 3 and 4 as subgroups;
tests/distributed_harness.py); each case compares its ranks' shards of the output, lse and
gradients with ``ag.reference`` on the unsharded tensors (tests/distributed_cases.py).
Uneven splits: lengths that the chunks do not divide, and grids split into unequal rows.
"""
from __future__ import annotations

import pytest
import torch

import distributed_cases as dc
from distributed_harness import Case, run_cases

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo/CPU suite (GPU runs: "
                                "benchmarks/bench_context_parallel.py --check)")

S, N = dc.check_sequence, dc.check_neighborhood
CASES = [
    # sequence layouts: ring, all-gather and Ulysses over masks, score_mods, sinks, sigmoid
    Case("ring-causal-balanced-w2", S, 2, dict(variant="causal", mode="ring", balanced=True, L=32)),
    Case("ring-causal-sinks-float16-balanced-w2", S, 2, dict(variant="causal_sinks", mode="ring", balanced=True,
                                                             L=30, dtype="float16")),
    Case("ring-alibi-sinks-w2", S, 2, dict(variant="alibi_causal_sinks", mode="ring", balanced=False, L=30)),
    Case("allgather-documents-balanced-w2", S, 2, dict(variant="doc_causal", mode="allgather", balanced=True,
                                                       B=2, L=30)),
    Case("ulysses-alibi-sinks-w2", S, 2, dict(variant="alibi_causal_sinks", mode="ulysses", balanced=False, L=30)),
    Case("ring-sigmoid-w2", S, 2, dict(variant="sigmoid_causal", mode="ring", balanced=False, L=30)),
    Case("ring-documents-balanced-w3", S, 3, dict(variant="doc_causal", mode="ring", balanced=True, L=24)),
    Case("allgather-window-w3", S, 3, dict(variant="window", mode="allgather", balanced=False, L=40)),
    Case("ring-prefix-lm-w3", S, 3, dict(variant="prefix_lm", mode="ring", balanced=False, L=40)),
    Case("ulysses-sinks-balanced-w3", S, 3, dict(variant="causal_sinks", mode="ulysses", balanced=True, L=40,
                                                 Hq=6, Hkv=3)),
    Case("ulysses-refuses-uneven-heads-w3", dc.check_ulysses_heads_refused, 3),
    Case("ring-alibi-sinks-gqa-balanced-w4", S, 4, dict(variant="alibi_causal_sinks", mode="ring", balanced=True,
                                                        L=26, Hq=2, Hkv=1)),
    Case("allgather-sigmoid-window-balanced-w2", S, 2, dict(variant="sigmoid_window", mode="allgather",
                                                            balanced=True, L=30)),
    Case("ring-softcap-dense-w3", S, 3, dict(variant="softcap_dense", mode="ring", balanced=False, L=34)),
    Case("ring-position-bias-balanced-w2", S, 2, dict(variant="position_bias", mode="ring", balanced=True, L=30)),
    # which pairs are launched on which kernel, and the ring's bytes
    Case("causal-work-balanced-w3", dc.check_causal_work, 3, dict(balanced=True, L=25)),
    Case("causal-work-contiguous-w2", dc.check_causal_work, 2, dict(balanced=False)),
    # neighborhoods sharded by rows: halo mode (bytes checked against the windows) and Ulysses
    Case("na1d-dilated-causal-documents-w3", N, 3, dict(shape=(23,), kernel=5, dilation=2, causal=True,
                                                        rows=(9, 6, 8), documents=True)),
    Case("na1d-causal-alibi-at-global-positions-w3", N, 3, dict(shape=(20,), kernel=7, rows=(8, 5, 7),
                                                                 positions=True)),
    Case("na2d-causal-stride-w2", N, 2, dict(shape=(8, 3), kernel=(3, 3), stride=(2, 1), causal=(True, False),
                                             rows=(3, 5))),
    Case("na2d-dilated-stride-sinks-w2", N, 2, dict(shape=(8, 4), kernel=(2, 3), stride=(2, 1), dilation=(2, 1),
                                                    rows=(3, 5), sinks=True)),
    Case("na2d-halo-past-neighbours-w3", N, 3, dict(shape=(6, 3), kernel=(5, 3), rows=(1, 2, 3))),
    Case("na3d-sinks-w4", N, 4, dict(shape=(8, 3, 2), kernel=(3, 3, 2), sinks=True)),
    Case("na2d-ulysses-w2", N, 2, dict(shape=(6, 6), kernel=(3, 5), dilation=(2, 1), mode="ulysses")),
]


@pytest.fixture(scope="module")
def reports():
    return run_cases(CASES, world=4, timeout=600)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(reports, case):
    report = reports[case.name]
    assert not report["errors"], "\n".join(report["errors"])
