#!/usr/bin/env bash
# Builds the emulated CUDA device (emu/README.md) into target/emu/<variant>/
# and prints its library folder as the last line of standard output (put it
# on LD_LIBRARY_PATH, or use emu/run.sh). Incremental: a second run with
# nothing changed takes a second.
#
#   emu/build.sh [release|asan]     (default release; asan = AddressSanitizer +
#                                    UBSan alignment checks, for emu/run.sh --asan)
#
# Needs g++ 12 or later, python3, make, and the pinned CUDA toolkit's
# headers (cuda.h), which scripts/setup-cuda.sh installs (run here unless
# SMARTTRIM_SKIP_CUDA_SETUP=1, then taken from $NVCC / $CUDA_HOME).
set -euo pipefail
cd "$(dirname "$0")/.."
variant="${1:-release}"
case "$variant" in
  release | asan) ;;
  *) echo "emu/build.sh: unknown variant '$variant' (release or asan)" >&2; exit 2 ;;
esac

if [[ "${SMARTTRIM_SKIP_CUDA_SETUP:-0}" != "1" ]]; then
  nvcc="$(scripts/setup-cuda.sh | tail -n 1)"
else
  nvcc="${NVCC:-${CUDA_HOME:+$CUDA_HOME/bin/nvcc}}"
fi
include="$(cd "$(dirname "${nvcc:?no nvcc: run scripts/setup-cuda.sh}")/../include" && pwd)"
if [[ ! -f "$include/cuda.h" ]]; then
  echo "emu/build.sh: no cuda.h next to $nvcc (looked in $include)" >&2
  exit 1
fi
gxx_major="$(g++ -dumpversion | cut -d. -f1)"
if (( gxx_major < 12 )); then
  echo "emu/build.sh: g++ $gxx_major is too old (12 or later has _Float16 on x86-64)" >&2
  exit 1
fi
jobs="$(nproc 2>/dev/null || echo 2)"
make --no-print-directory -s -C emu -j"$jobs" VARIANT="$variant" CUDA_INCLUDE="$include" >&2
echo "$PWD/target/emu/$variant/lib"
