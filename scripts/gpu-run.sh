#!/usr/bin/env bash
# Runs on a GPU machine with no Rust toolchain, from a bundle made by
# scripts/gpu-bundle.sh (this file is copied there as run.sh):
#
#   bundle/run.sh REPORT_DIR [--no-sanitizer] [--no-bench]
#
# Prints the device, runs the GPU tests with SMARTTRIM_REQUIRE_GPU=1, again
# under compute-sanitizer memcheck and racecheck, then the kernel benches in a
# short mode (and the PyTorch baseline when present), and writes summary.txt
# plus one log per step (at most 8 files) into REPORT_DIR.
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
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

step() {
  local name="$1"
  shift
  local t0=$SECONDS
  "$@" >"$report/$name.log" 2>&1
  local rc=$?
  local passed
  passed="$(grep -E '^test result:' "$report/$name.log" | awk '{p+=$4; f+=$6} END {if (NR) printf "%d passed, %d failed", p, f}')"
  printf '%-10s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$passed" | tee -a "$summary"
  return 0
}

{
  echo "commit: $(cat "$here/COMMIT" 2>/dev/null)"
  echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  echo "libcublasLt dirs: ${libdirs#:}"
} | tee -a "$summary"

step info "$here/bin/smarttrim" info --kernels

export SMARTTRIM_REQUIRE_GPU=1
tests() {
  local rc=0
  for t in "$here"/bin/test-*; do
    echo "### $t"
    "$t" --test-threads=1 || rc=1
  done
  return $rc
}
step tests tests

if [[ $sanitizer == 1 ]]; then
  if command -v compute-sanitizer >/dev/null; then
    cs=compute-sanitizer
  else
    cs="$(ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
  fi
  if [[ -n "$cs" ]]; then
    step memcheck "$cs" --tool memcheck --leak-check full --error-exitcode 3 "$here/bin/test-gpu" --test-threads=1
    step racecheck "$cs" --tool racecheck --racecheck-report all --error-exitcode 3 "$here/bin/test-gpu" --test-threads=1
  else
    echo "compute-sanitizer: not found" | tee -a "$summary"
  fi
fi

if [[ $bench == 1 ]]; then
  for b in "$here"/bin/bench-*; do
    step "$(basename "$b")" "$b" --bench --warm-up-time 0.3 --measurement-time 1 --noplot
  done
  if [[ -f "$here/torch_baseline.py" ]]; then
    step torch python3 "$here/torch_baseline.py"
  fi
fi
echo "reports in $report" | tee -a "$summary"
