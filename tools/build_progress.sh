#!/usr/bin/env bash
# Run a long build with its full output in a log file, and show that it is alive: a line every
# INTERVAL seconds with the compile units done (of the total), the elapsed time, the expected
# duration and where the log is. tools/setup_env.sh builds mmcv and torch-scatter through it.
#
#   tools/build_progress.sh [--total N] [--expect TEXT] [--interval S] LABEL LOG -- CMD [ARGS...]
#
# Progress comes from the log: ninja's "[N/M]" lines (torch's BuildExtension compiles with
# ninja when it is installed), else the compiler invocations with -c. The exit status is the
# command's; on failure the last 30 lines of the log are printed.
# BUILD_PROGRESS_INTERVAL overrides the interval (default 30 s).
set -uo pipefail

total="" expect="" interval="${BUILD_PROGRESS_INTERVAL:-30}"
while [ $# -gt 0 ]; do
  case "$1" in
    --total) total="$2"; shift 2 ;;
    --expect) expect="$2"; shift 2 ;;
    --interval) interval="$2"; shift 2 ;;
    *) break ;;
  esac
done
if [ $# -lt 4 ] || [ "$3" != "--" ]; then
  echo "usage: $0 [--total N] [--expect TEXT] [--interval S] LABEL LOG -- CMD [ARGS...]" >&2
  exit 2
fi
label="$1" log="$2"
shift 3

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
fmt() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# "done/total" (or "done") compile units so far
units() {
  local n last m
  n=$(grep -cE '^\s*\[[0-9]+/[0-9]+\] ' "$log" 2>/dev/null || true)
  if [ "${n:-0}" -gt 0 ]; then
    last=$(grep -oE '^\s*\[[0-9]+/[0-9]+\]' "$log" | tail -n 1)
    m=${last#*/}; m=${m%]}
  else
    n=$(grep -cE '(^|[ /])(c\+\+|g\+\+|gcc|cc|nvcc) .* -c ' "$log" 2>/dev/null || true)
    m=""
  fi
  m=${total:-$m}
  if [ -n "$m" ]; then echo "${n:-0}/$m"; else echo "${n:-0}"; fi
}

mkdir -p "$(dirname "$log")"
: >"$log"
say "building $label${total:+ ($total compile units}${expect:+, usually $expect}${total:+)}; full log: $log"
start=$(date +%s)
"$@" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; exit 130' INT TERM

next=$((start + interval))
while kill -0 "$pid" 2>/dev/null; do
  sleep 1
  kill -0 "$pid" 2>/dev/null || break
  now=$(date +%s)
  if [ "$now" -ge "$next" ]; then
    say "  $label: $(units) compile units, $(fmt $((now - start))) elapsed${expect:+ (usually $expect)}; log: $log"
    next=$((now + interval))
  fi
done
wait "$pid"
rc=$?
elapsed=$(fmt $(($(date +%s) - start)))
if [ "$rc" -eq 0 ]; then
  say "  $label: built in $elapsed ($(units) compile units); log: $log"
else
  say "  $label: FAILED (exit $rc) after $elapsed; last lines of $log:"
  tail -n 30 "$log" >&2
fi
exit "$rc"
