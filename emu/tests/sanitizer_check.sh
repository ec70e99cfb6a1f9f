#!/usr/bin/env bash
# Checks that the emulator's sanitizers really stop a faulting kernel and
# name its source line: an out-of-bounds read (AddressSanitizer build) and a
# misaligned 16-byte vector load (UBSan's alignment check, both builds).
# Runs emu_selftest's deliberate-fault modes and reads what they print.
set -uo pipefail
cd "$(dirname "$0")/../.."
fail=0
expect() {  # expect VARIANT MODE WHAT NEEDLE
  local bin="target/emu/$1/bin/emu_selftest" out
  out="$(ASAN_OPTIONS=detect_leaks=0 "$bin" "$2" 2>&1)"
  local rc=$?
  if [[ $rc -ne 0 ]] && grep -q "$4" <<<"$out" && grep -q "selftest.cpp" <<<"$out"; then
    echo "ok   $1 $2: $3 reported at $(grep -o 'selftest.cpp:[0-9]*' <<<"$out" | head -n 1)"
  else
    echo "FAIL $1 $2: expected $3 (\"$4\") naming selftest.cpp, got exit $rc:" >&2
    printf '%s\n' "$out" | tail -n 20 >&2
    fail=1
  fi
}
emu/build.sh asan >/dev/null
emu/build.sh release >/dev/null
expect asan oob "an out-of-bounds read" "heap-buffer-overflow"
expect asan misaligned "a misaligned vector load" "misaligned address"
expect release misaligned "a misaligned vector load" "misaligned address"
exit $fail
