#!/usr/bin/env bash
# Installs NVIDIA's CUDA compiler from PyPI wheels, pinned to the release that
# matches the GPU driver (CUDA 13.0, driver 580; see DESIGN.md "Toolchain facts"),
# into a cache folder outside the repository so every clone and CI run reuses it.
#
#   SMARTTRIM_CUDA_PREFIX   install folder (default: ~/.cache/smarttrim/cuda-13.0)
#   PYTHON                  python interpreter with pip (default: python3)
#
# Idempotent: when the pinned set is already there it only prints the nvcc path.
# Prints the absolute nvcc path as its last line of standard output.
set -euo pipefail

PREFIX="${SMARTTRIM_CUDA_PREFIX:-$HOME/.cache/smarttrim/cuda-13.0}"
PYTHON="${PYTHON:-python3}"
# The whole set is pinned: an unpinned nvvm pulls a newer one whose PTX the
# 580 driver rejects.
PINS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
STAMP="$PREFIX/.smarttrim-pins"
NVCC="$PREFIX/nvidia/cu13/bin/nvcc"
want="$(printf '%s\n' "${PINS[@]}")"

if [[ -x "$NVCC" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "$NVCC"
  exit 0
fi

echo "smarttrim: installing the CUDA 13.0 compiler wheels into $PREFIX" >&2
mkdir -p "$PREFIX"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --upgrade --target "$PREFIX" "${PINS[@]}" >&2

if [[ ! -x "$NVCC" ]]; then
  echo "smarttrim: nvcc not found at $NVCC after installing the wheels" >&2
  exit 1
fi

# Check the compiler emits PTX ISA 9.0, which the 580 driver accepts.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf 'extern "C" __global__ void probe(float *x) { x[threadIdx.x] *= 2.0f; }\n' >"$tmp/probe.cu"
"$NVCC" --ptx -arch=compute_80 -o "$tmp/probe.ptx" "$tmp/probe.cu" >&2
if ! grep -q '^\.version 9\.0' "$tmp/probe.ptx"; then
  echo "smarttrim: nvcc emitted $(grep '^\.version' "$tmp/probe.ptx"), expected .version 9.0" >&2
  exit 1
fi
echo "$want" >"$STAMP"
echo "$NVCC"
