#!/usr/bin/env bash
# Mutation check of the emulator (emu/README.md): a copy of
# kernels/attention.cu with one cp_async_wait, or one __syncthreads, removed
# is compiled into the emulator in place of the real kernel library, and the
# emulated attention tests (tests/gpu/attention.rs) must then fail. The
# unmutated copy, built the same way, must pass (the control).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
lib="$(emu/build.sh release | tail -n 1)"
include="$(dirname "$(scripts/setup-cuda.sh | tail -n 1)")/../include"
read -r -a all <<<"$(make --no-print-directory -s -C emu kernel-flags CUDA_INCLUDE="$include")"
flags=()
for f in "${all[@]}"; do [[ "$f" == -MMD || "$f" == -MP ]] || flags+=("$f"); done
work="$(mktemp -d)"
trap '[[ -n "${EMU_KEEP:-}" ]] || rm -rf "$work"' EXIT
tests=(attention::attention_self_d64 attention::attention_self_d32 attention::attention_cross_d64
       attention::attention_cross_d32)

# Builds kernels dir $1 from attention.cu mutated by the sed expression $2.
build() {
  local dir="$1" expr="$2"
  mkdir -p "$dir/src" "$dir/kernels"
  cp kernels/*.cuh "$dir/src/"
  sed "$expr" kernels/attention.cu >"$dir/src/attention.cu"
  python3 emu/gen_module.py "$dir/src/attention.cu" "$dir/attention.cpp"
  g++ "${flags[@]}" -shared -o "$dir/kernels/libemu_attention.so" "$dir/attention.cpp" \
    -L"$lib" -l:libcuda.so.1 -Wl,-rpath,"$lib"
  for k in "$lib"/kernels/libemu_*.so; do
    [[ "$(basename "$k")" == libemu_attention.so ]] || ln -s "$k" "$dir/kernels/"
  done
}

# Runs the attention tests on kernels dir $1; returns their status.
run() {
  SMARTTRIM_EMU_KERNELS="$1/kernels" SMARTTRIM_REQUIRE_GPU=1 \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$root/emu/run.sh" \
    cargo test --quiet --test gpu -- "${tests[@]}" >"$1/log" 2>&1
}

mutants=(
  "wait:the cp_async_wait before each tile's use:/^        cp_async_wait<1>();$/d"
  "barrier:the __syncthreads ending each tile's iteration:/every warp must be done./{n;/__syncthreads();/d}"
)
cargo test --quiet --test gpu --no-run >/dev/null 2>&1

build "$work/control" "s/^//"
if ! run "$work/control"; then
  echo "mutation check: the unmutated copy fails; the check proves nothing" >&2
  tail -n 30 "$work/control/log" >&2
  exit 1
fi
echo "control (attention.cu unchanged): the attention tests pass"
status=0
for m in "${mutants[@]}"; do
  name="${m%%:*}"
  rest="${m#*:}"
  what="${rest%%:*}"
  expr="${rest#*:}"
  build "$work/$name" "$expr"
  if cmp -s kernels/attention.cu "$work/$name/src/attention.cu"; then
    echo "mutation check: the '$name' mutation changed nothing (stale sed pattern)" >&2
    status=1
    continue
  fi
  if run "$work/$name"; then
    echo "FAIL: without $what the emulated attention tests still pass" >&2
    status=1
  else
    why="$(grep -m1 -E "device fault|panicked at|rel err|is NaN|unwritten" "$work/$name/log" || true)"
    echo "ok: without $what the attention tests fail: ${why:0:200}"
  fi
done
exit $status
