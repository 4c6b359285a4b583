#!/usr/bin/env bash
# The GPU check, run ON a GPU machine (NVIDIA driver + PyTorch with its nvidia-* wheels; no Rust, no
# network): every recorded parity case on `cuda` in f32, f16/bf16 against diffusers in half precision on
# the same GPU, torch.Generator("cuda") draws and pipelines, async jobs and cancel. See device_check.py.
#
#   scripts/cuda/device_check.sh LIB.so OUT_DIR [section ...]
#
# LIB.so is target-cuda/release/libautopipeline.so from scripts/cuda/build.sh. The f16 / bf16 / cudarng
# sections need diffusers importable (pure Python: carry its wheel, see scripts/cuda/lent_gpu.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
lib=$(realpath "$1")
out=${2:-${OUT:-/tmp}}
shift 2 || true
mkdir -p "$out"
# The CUDA 13 runtime libraries the library links (cudart, cublas, curand) from PyTorch's wheels.
libs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for so in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
ldd "$lib" | grep -E "cuda|cublas|curand|not found" | tee -a "$out/gpu.txt"
AUTOPIPELINE_LIBRARY="$lib" PYTHONUNBUFFERED=1 python3 scripts/cuda/device_check.py "$out" "$@"
