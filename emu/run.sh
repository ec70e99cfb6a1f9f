#!/usr/bin/env bash
# Runs a command on the emulated CUDA device: the emulator's libcuda,
# libcublasLt and libcublas come first on LD_LIBRARY_PATH, so cudarc (and
# the C example) load them by name instead of NVIDIA's. Builds the emulator
# first if needed (emu/build.sh).
#
#   emu/run.sh [--asan] COMMAND [ARGS...]
#
# --asan: the AddressSanitizer build, with libasan preloaded into the
# (uninstrumented) Rust or C program; out-of-bounds and use-after-free on
# device buffers abort with a report naming the kernel's source line.
# The emulator's own settings (SMARTTRIM_EMU_*) are listed in emu/README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
variant=release
if [[ "${1:-}" == "--asan" ]]; then
  variant=asan
  shift
fi
if [[ $# -eq 0 ]]; then
  echo "usage: emu/run.sh [--asan] COMMAND [ARGS...]" >&2
  exit 2
fi
lib="$("$here/build.sh" "$variant" | tail -n 1)"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ "$variant" == asan ]]; then
  asan="$(g++ -print-file-name=libasan.so)"
  export LD_PRELOAD="$asan${LD_PRELOAD:+:$LD_PRELOAD}"
  # Rust's test harness and std leak by design; the checks here are bounds
  # and lifetimes, not leaks.
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:verify_asan_link_order=0}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
fi
exec "$@"
