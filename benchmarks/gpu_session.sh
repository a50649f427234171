#!/usr/bin/env bash
# The GPU runs, one command per results family (benchmarks/results/README.md). Run from the
# repository root on the GPU machine; results go to $OUT (the device tool's folder, fetched
# back) or, without it, to the family's folder benchmarks/results/FAMILY/.
#   bash benchmarks/gpu_session.sh tests [FILES]        the test suite (or FILES) on CUDA -> gpu_tests/; the
#                                                       files whose large tensors fill the GPU run serially after
#   bash benchmarks/gpu_session.sh tests_gluon [FILES]  the kernel tests again with ATTNGEN_DIALECT=gluon (the Gluon
#                                                       forward, and the backward after it, wherever a call can
#                                                       take them) -> gpu_tests/
#   bash benchmarks/gpu_session.sh compare [ARGS]       compare.py: every family against every peer
#   bash benchmarks/gpu_session.sh forward [ARGS]       the quickstart, then bench_forward.py
#   bash benchmarks/gpu_session.sh backward [ARGS]      bench_backward.py (forward+backward against Flex)
#   bash benchmarks/gpu_session.sh neighborhood [ARGS]  the neighborhood examples, then bench_neighborhood.py
#   bash benchmarks/gpu_session.sh linear [ARGS]        bench_linear.py (against fla)
#   bash benchmarks/gpu_session.sh normalizations [ARGS]  the normalization examples, then bench_normalizations.py
#   bash benchmarks/gpu_session.sh compile [ARGS]       bench_compile.py (first call and disk-cache reload)
#   bash benchmarks/gpu_session.sh autotune [ARGS]      attngen tune causal at the comparison's shape
#   bash benchmarks/gpu_session.sh head_dims [ARGS]     diagnose_head_dims.py (padded head dims, one process each)
#   bash benchmarks/gpu_session.sh training [ARGS]      the graph, Flex drop-in and module tests on CUDA (again with
#                                                       ATTNGEN_GRAPH_LAUNCH=inductor), then bench_training.py (the
#                                                       example models under torch.compile, both graph launches)
#   bash benchmarks/gpu_session.sh gluon [ARGS]         the Gluon kernels' tests on CUDA, gluon_forward_check.py, then
#                                                       compare.py's dense and causal rows (its Gluon column)
#   bash benchmarks/gpu_session.sh pending              what landed without a GPU run, in one call of under ten
#                                                       minutes (each step time-boxed): the Inductor-launched graph
#                                                       calls' and the launch cache's tests, training_overhead.py
#                                                       --profile, the Gluon kernel tests, the tensors over 2**31
#                                                       elements -> gpu_tests/
#   bash benchmarks/gpu_session.sh serving [ARGS]       the decoding and paged-cache tests on CUDA, then
#                                                       bench_serving.py (decoding against Flex and SDPA)
# Each run also writes FAMILY.log: the environment (date, GPU, driver, versions, commit), then
# the run's output.
set -uo pipefail
stage=${1:-tests}
shift || true
case "$stage" in
  bench) stage=forward ;;        # the stages' former names
  norms) stage=normalizations ;;
