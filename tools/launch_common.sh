# shellcheck shell=bash
# Shared by tools/dist_{train,test}.sh and tools/slurm_{train,test}.sh (sourced, not run).
#   run_torchrun NPROC SCRIPT ARGS...        torchrun on this node (GPUs, or CPU processes on gloo)
#   run_srun PARTITION JOB_NAME SCRIPT ARGS...   one Slurm task per GPU
# Environment: PYTHON (default: the repository's .venv/bin/python if present), NNODES (1),
# NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (a free port on one node, 29500 on several),
# GPUS (8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS.
TOOLS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(dirname "$TOOLS_DIR")
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT_DIR/.venv/bin/python" ]; then PYTHON="$ROOT_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi


run_torchrun() {
    local nproc=$1 script=$2
    shift 2
    local nnodes=${NNODES:-1} port=${PORT:-}
    if [ -z "$port" ]; then
        if [ "$nnodes" = 1 ]; then
            port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
        else
            port=29500
        fi
    fi
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec "$PYTHON" -m torch.distributed.run \
        --nnodes="$nnodes" --node_rank="${NODE_RANK:-0}" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="$port" \
        --nproc_per_node="$nproc" "$TOOLS_DIR/$script" "$@" --launcher pytorch
}

run_srun() {
    local partition=$1 job_name=$2 script=$3
    shift 3
    local gpus_per_node=${GPUS_PER_NODE:-8}
    local -a srun_extra=()
    read -r -a srun_extra <<< "${SRUN_ARGS:-}"
    exec srun -p "$partition" --job-name="$job_name" --gres=gpu:"$gpus_per_node" \
        --ntasks="${GPUS:-8}" --ntasks-per-node="$gpus_per_node" \
        --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 "${srun_extra[@]}" \
        "$PYTHON" -u "$TOOLS_DIR/$script" "$@" --launcher=slurm
}
