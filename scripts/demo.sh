#!/usr/bin/env bash
# Generates one image through the C API: builds the library and the example CLI, then runs
# Stable Diffusion 1.5 (from the local HF cache, or downloaded). Without network or cache it falls back
# to the tiny random-weight checkpoint shipped in tests/data (its image is noise-like, but real).
#
#   scripts/demo.sh [MODEL] [PROMPT] [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-runwayml/stable-diffusion-v1-5}
prompt=${2:-"a watercolor painting of a lighthouse at dawn"}
out=${3:-out.png}
fallback=tests/data/checkpoints/sd15-tiny

cargo build --release --quiet
make -s -C examples/c

if examples/c/generate --model "$model" --prompt "$prompt" --steps 20 --seed 42 --out "$out"; then
  exit 0
fi
echo "demo: could not use $model (offline, or not in the HF cache); using the tiny checkpoint $fallback" >&2
exec examples/c/generate --model "$fallback" --prompt "$prompt" --steps 20 --seed 42 --out "$out"
