#!/usr/bin/env bash
# Benchmark autopipeline against diffusers/PyTorch on the SD 1.5 architecture (CPU, float32), each in
# its own process, and print the comparison. See bench/README.md.
#
#   bench/run.sh [--threads N] [--quick]
#
# Environment:
#   AP_BENCH_CACHE   where the random-weight SD 1.5 checkpoint is written (default bench/.cache; ~4.3 GB)
#   AP_BENCH_VENV    Python venv with torch + diffusers; created (and filled by pip) if missing
#                    (default bench/.cache/venv)
#   AP_BENCH_OUT     where the JSON results go (default bench/out)
set -euo pipefail

cd "$(dirname "$0")/.."
threads=$(nproc)
quick=()
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads="$2"; shift 2 ;;
        --quick) quick=(--quick); shift ;;
        *) echo "usage: bench/run.sh [--threads N] [--quick]" >&2; exit 2 ;;
    esac
done

cache=${AP_BENCH_CACHE:-bench/.cache}
venv=${AP_BENCH_VENV:-$cache/venv}
out=${AP_BENCH_OUT:-bench/out}
model=$cache/sd15-arch
mkdir -p "$cache" "$out"

# 1. Python: torch (CPU wheels are enough) and the diffusers version the parity data comes from.
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch diffusers==0.42.1 transformers accelerate safetensors numpy pillow
fi
py="$venv/bin/python"

# 2. The checkpoint: published SD 1.5 configs, random weights (fixed seed), safetensors.
"$py" bench/make_checkpoint.py "$model"

# 3. Our side, built in release.
cargo build --release --example bench
bin=target/release/examples/bench

# Both sides read the same files: warm the page cache so neither pays for the first read from disk.
cat "$model"/*/*.safetensors > /dev/null

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== autopipeline ($threads threads)"
"$bin" measure --model "$model" --threads "$threads" "${quick[@]}" --json "$out/ours.json" > /dev/null
echo "== diffusers ($threads threads)"
"$py" bench/bench_diffusers.py --model "$model" --threads "$threads" "${quick[@]}" --json "$out/diffusers.json" \
    > /dev/null 2> "$out/diffusers.log"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" report "$out/ours.json" "$out/diffusers.json"
