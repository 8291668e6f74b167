#!/usr/bin/env bash
# The real-GPU measurement (docs/performance.md, "Measuring on a real GPU"): `deno task bench --json` for the
# decode suite at every size (tiny, d512, 125m, 1b), then for each further suite named after the output
# directory (e.g. serve, matmul, train), each under its own time limit. A suite that fails, errors or runs out
# of time is recorded and the next one still runs. Four files in the output directory, whatever the suites:
#   bench.jsonl  every suite's --json lines (rows, then that suite's summary: adapter, CPU, threads)
#   tables.txt   every suite's text table, made from those lines (core/bench/json_table.ts)
#   bench.log    progress and errors (stderr), per suite
#   summary.txt  date, commit, deno, nvidia-smi -L, each suite's exit code and seconds, the failures
# Exit 0 when every suite passed, 1 otherwise, 2 when Deno or the repository is missing.
#
# Usage: .ci/gpu_measure.sh [OUT_DIR (default ./gpu_out)] [SUITE…]
# Environment:
#   DENO                 a deno binary to use (default: deno on PATH, else .gpu/deno or .gpu/deno.xz as
#                        .ci/gpu_pack.sh leaves them, else `npm install -g deno@2.9.6`)
#   GPU_MEASURE_TIMEOUT  seconds per suite (default 420)
#   GPU_MEASURE_DECODE   decode sizes (default tiny,d512,125m,1b)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${1:-./gpu_out}
[ $# -gt 0 ] && shift
extra_suites=("$@")
limit=${GPU_MEASURE_TIMEOUT:-420}
sizes=${GPU_MEASURE_DECODE:-tiny,d512,125m,1b}
mkdir -p "$out" || exit 2
: >"$out/bench.jsonl"
: >"$out/tables.txt"
: >"$out/bench.log"
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
    npm install -g deno@2.9.6 >>"$out/bench.log" 2>&1 && DENO=$(command -v deno)
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
} | tee -a "$out/summary.txt"

failed=0
# The last line of this suite's log that names an error or failure, else its last line.
_reason() {
  local log
  log=$(sed -n '/^== /h; /^== /!H; ${x;p}' "$out/bench.log" | tail -n +2)
  { grep -iE 'error|failed' <<<"$log" || echo "$log"; } | tail -1
}
# One suite: its JSON lines and table appended to the shared files; its failure recorded, not fatal.
run_suite() {
  local suite=$1 start=$SECONDS rc tmp
  shift
  tmp=$(mktemp)
  say "$suite: deno task bench --suite $suite${*:+ $*} --json (limit ${limit} s)"
  echo "== $suite" >>"$out/bench.log"
  timeout -k 10 "$limit" "$DENO" task bench --suite "$suite" "$@" --json >"$tmp" 2>>"$out/bench.log"
  rc=$?
  cat "$tmp" >>"$out/bench.jsonl"
  if [ -s "$tmp" ]; then
    { echo "== $suite"; "$DENO" run -A core/bench/json_table.ts "$tmp" 2>>"$out/bench.log"; echo; } | tee -a "$out/tables.txt"
  fi
  rm -f "$tmp"
  case $rc in
    0) say "$suite: ok in $((SECONDS - start)) s" ;;
    124 | 137) say "$suite: FAILED: ran past ${limit} s (the rows it timed are in bench.log)"; failed=1 ;;
    *) say "$suite: FAILED: exit $rc after $((SECONDS - start)) s: $(_reason)"; failed=1 ;;
  esac
}

run_suite decode --decode-sizes "$sizes"
for s in "${extra_suites[@]}"; do run_suite "$s"; done
say "done: $([ $failed -eq 0 ] && echo 'every suite passed' || echo 'some suites failed, see above and bench.log')"
exit $failed
