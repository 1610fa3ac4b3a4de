#!/usr/bin/env bash
# Train with torchrun on GPUS processes of this node:
#   tools/dist_train.sh CONFIG GPUS [tools/train.py options...]
# Without CUDA the processes run on the CPU with the gloo backend (e.g. GPUS=2 in CI).
# Environment: see tools/launch_common.sh (NNODES, NODE_RANK, MASTER_ADDR, PORT, PYTHON).
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [train.py options...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
# shellcheck source=tools/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
run_torchrun "$GPUS" train.py "$CONFIG" "$@"
