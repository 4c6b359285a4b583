#!/usr/bin/env bash
# GPU benchmark (see bench/gpu.py and bench/README.md): on an NVIDIA machine with PyTorch and diffusers but
# no Rust and no network, our CUDA build against diffusers, fp16, 20 steps, SD 1.5 architecture at 512²
# and SDXL base at 1024²: it/s, load time and peak VRAM. Writes OUT_DIR/gpu_bench.json.
#
#   bench/gpu.sh LIB.so OUT_DIR [sd15] [sdxl]
set -uo pipefail
cd "$(dirname "$0")/.."
lib=$(realpath "$1")
out=$2
shift 2
libs=$(python3 -c "import glob,os,site;print(':'.join(sorted({os.path.dirname(p) for sp in site.getsitepackages() for p in glob.glob(os.path.join(sp,'nvidia','**','lib*.so*'),recursive=True)})))")
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
AUTOPIPELINE_LIBRARY="$lib" PYTHONUNBUFFERED=1 python3 bench/gpu.py "$out" "${AP_BENCH_CKPT:-/tmp/ap-bench}" "$@"
