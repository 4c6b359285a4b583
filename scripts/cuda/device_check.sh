#!/usr/bin/env bash
# The GPU check, run ON the GPU machine (driver + PyTorch's nvidia-* wheels present, no Rust): runs the
# parity test binaries built by scripts/cuda/build.sh with every pipeline on `cuda`, plus a small
# f16 run. Carry target-cuda/release/deps/{parity_sd,parity_sdxl,dtype}-* and tests/data.
#
#   scripts/cuda/device_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-/tmp}}
# CUDA 13 libraries from PyTorch's wheels.
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
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
status=0
for t in parity_sd parity_sdxl dtype; do
  bin=$(ls -t target-cuda/release/deps/$t-* 2>/dev/null | grep -v '\.d$' | head -n1)
  [ -n "$bin" ] || { echo "missing test binary $t" | tee -a "$out/check.log"; status=1; continue; }
  AP_TEST_DEVICE=cuda "$bin" --test-threads 1 2>&1 | tee -a "$out/check.log" || status=1
done
exit $status
