#!/usr/bin/env bash
# The real-GPU measurement (docs/performance.md, "Measuring on a real GPU"), made to fit one device call
# (at most 600 s): steps in order, each under its own cap and under what is left of the whole budget, so a
# slow step cannot starve the ones after it of all their time and the call still returns before its limit.
#
# Usage: .ci/gpu_measure.sh [OUT_DIR (default ./gpu_out)] [SUITE…]
#   no SUITE   the session plan, most needed first: decode at 125m and 1b, serve at 125m, `run --profile` of
#              configs/real/dsmoe-125m.yaml in f32 and in f16, matmul with 4096³, the f16 kernel tests, the
#              train suite, decode at tiny and d512
#   SUITE…     decode at GPU_MEASURE_DECODE sizes, then `deno task bench --suite SUITE` for each one named
# Every step's output goes to OUT_DIR/steps/NAME.log; a bench step's --json lines are also appended to
# bench.jsonl and its text table (core/bench/json_table.ts) to tables.txt. summary.txt has the date, commit,
# deno, nvidia-smi -L, and each step's exit code and seconds. A step that fails or runs out of time is recorded
# and the next one still runs; a step with under 20 s of the budget left is skipped and recorded as such.
# Exit 0 when every step passed, 1 otherwise, 2 when Deno or the repository is missing.
#
# Environment:
#   DENO                 a deno binary to use (default: deno on PATH, else .gpu/deno or .gpu/deno.xz as
#                        .ci/gpu_pack.sh leaves them, else `npm install -g deno@2.9.6`)
#   GPU_MEASURE_BUDGET   seconds for all steps together (default 540: a device call's 600 s less setup)
#   GPU_MEASURE_TIMEOUT  seconds per named suite (default 420; the plan's steps have their own caps)
#   GPU_MEASURE_DECODE   decode sizes with named suites (default tiny,d512,125m,1b)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${1:-./gpu_out}
[ $# -gt 0 ] && shift
extra_suites=("$@")
budget=${GPU_MEASURE_BUDGET:-540}
limit=${GPU_MEASURE_TIMEOUT:-420}
sizes=${GPU_MEASURE_DECODE:-tiny,d512,125m,1b}
mkdir -p "$out/steps" || exit 2
: >"$out/bench.jsonl"
: >"$out/tables.txt"
: >"$out/summary.txt"
say() { echo "gpu_measure: $*" | tee -a "$out/summary.txt"; }

# Deno, and what .ci/gpu_pack.sh carried for a machine that reaches no package registry.
if [ -z "${DENO:-}" ]; then
  if command -v deno >/dev/null 2>&1; then
    DENO=$(command -v deno)
  elif [ -x .gpu/deno ]; then
    DENO=$PWD/.gpu/deno
  elif [ -f .gpu/deno.xz ]; then
    # Named deno, in a folder of its own: `deno task` runs the tasks' `deno` from PATH.
    mkdir -p /tmp/gpu_measure && xz -dc .gpu/deno.xz >/tmp/gpu_measure/deno && chmod +x /tmp/gpu_measure/deno &&
      DENO=/tmp/gpu_measure/deno
  else
    say "no deno: installing deno@2.9.6 from npm"
    npm install -g deno@2.9.6 >>"$out/summary.txt" 2>&1 && DENO=$(command -v deno)
  fi
fi
if [ -z "${DENO:-}" ] || ! "$DENO" --version >/dev/null 2>&1; then
  say "no usable deno (set DENO, put .gpu/deno.xz here with .ci/gpu_pack.sh, or install deno@2.9.6)"
  exit 2
fi
export PATH="$(dirname "$DENO"):$PATH" DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
if [ ! -d node_modules ] && [ -f .gpu/node_modules.tar.xz ]; then
  say "unpacking .gpu/node_modules.tar.xz"
  tar -xJf .gpu/node_modules.tar.xz || say "could not unpack node_modules"
fi
# WebGPU through Vulkan needs the Vulkan loader; .ci/gpu_pack.sh can carry it as Debian packages in .gl/,
# unpacked into / only on an NVIDIA machine (nvidia-smi present) that has no loader.
if command -v nvidia-smi >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libvulkan &&
  compgen -G ".gl/*.deb" >/dev/null; then
  say "installing the Vulkan loader from .gl/"
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ] && export VK_DRIVER_FILES=$icd

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "deno: $("$DENO" --version | head -1)"
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
  echo "budget: ${budget} s"
} | tee -a "$out/summary.txt"

failed=0
runs_dir=$(mktemp -d)
# The last line of a step's log that names an error or failure, else its last line.
_reason() { { grep -iE 'error|failed|refused' "$1" || tail -1 "$1"; } | tail -1; }
# step NAME CAP CMD…: CMD under min(CAP, budget left), its stdout and stderr in steps/NAME.log.
step() {
  local name=$1 cap=$2 start=$SECONDS rc log=$out/steps/$1.log left
  shift 2
  left=$((budget - SECONDS))
  if [ "$left" -lt 20 ]; then
    say "$name: SKIPPED: ${left} s of the ${budget} s budget left"
    failed=1
    return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  say "$name: $* (limit ${cap} s)"
  timeout -k 10 "$cap" "$@" >"$log" 2>&1
  rc=$?
  case $rc in
    0) say "$name: ok in $((SECONDS - start)) s" ;;
    124 | 137) say "$name: FAILED: ran past ${cap} s (what it printed is in steps/$name.log)"; failed=1 ;;
    *) say "$name: FAILED: exit $rc after $((SECONDS - start)) s: $(_reason "$log")"; failed=1 ;;
  esac
}
# bench NAME CAP ARGS…: a bench step; its --json lines and their table join bench.jsonl and tables.txt.
bench() {
  local name=$1 cap=$2 json=$out/steps/$1.jsonl
  shift 2
  step "$name" "$cap" bash -c '"$0" task bench "$@" --json >"'"$json"'"' "$DENO" "$@"
  [ -s "$json" ] || return 0
  cat "$json" >>"$out/bench.jsonl"
  { echo "== $name"; "$DENO" run -A core/bench/json_table.ts "$json" 2>&1; echo; } | tee -a "$out/tables.txt"
}
# train NAME CAP ARGS…: a short profiled run of the 125M DS-MoE (a throwaway runs directory).
train() {
  local name=$1 cap=$2
  shift 2
  step "$name" "$cap" "$DENO" task run configs/real/dsmoe-125m.yaml --profile --no-dashboard \
    --runs-dir "$runs_dir" "$@"
  grep -E '^(device|GPU time|Model FLOPs|MFU)' "$out/steps/$name.log" | sed "s/^/  /" | tee -a "$out/summary.txt"
}

if [ ${#extra_suites[@]} -eq 0 ]; then
  bench decode-large 150 --suite decode --decode-sizes 125m,1b
  bench serve-125m 100 --suite serve --decode-sizes 125m
  train train-f32 120 --stop-after 20
  train train-f16 100 --stop-after 20 --set hardware.precision=f16
  bench matmul 60 --suite matmul --large
  step f16-tests 60 "$DENO" test -A gpu/kernels/f16_test.ts
  bench train-block 60 --suite train
  bench decode-small 60 --suite decode --decode-sizes tiny,d512
else
  bench decode "$limit" --suite decode --decode-sizes "$sizes"
  for s in "${extra_suites[@]}"; do bench "$s" "$limit" --suite "$s"; done
fi
rm -rf "$runs_dir"
say "done in ${SECONDS} s: $([ $failed -eq 0 ] && echo 'every step passed' || echo 'some steps failed, see above and steps/')"
exit $failed
