#!/usr/bin/env bash
# Runs on a GPU machine with no Rust toolchain, from a bundle made by
# scripts/gpu-bundle.sh (this file is copied there as run.sh):
#
#   bundle/run.sh REPORT_DIR [--no-sanitizer] [--no-bench]
#
# Prints the device, runs the GPU tests with SMARTTRIM_REQUIRE_GPU=1, again
# under compute-sanitizer memcheck and racecheck, then the kernel benches in a
# short mode, the PyTorch dense baseline (torch_baseline.py, when python3 has
# torch with CUDA) and `smarttrim bench`. REPORT_DIR gets at most 8 files (the
# device tool brings back 8): summary.txt (one line per step), info.log,
# tests.log, sanitizer.log (memcheck and racecheck), bench.log (kernel benches
# and `smarttrim bench`), bench.json, torch.log, torch.json.
#
# Kept short so that the whole run stays within ~8 minutes on an H200; these
# variables change the bench steps' sizes:
#   SMARTTRIM_TORCH_WARMUP (3), SMARTTRIM_TORCH_ITERS (20)  torch_baseline.py
#   SMARTTRIM_TORCH_BUDGET (90 s; the step is killed 60 s past it)
#   SMARTTRIM_BENCH_WARMUP (3), SMARTTRIM_BENCH_ITERS (20)  exported for `smarttrim bench`
#   SMARTTRIM_BENCH_TIMEOUT (180 s)                          `smarttrim bench` is killed past it
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
report="${1:?usage: run.sh REPORT_DIR [--no-sanitizer] [--no-bench]}"
shift
sanitizer=1
bench=1
for a in "$@"; do
  case "$a" in
    --no-sanitizer) sanitizer=0 ;;
    --no-bench) bench=0 ;;
  esac
done
mkdir -p "$report"
summary="$report/summary.txt"
: >"$summary"

