#!/usr/bin/env bash
# Evaluate with torchrun on GPUS processes of this node:
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options...]
# Without CUDA the processes run on the CPU with the gloo backend.
# Environment: see tools/launch_common.sh.
set -euo pipefail
if [ "$#" -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py options...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
# shellcheck source=tools/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
run_torchrun "$GPUS" test.py "$CONFIG" "$CHECKPOINT" "$@"
