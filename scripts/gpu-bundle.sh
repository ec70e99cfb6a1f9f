#!/usr/bin/env bash
# Builds, on this machine (no GPU needed), everything a GPU machine without a
# Rust toolchain needs to check and measure smarttrim: the release GPU test
# executable, the always-run test executables, the kernel bench executable and
# the CLI, stripped, with the PTX embedded, plus run.sh and torch_baseline.py.
# Output: bundle/ (git-ignored; pass it to the device tool as `carry`).
#
#   scripts/gpu-bundle.sh [OUT_DIR]      default OUT_DIR: bundle
#
# On the GPU machine:  bundle/run.sh REPORT_DIR   (see bundle/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bundle}"
nvcc="$(scripts/setup-cuda.sh | tail -n 1)"
export NVCC="${NVCC:-$nvcc}"
export SMARTTRIM_REQUIRE_CUDA=1

GPU_TESTS="gpu runtime ops_validation model_validation ffi"
rm -rf "$out"
mkdir -p "$out/bin"

collect() {
  # Reads cargo's JSON messages; prints "target_name<TAB>executable" per artifact.
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind = m["target"]["kind"][0]
    if m["profile"]["test"] and kind in ("lib", "bin"):
        kind = "unit-" + kind  # unit tests of the library or binary
    print(m["target"]["name"] + "\t" + kind + "\t" + m["executable"])
'
}

{
  # shellcheck disable=SC2046
  cargo test --release --no-run --lib $(printf -- '--test %s ' $GPU_TESTS) \
    --message-format=json-render-diagnostics
  cargo bench --no-run --message-format=json-render-diagnostics
  cargo build --release --bins --message-format=json-render-diagnostics
} | collect | sort -u | while IFS=$'\t' read -r name kind exe; do
  case "$kind" in
    # Only the test targets that touch the GPU or the embedded kernels travel;
    # the CPU-only ones (reference, CLI, embed, report) run in CI and would
    # look for files at this machine's paths.
    test)
      case " $GPU_TESTS " in *" $name "*) ;; *) continue ;; esac
      dest="$out/bin/test-$name"
      ;;
    bench) dest="$out/bin/bench-$name" ;;
    bin) dest="$out/bin/$name" ;;
    unit-lib) dest="$out/bin/test-unit-lib" ;;
    unit-bin) continue ;; # the CLI has no unit tests of its own
    *) continue ;;
  esac
  cp "$exe" "$dest"
  strip "$dest" 2>/dev/null || true
done

# The C example, linked against the release static library (PTX embedded),
# with its model config: run.sh runs a real pass through the C API with it.
cargo build --release --lib --quiet
"${CC:-gcc}" -std=c11 -Wall -Wextra -Werror -O2 -Iinclude examples/c/main.c \
  target/release/libsmarttrim.a -ldl -lgcc_s -lutil -lrt -lpthread -lm -lc \
  -o "$out/bin/c-example"
strip "$out/bin/c-example" 2>/dev/null || true
cp examples/c/tiny-meter-gpu.json "$out/"
# The HuggingFace fixtures (small) for forward_hf_fixtures_match_reference.
mkdir -p "$out/fixtures"
cp -r tests/fixtures/hf "$out/fixtures/"

cp scripts/gpu-run.sh "$out/run.sh"
cp scripts/torch_baseline.py "$out/"  # the PyTorch baseline run.sh runs when torch is there
git rev-parse HEAD >"$out/COMMIT" 2>/dev/null || echo unknown >"$out/COMMIT"
git status --porcelain | grep -q . && echo "dirty" >>"$out/COMMIT" || true
chmod +x "$out/run.sh"
size_kib="$(du -sk "$out" | cut -f1)"
echo "bundle: $out, ${size_kib} KiB"
if (( size_kib > 60 * 1024 )); then
  echo "warning: the bundle is over 60 MiB; the device tool carries at most 64 MiB with the tree" >&2
fi
ls -la "$out/bin"
