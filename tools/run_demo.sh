#!/usr/bin/env bash
# The embedded default demo (`make demo`): train the full EnFormer-S from scratch on
# Fashion-MNIST (64x64, CPU), evaluate it on the 10 000 test images, save the checkpoint and
# draw the cluster assignments of a few test images.
#   tools/run_demo.sh [WORK_DIR] [extra tools/train.py options, e.g. --cfg-options ...]
# Environment: PYTHON (default: the repository's .venv/bin/python), OMP_NUM_THREADS (training, per
# process; default 1), DEMO_EVAL_THREADS (evaluation and picture; default: the cores, at most 8).
set -euo pipefail

TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(dirname "$TOOLS_DIR")
cd "$ROOT_DIR"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT_DIR/.venv/bin/python" ]; then PYTHON="$ROOT_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
# One torch thread: on the 2-core VM this was measured at 37 img/s for training with 1 thread
# and 17 img/s with 2 (EnFormer-S at 64 px runs many small ops that do not parallelise).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CONFIG=classification/configs/demo/enformer-s_fashion-mnist-64px.py
WORK_DIR=${1:-work_dirs/demo_fashion_mnist}
if [ "$#" -gt 0 ]; then shift; fi
DATA=/usr/share/datasets/fashion-mnist
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ ! -f "$DATA/$f.gz" ] && [ ! -f "$DATA/$f" ]; then
        echo "ERROR: Fashion-MNIST is missing ($DATA/$f.gz). Install it with" >&2
        echo "    sudo apt-get install dataset-fashion-mnist" >&2
        echo "(see docs/demo.md)." >&2
        exit 2
    fi
done
mkdir -p "$WORK_DIR"

# run "$@" and append "<name> <wall s> <peak RSS MiB> <CPU s>" to $WORK_DIR/demo_stats.txt
measure() {
    local name=$1
    shift
    "$PYTHON" - "$WORK_DIR/demo_stats.txt" "$name" "$@" <<'PY'
import resource, subprocess, sys, time
stats, name, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.time()
rc = subprocess.call(cmd)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(stats, 'a') as f:  # wall seconds, peak RSS (MiB), CPU seconds
    f.write(f'{name} {time.time() - t:.1f} {ru.ru_maxrss / 1024:.0f} '
            f'{ru.ru_utime + ru.ru_stime:.1f}\n')
sys.exit(rc)
PY
}

: > "$WORK_DIR/demo_stats.txt"
echo "== [1/3] training EnFormer-S on Fashion-MNIST (64x64, 2 CPU processes, torch threads each: $OMP_NUM_THREADS)"
PYTHON="$PYTHON" measure train bash tools/dist_train.sh "$CONFIG" 2 --work-dir "$WORK_DIR" "$@"
CKPT=$(cat "$WORK_DIR/last_checkpoint")

echo "== [2/3] evaluating $CKPT on the 10 000 test images"
# evaluation and the picture run one process: let it use the cores (433 vs 248 img/s on 2)
EVAL_THREADS=${DEMO_EVAL_THREADS:-$(nproc 2>/dev/null || echo 1)}
if [ "$EVAL_THREADS" -gt 8 ]; then EVAL_THREADS=8; fi
OMP_NUM_THREADS=$EVAL_THREADS measure test "$PYTHON" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR" | tee "$WORK_DIR/test_output.txt"
METRICS=$(grep '^metrics: ' "$WORK_DIR/test_output.txt" | tail -n 1)

PICTURE=""
if [ -f tools/visualization/vis_clusters.py ]; then
    echo "== [3/3] drawing the cluster assignments of 4 test images"
    PICTURE="$WORK_DIR/clusters.png"
    OMP_NUM_THREADS=$EVAL_THREADS measure vis "$PYTHON" tools/visualization/vis_clusters.py "$CONFIG" "$CKPT" \
        fashion-mnist:0 fashion-mnist:1 fashion-mnist:2 fashion-mnist:3 --out "$PICTURE" \
        || { echo "(cluster picture failed; the demo result above stands)"; PICTURE=""; }
else
    echo "== [3/3] skipped: tools/visualization/vis_clusters.py is not there"
fi

"$PYTHON" - "$WORK_DIR/demo_stats.txt" "$METRICS" "$CKPT" "$PICTURE" <<'PY'
import json, sys
stats, metrics, ckpt, picture = sys.argv[1:5]
rows = [line.split() for line in open(stats) if line.strip()]
total = sum(float(r[1]) for r in rows)
peak = max(float(r[2]) for r in rows)
m = json.loads(metrics[len('metrics: '):]) if metrics else {}
print('\n================ EnFormer-S / Fashion-MNIST demo ================')
print(f"top-1 on the 10 000 test images: {m.get('accuracy/top1', float('nan')):.2f} %"
      f"   (top-5 {m.get('accuracy/top5', float('nan')):.2f} %)")
print('time: ' + ', '.join(f'{r[0]} {float(r[1]) / 60:.1f} min' for r in rows)
      + f'  -> total {total / 60:.1f} min')
cpu = sum(float(r[3]) for r in rows)
print(f'CPU time: {cpu / 60:.1f} min (all threads; on a busy machine wall time exceeds it)')
print(f'peak memory (RSS): {peak:.0f} MiB')
print(f'checkpoint: {ckpt}')
if picture:
    print(f'cluster picture: {picture}')
PY
