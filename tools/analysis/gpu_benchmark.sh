#!/usr/bin/env bash
# The GPU part of the benchmark (docs/benchmarks.md, "GPU"), in one run on a machine with one
# CUDA GPU:
#   1. the published method: eval, fp32, batch 256 at 224x224, 20 warm-up + 100 timed
#      iterations, img/s = batch / mean (train graph and deploy form);
#   2. AMP (fp16 autocast) + channels-last + torch.compile, deploy form, same method;
#   3. one AMP training step (forward + backward + AdamW) with its peak memory.
#
#   bash tools/analysis/gpu_benchmark.sh [OUT_DIR]         # default work_dirs/gpu_benchmark
#   MODELS=enformer_s bash tools/analysis/gpu_benchmark.sh  # fewer models (a short lease)
#   DEVICE=cpu EXTRA="--batch 2 --shape 64 --warmup 0 --iters 1" COMPILE= \
#       bash tools/analysis/gpu_benchmark.sh /tmp/dry       # a dry run of the script itself
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-work_dirs/gpu_benchmark}
MODELS=${MODELS:-enformer_s enformer_b enformer_l}
DEVICE=${DEVICE:-cuda}
COMPILE=${COMPILE---compile}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
# shellcheck disable=SC2086  # word splitting of MODELS / EXTRA is intended
bench() { "$PY" tools/analysis/benchmark.py $MODELS --device "$DEVICE" --no-progress "$@" $EXTRA; }
bench --forms train-graph deploy --json "$OUT/fp32.json" | tee "$OUT/fp32.txt"
bench --forms deploy --amp --channels-last $COMPILE --json "$OUT/amp_cl_compile.json" \
    | tee "$OUT/amp_cl_compile.txt"
bench --forms train-graph --amp --train --train-batch 64 --train-warmup 2 --train-iters 5 \
    --warmup 2 --iters 5 --json "$OUT/amp_train.json" | tee "$OUT/amp_train.txt"
echo "results in $OUT"