# cudarc opens libcublasLt by name: find it (toolkit lib64 or a Python
# environment's nvidia/*/lib) and put its folder on LD_LIBRARY_PATH.
libdirs=""
for f in $(ls /usr/local/cuda/lib64/libcublasLt.so* /usr/local/cuda*/targets/*/lib/libcublasLt.so* 2>/dev/null) \
  $(python3 - 2>/dev/null <<'PY'
import glob, os, site, sys
paths = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for p in paths:
    for f in glob.glob(os.path.join(p, "nvidia", "*", "lib", "libcublasLt.so*")):
        print(f)
PY
); do
  d="$(dirname "$f")"
  case ":$libdirs:" in *":$d:"*) ;; *) libdirs="$libdirs:$d" ;; esac
done
# PyTorch runs with the library path as it was: torch brings its own CUDA
# libraries, and a toolkit's older libcublasLt found first could break it.
orig_ld_library_path="${LD_LIBRARY_PATH-}"
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# step_into LOG NAME CMD...: runs CMD with its output appended to
# REPORT_DIR/LOG.log (emptied at its first use in this run; several steps may
# share one file) and adds one line to summary.txt. step NAME CMD...: LOG = NAME.
logs_seen=" "
step_into() {
  local log="$report/$1.log" name="$2"
  case "$logs_seen" in
    *" $1 "*) ;;
    *)
      : >"$log"
      logs_seen="$logs_seen$1 "
      ;;
  esac
  shift 2
  local t0=$SECONDS start
  start="$(stat -c %s "$log" 2>/dev/null || echo 0)"
  echo "### $name: $*" >>"$log"
  "$@" >>"$log" 2>&1
  local rc=$?
  local passed
  passed="$(tail -c +"$((start + 1))" "$log" | grep -E '^test result:' | awk '{p+=$4; f+=$6} END {if (NR) printf "%d passed, %d failed", p, f}')"
  printf '%-10s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$passed" | tee -a "$summary"
  return 0
}
step() { step_into "$1" "$@"; }

{
  echo "commit: $(cat "$here/COMMIT" 2>/dev/null)"
  echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  echo "libcublasLt dirs: ${libdirs#:}"
} | tee -a "$summary"

step info "$here/bin/smarttrim" info --kernels

export SMARTTRIM_REQUIRE_GPU=1
# The HuggingFace fixtures the GPU pass is checked on (tests/fixtures/hf).
export SMARTTRIM_HF_FIXTURES="$here/fixtures/hf"
# The repeated-forward test runs 1000 passes here, a few under the sanitizers.
repeats="${SMARTTRIM_FORWARD_REPEATS:-1000}"
tests() {
  local rc=0
  for t in "$here"/bin/test-*; do
    echo "### $t"
    SMARTTRIM_FORWARD_REPEATS="$repeats" "$t" --test-threads=1 || rc=1
  done
  return $rc
}
step tests tests

# The C example: a real pass through the C API on a stream of its own.
c_example() {
  local tmp rc
  tmp="$(mktemp -d)"
  "$here/bin/smarttrim" init-weights --config "$here/tiny-meter-gpu.json" --seed 1 \
    --out "$tmp/w.safetensors" &&
    "$here/bin/c-example" "$here/tiny-meter-gpu.json" "$tmp/w.safetensors"
  rc=$?
  rm -rf "$tmp"
  return $rc
}
if [[ -x "$here/bin/c-example" ]]; then
  step_into tests c-example c_example
fi

if [[ $sanitizer == 1 ]]; then
  if command -v compute-sanitizer >/dev/null; then
    cs=compute-sanitizer
  else
    cs="$(ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
  fi
  if [[ -n "$cs" ]]; then
    export SMARTTRIM_FORWARD_REPEATS=3
    step_into sanitizer memcheck "$cs" --tool memcheck --leak-check full --error-exitcode 3 "$here/bin/test-gpu" --test-threads=1
    step_into sanitizer racecheck "$cs" --tool racecheck --racecheck-report all --error-exitcode 3 "$here/bin/test-gpu" --test-threads=1
  else
    echo "compute-sanitizer: not found" | tee -a "$summary"
  fi
fi

if [[ $bench == 1 ]]; then
  rm -f "$report/torch.json" "$report/bench.json"
  for b in "$here"/bin/bench-*; do
    step_into bench "$(basename "$b")" "$b" --bench --warm-up-time 0.3 --measurement-time 1 --noplot
  done

  # The dense passes in PyTorch (eager and torch.compile), for `smarttrim bench --torch`.
  torch_json=""
  if [[ ! -f "$here/torch_baseline.py" ]]; then
    echo "torch      not run: torch_baseline.py is not in the bundle" | tee -a "$summary"
  elif LD_LIBRARY_PATH="$orig_ld_library_path" python3 -c \
    'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    torch_budget="${SMARTTRIM_TORCH_BUDGET:-90}"
    step torch env LD_LIBRARY_PATH="$orig_ld_library_path" \
      timeout -k 10 "$((${torch_budget%.*} + 60))" python3 "$here/torch_baseline.py" \
      --json "$report/torch.json" --budget-seconds "$torch_budget" \
      --warmup "${SMARTTRIM_TORCH_WARMUP:-3}" --iters "${SMARTTRIM_TORCH_ITERS:-20}"
    [[ -s "$report/torch.json" ]] && torch_json=1
  else
    echo "torch      not run: python3 has no torch with CUDA here" | tee -a "$summary"
  fi

  # The end-to-end bench: pruned and dense GPU passes, next to the baseline.
  export SMARTTRIM_BENCH_WARMUP="${SMARTTRIM_BENCH_WARMUP:-3}"
  export SMARTTRIM_BENCH_ITERS="${SMARTTRIM_BENCH_ITERS:-20}"
  if "$here/bin/smarttrim" bench --help >/dev/null 2>&1; then
    step_into bench bench timeout -k 10 "${SMARTTRIM_BENCH_TIMEOUT:-180}" \
      "$here/bin/smarttrim" bench --graph both \
      --warmup "$SMARTTRIM_BENCH_WARMUP" --iters "$SMARTTRIM_BENCH_ITERS" \
      --json "$report/bench.json" ${torch_json:+--torch "$report/torch.json"}
  else
    echo "bench      not run: this smarttrim has no \`bench\` subcommand" | tee -a "$summary"
  fi
fi
echo "reports in $report" | tee -a "$summary"
