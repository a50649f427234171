#!/usr/bin/env bash
# The GPU checks, run through the device tool. Logs and results go to $OUT (fetched back)
# or benchmarks/results/latest.
#   bash benchmarks/gpu_session.sh tests [FILES]  the test suite (or FILES) on CUDA (bf16, fp16, fp32)
#   bash benchmarks/gpu_session.sh bench [ARGS]   the quickstart, then bench_forward.py ARGS
#   bash benchmarks/gpu_session.sh neighborhood [ARGS]
#                                                 the NA examples, then bench_neighborhood.py ARGS
#   bash benchmarks/gpu_session.sh backward [ARGS] bench_backward.py ARGS (forward+backward vs Flex)
#   bash benchmarks/gpu_session.sh norms [ARGS]    the normalization examples, then bench_normalizations.py
#   bash benchmarks/gpu_session.sh compare [ARGS]  compare.py ARGS (every family vs every peer; --families to split)
#   bash benchmarks/gpu_session.sh compile [ARGS]  bench_compile.py ARGS (first call and disk-cache reload vs Flex)
set -uo pipefail
stage=${1:-tests}
shift || true
out=${OUT:-benchmarks/results/latest}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ATTNGEN_CACHE_DIR=${ATTNGEN_CACHE_DIR:-/tmp/attngen-cache}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$out/env-$stage.txt"
case "$stage" in
  tests)
    # one worker per few CPU cores: Triton compiles are the bottleneck, not the GPU
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
    ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider $workers "${@:-tests}" 2>&1 | tee "$out/gpu_tests.log"
    ;;
  bench)
    python3 examples/quickstart.py 2>&1 | tee "$out/quickstart.log"
    python3 benchmarks/bench_forward.py --out "$out" "$@" 2>&1 | tee "$out/bench.log"
    ;;
  neighborhood)
    for ex in examples/neighborhood_2d.py examples/neighborhood_3d.py; do
      python3 "$ex" 2>&1 | tee -a "$out/neighborhood_examples.log"
    done
    python3 benchmarks/bench_neighborhood.py --out "$out" "$@" 2>&1 | tee "$out/bench_neighborhood.log"
    ;;
  backward)
    python3 benchmarks/bench_backward.py --out "$out" "$@" 2>&1 | tee "$out/bench_backward.log"
    ;;
  norms)
    for ex in examples/sigmoid_attention.py examples/attention_sinks.py examples/gaussian_kernel.py; do
      python3 "$ex" 2>&1 | tee -a "$out/norm_examples.log"
    done
    python3 benchmarks/bench_normalizations.py --out "$out" "$@" 2>&1 | tee "$out/bench_normalizations.log"
    ;;
  compare)
    python3 benchmarks/compare.py --out "$out" "$@" 2>&1 | tee "$out/compare.log"
    ;;
  compile)
    # every measurement is a fresh process on its own temporary caches (ATTNGEN_CACHE_DIR above is not used)
    python3 benchmarks/bench_compile.py --out "$out" "$@" 2>&1 | tee "$out/bench_compile.log"
    ;;
  *) echo "unknown stage '$stage' (tests, bench, neighborhood, backward, norms, compare or compile)" >&2; exit 2 ;;
esac
