#!/usr/bin/env bash
# Builds the emulated cuBLASLt and cuBLAS (test equipment, emu/blas/README.md):
#   OUT/libcublasLt.so.13 (+ libcublasLt.so) and OUT/libcublas.so.13 (+ libcublas.so),
# linked against the libcuda.so.1 found in LIBCUDA_DIR (default OUT), with
# RUNPATH $ORIGIN.
#
# usage: emu/blas/build.sh OUT [LIBCUDA_DIR]
# env:   CXX (g++), CUDA_INCLUDE (folder with cuda.h), EMU_BLAS_CXXFLAGS (extra
#        flags, e.g. "-fsanitize=address,alignment -fno-omit-frame-pointer -g")
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
emu=$(cd "$here/.." && pwd)
out=${1:?usage: build.sh OUT [LIBCUDA_DIR]}
libcuda_dir=${2:-$out}
CXX=${CXX:-g++}
CUDA_INCLUDE=${CUDA_INCLUDE:-/root/.cache/smarttrim/cuda-13.0/nvidia/cu13/include}
[[ -f $CUDA_INCLUDE/cuda.h ]] || { echo "build.sh: no cuda.h in $CUDA_INCLUDE (run scripts/setup-cuda.sh or set CUDA_INCLUDE)" >&2; exit 1; }
[[ -f $libcuda_dir/libcuda.so.1 ]] || { echo "build.sh: no libcuda.so.1 in $libcuda_dir" >&2; exit 1; }
mkdir -p "$out"
read -r -a extra <<< "${EMU_BLAS_CXXFLAGS:-}"
flags=(-std=c++20 -O2 -ffp-contract=off -fPIC -shared -fvisibility=hidden -fvisibility-inlines-hidden -Wall -Wextra
       -I"$emu/include" -I"$CUDA_INCLUDE" "${extra[@]}")
link=(-L"$libcuda_dir" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN' -pthread -Wl,-z,defs
      -Wl,--version-script="$here/exports.map")
common=("$here/gemm_core.cpp" "$here/blas_common.cpp")
"$CXX" "${flags[@]}" -Wl,-soname,libcublasLt.so.13 -o "$out/libcublasLt.so.13" \
    "$here/cublaslt.cpp" "${common[@]}" "${link[@]}"
"$CXX" "${flags[@]}" -Wl,-soname,libcublas.so.13 -o "$out/libcublas.so.13" \
    "$here/cublas.cpp" "${common[@]}" "${link[@]}"
ln -sf libcublasLt.so.13 "$out/libcublasLt.so"
ln -sf libcublas.so.13 "$out/libcublas.so"