esac
family=$stage
case "$stage" in tests|tests_gluon|pending) family=gpu_tests ;; esac
out=${OUT:-benchmarks/results/$family}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ATTNGEN_CACHE_DIR=${ATTNGEN_CACHE_DIR:-/tmp/attngen-cache}
log="$out/$stage.log"
[ "$stage" = tests ] && log="$out/$family.log"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  echo "commit ${ATTNGEN_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
} 2>&1 | tee "$log"
case "$stage" in
  tests)
    # one worker per few CPU cores: Triton compiles are the bottleneck, not the GPU; the tensors of more than
    # 2**31 elements take 12-30 GiB each, so their file runs alone after the rest
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
    if [ $# -eq 0 ]; then
      ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider $workers tests \
        --deselect tests/test_large_tensors.py 2>&1 | tee -a "$log"
      ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_large_tensors.py 2>&1 | tee -a "$log"
    else
      ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider $workers "$@" 2>&1 | tee -a "$log"
    fi
    ;;
  tests_gluon)
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
    files=("$@")
    [ ${#files[@]} -eq 0 ] && files=(tests/test_gluon.py tests/test_masks.py tests/test_runtime_tensors.py
      tests/test_shapes_layouts.py tests/test_normalizations.py tests/test_numerics.py tests/test_graphs.py
      tests/test_backward.py tests/test_backward_masks.py)
    ATTNGEN_DIALECT=gluon ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider $workers "${files[@]}" \
      2>&1 | tee -a "$log"
    ;;
  compare)
    python3 benchmarks/compare.py --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  forward)
    python3 examples/quickstart.py 2>&1 | tee -a "$log"
    python3 benchmarks/bench_forward.py --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  backward)
    python3 benchmarks/bench_backward.py --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  neighborhood)
    for ex in examples/neighborhood_2d.py examples/neighborhood_3d.py; do
      python3 "$ex" 2>&1 | tee -a "$log"
    done
    python3 benchmarks/bench_neighborhood.py --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  linear)
    python3 benchmarks/bench_linear.py --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  normalizations)
    for ex in examples/sigmoid_attention.py examples/attention_sinks.py examples/gaussian_kernel.py; do
      python3 "$ex" 2>&1 | tee -a "$log"
    done
    python3 benchmarks/bench_normalizations.py --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  compile)
    # every measurement is a fresh process on its own temporary caches (ATTNGEN_CACHE_DIR above is not used)
    python3 benchmarks/bench_compile.py --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  autotune)
    # the record lands in $ATTNGEN_CACHE_DIR/autotune/<gpu>/; the ranking is in the log
    python3 -m attngen tune causal --shape 8192 --batch 2 --heads 16 --head-dim 128 --dtype bf16 "$@" 2>&1 \
      | tee -a "$log"
    ;;
  head_dims)
    python3 benchmarks/diagnose_head_dims.py "$@" 2>&1 | tee -a "$log"
    ;;
  training)
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
    ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider $workers tests/test_graphs.py \
      tests/test_flex.py tests/test_flex_vocabulary.py tests/test_nn.py tests/test_inductor_launch.py 2>&1 | tee -a "$log"
    # the graph tests again with the kernels that Inductor launches wherever a call can take them
    ATTNGEN_GRAPH_LAUNCH=inductor ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider $workers \
      tests/test_graphs.py tests/test_nn.py tests/test_flex.py 2>&1 | tee -a "$log"
    python3 benchmarks/bench_training.py --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  pending)
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
    step() { local limit=$1; shift; echo "== $* (at most ${limit}s)" | tee -a "$log"; timeout "$limit" "$@" 2>&1 | tee -a "$log"; }
    # test_fast_launch.py compares the launch cache with Triton 3.6's own launches (CPU check, this Triton)
    step 120 env ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider $workers tests/test_inductor_launch.py \
      tests/test_fast_launch.py
    step 120 env ATTNGEN_GRAPH_LAUNCH=inductor ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider \
      $workers tests/test_graphs.py tests/test_nn.py
    step 90 python3 benchmarks/training_overhead.py --profile
    step 120 env ATTNGEN_DIALECT=gluon ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider $workers \
      tests/test_gluon.py tests/test_backward.py tests/test_graphs.py
    step 120 env ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_large_tensors.py
    ;;
  gluon)
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
    ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider $workers tests/test_gluon.py 2>&1 | tee -a "$log"
    PYTHONPATH="$PWD/benchmarks:$PYTHONPATH" python3 benchmarks/experiments/gluon_forward_check.py \
      --configs 128x128x2,128x128x2p,128x64x3 2>&1 | tee -a "$log"
    python3 benchmarks/compare.py --families dense,causal --modes fwd,fwdbwd --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  serving)
    ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_decode.py tests/test_paged.py \
      tests/test_decode_checks.py tests/test_decode_graphs.py 2>&1 | tee -a "$log"
    python3 benchmarks/bench_serving.py --out "$out" "$@" 2>&1 | tee -a "$log"
    ;;
  *)
    echo "unknown stage '$stage' (tests, tests_gluon, gluon, compare, forward, backward, neighborhood, linear, normalizations," \
         "compile, autotune, head_dims, training or serving)" >&2
    exit 2
    ;;
esac
