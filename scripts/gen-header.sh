#!/usr/bin/env bash
# Regenerates include/smarttrim.h from src/ffi.rs with cbindgen (the library,
# a dev-dependency: nothing to install). tests/header.rs checks the committed
# header against a fresh generation in every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
SMARTTRIM_UPDATE_HEADER=1 cargo test --quiet --test header
echo "wrote include/smarttrim.h"
