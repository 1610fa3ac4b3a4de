#!/usr/bin/env bash
# One-shot, idempotent set-up of the EnFormer environment on a fresh machine.
#
#   bash tools/setup_env.sh            # what `make demo` / `make test` call
#
# What it does (each step is skipped when already done):
#   1. creates the virtual environment $VENV (default: .venv in the repo);
#   2. installs torch + torchvision and the pure-Python OpenMMLab stack (requirements.txt);
#   3. builds mmcv 2.1.0 (with compiled ops) and torch-scatter 2.1.2 against that torch,
#      *once per machine*: the wheels are kept in $ENFORMER_CACHE/wheels/<key>, where the
#      key names the package versions, the torch version, the Python ABI and CPU/CUDA, so
#      a second set-up installs them in seconds and a different torch never reuses them;
#   4. installs openmim without its stale pins, and enformer_core in editable mode;
#   5. installs the Fashion-MNIST Debian package used by `make demo` (root only).
#
# Environment knobs: VENV, ENFORMER_CACHE, PYTHON, MAX_JOBS, ENFORMER_SKIP_APT=1,
# ENFORMER_CUDA=1 (build the mmcv CUDA ops; needs nvcc and a GPU torch).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
CACHE="${ENFORMER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/enformer}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
STAMP="$VENV/.enformer-installed"
REQ_HASH="$(cat requirements.txt requirements/compiled.txt tools/setup_env.sh pyproject.toml | sha256sum | cut -c1-16)"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$REQ_HASH" ]; then
  log "environment $VENV is up to date (requirements hash $REQ_HASH)"
  exit 0
fi

# --- 1. virtual environment -------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# --- 2. torch + pure-Python stack ------------------------------------------------------
log "installing torch, torchvision and the OpenMMLab Python packages"
"${PIP[@]}" install -q "setuptools<81" wheel ninja
"${PIP[@]}" install -q -r requirements.txt

TORCH_VER="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
ABI="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
ARCH="$(uname -m)"
if [ "${ENFORMER_CUDA:-0}" = "1" ]; then FLAVOUR=cuda; else FLAVOUR=cpu; fi
KEY="torch${TORCH_VER}-${ABI}-${ARCH}-${FLAVOUR}"
WHEELS="$CACHE/wheels/$KEY"
mkdir -p "$WHEELS"

# --- 3. compiled packages, built once per (versions, torch, ABI, flavour) --------------
# mmcv 2.1.0's setup.py forces -std=c++17 but torch >= 2.13 headers need C++20: a thin
# compiler wrapper appends -std=c++20 last (GCC honours the last -std). -g0 makes the
# 77-unit build ~2.4x cheaper; CFLAGS replaces Python's flags, so both are complete.
build_wheel() {  # $1 = pip requirement, $2 = glob of the wheel file, $3 = compile units, $4 = usual time
  local req="$1" pattern="$2" units="${3:-}" expect="${4:-}"
  if compgen -G "$WHEELS/$pattern" >/dev/null; then
    log "cached wheel for $req in $WHEELS"
    return
  fi
  log "building $req against torch $TORCH_VER (once per machine; this takes a while)"
  local wrap; wrap="$(mktemp -d)"
  for cc in gcc g++ cc c++; do
    real="$(command -v "$cc")"
    cat >"$wrap/$cc" <<EOF
#!/usr/bin/env bash
for a in "\$@"; do case "\$a" in *.cpp|*.cc|*.cxx|*.cu) exec "$real" "\$@" -std=c++20;; esac; done
exec "$real" "\$@"
EOF
    chmod +x "$wrap/$cc"
  done
  local build; build="$(mktemp -d)"
  (
    export PATH="$wrap:$VENV/bin:$PATH" CC="$wrap/gcc" CXX="$wrap/g++"
    export CFLAGS="-DNDEBUG -O2 -g0 -fwrapv" CXXFLAGS="-DNDEBUG -O2 -g0 -fwrapv"
    export MMCV_WITH_OPS=1
    if [ "$FLAVOUR" = cpu ]; then export FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=""; else export FORCE_CUDA=1; fi
    # --no-cache-dir: pip's own wheel cache is keyed by the sdist, not by torch, and would
    # silently hand back a wheel compiled for another torch.
    # verbose output into $CACHE/logs/, and a progress line every 30 s (compile units done,
    # elapsed and usual time, log path) from tools/build_progress.sh
    bash "$ROOT/tools/build_progress.sh" --total "$units" --expect "$expect" "$req" \
      "$CACHE/logs/${req//[=<>]/-}.log" -- \
      "${PIP[@]}" wheel -v --no-build-isolation --no-deps --no-cache-dir -w "$build" "$req"
  )
  mv "$build"/*.whl "$WHEELS/"
  rm -rf "$wrap" "$build"
}
build_wheel "mmcv==2.1.0" "mmcv-2.1.0-*.whl" 77 "15-30 min on 2 cores"
build_wheel "torch-scatter==2.1.2" "torch_scatter-2.1.2-*.whl" "" "3-6 min on 2 cores"
"${PIP[@]}" install -q --no-index --no-deps --find-links "$WHEELS" mmcv==2.1.0 torch-scatter==2.1.2

# --- 4. openmim without its stale pins, and our package ---------------------------------
"${PIP[@]}" install -q --no-deps openmim==0.3.9
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .

# --- 5. the demo dataset (a Debian package: real Fashion-MNIST, MIT) --------------------
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ "${ENFORMER_SKIP_APT:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing the dataset-fashion-mnist Debian package"
    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    log "WARNING: not root; install Fashion-MNIST with 'apt-get install dataset-fashion-mnist' for make demo"
  fi
fi

"$PY" tools/check_env.py --brief
echo "$REQ_HASH" >"$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
