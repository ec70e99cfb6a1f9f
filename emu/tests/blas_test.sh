#!/usr/bin/env bash
# Builds and runs the emulated cuBLAS / cuBLASLt tests against the stub driver
# interface (emu/tests/blas_stub_api.cpp standing in for emu/driver/).
#
# usage: emu/tests/blas_test.sh [--asan] [--bench]
#   --asan   build everything with -fsanitize=address,alignment (+ UBSan's
#            alignment check fatal) and run the tests under it
#   --bench  run the GFLOP/s measurement instead of the tests
# env: OUT (build folder, default target/emu-blas-test[-asan] in the repo),
#      CXX, CUDA_INCLUDE (as emu/blas/build.sh)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
emu=$(cd "$here/.." && pwd)
root=$(cd "$emu/.." && pwd)
asan=0 bench=0
for a in "$@"; do
    case $a in
        --asan) asan=1 ;;
        --bench) bench=1 ;;
        *) echo "usage: $0 [--asan] [--bench]" >&2; exit 2 ;;
    esac
done
CXX=${CXX:-g++}
if [[ -z "${CUDA_INCLUDE:-}" ]]; then
    CUDA_INCLUDE="$(cd "$(dirname "$("$root/scripts/setup-cuda.sh" | tail -n 1)")/../include" && pwd)"
fi
export CUDA_INCLUDE
san=()
if [[ $asan == 1 ]]; then
    san=(-fsanitize=address,alignment -fno-sanitize-recover=alignment -fno-omit-frame-pointer -g)
    out=${OUT:-$root/target/emu-blas-test-asan}
else
    out=${OUT:-$root/target/emu-blas-test}
fi
mkdir -p "$out"
common=(-std=c++20 -O2 -ffp-contract=off -Wall -Wextra -I"$emu/include" -I"$CUDA_INCLUDE" "${san[@]}")
# The stub driver interface, as the libcuda.so.1 the libraries link against.
"$CXX" "${common[@]}" -fPIC -shared -fvisibility=hidden -Wl,-soname,libcuda.so.1 \
    -o "$out/libcuda.so.1" "$here/blas_stub_api.cpp" -pthread
EMU_BLAS_CXXFLAGS="${san[*]}" "$emu/blas/build.sh" "$out" "$out"
# The test links its own copy of the GEMM engine, baseline ISA only, to check
# the libraries' (dispatching) results bit for bit against it.
"$CXX" "${common[@]}" -DEMU_BLAS_NO_AVX2 -o "$out/blas_test" "$here/blas_test.cpp" "$emu/blas/gemm_core.cpp" \
    -L"$out" -l:libcuda.so.1 -Wl,-rpath,"$out" -pthread -ldl
args=()
[[ $bench == 1 ]] && args=(--bench)
# cudarc finds the libraries by name on the library path; so does the test.
LD_LIBRARY_PATH="$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
    "$out/blas_test" "${args[@]}"
