#!/usr/bin/env bash
# The CUDA path in one run (issue 16): correctness tests, a real bf16 pretraining run and ZeRO-2,
# throughput; JSON under $OUT, a short table last. See benchmarks/gpu_check.py.
#   bash benchmarks/gpu_check.sh                # on a GPU machine
#   bash benchmarks/gpu_check.sh --device cpu   # tiny sizes on the CPU (make test runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
