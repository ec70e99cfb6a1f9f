#!/usr/bin/env bash
# The main job: installs the pinned CUDA compiler (once, cached outside the
# repo), builds the release binary, and runs `smarttrim demo` with any extra
# arguments given (e.g. `scripts/demo.sh --json`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${SMARTTRIM_SKIP_CUDA_SETUP:-0}" != "1" ]]; then
  nvcc="$(scripts/setup-cuda.sh | tail -n 1)"
  export NVCC="${NVCC:-$nvcc}"
fi
exec cargo run --release --quiet -- demo "$@"
