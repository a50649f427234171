#!/usr/bin/env bash
# One device-tool call: the test suite on CUDA (bf16/fp16/fp32), the quickstart, then the
# forward benchmark against FlexAttention and SDPA. Logs and results go to $OUT (the device
# tool fetches them) or benchmarks/results/latest.
#   usage, from the repository root on the GPU machine: bash benchmarks/gpu_session.sh [--sweep]
set -uo pipefail
out=${OUT:-benchmarks/results/latest}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ATTNGEN_CACHE_DIR=${ATTNGEN_CACHE_DIR:-/tmp/attngen-cache}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$out/env.txt"
status=0
ATTNGEN_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log" || status=1
python3 examples/quickstart.py 2>&1 | tee "$out/quickstart.log" || status=1
python3 benchmarks/bench_forward.py --out "$out" "$@" 2>&1 | tee "$out/bench.log" || status=1
exit $status
