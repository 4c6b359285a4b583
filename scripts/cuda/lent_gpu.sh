#!/usr/bin/env bash
# Everything the lent GPU machine runs, in one call (device time is scarce): unpack the CUDA build and
# the diffusers wheel carried in .gpu/, then the device check and the GPU benchmark, each under its
# own time limit. Prepare .gpu/ here first:
#
#   scripts/cuda/build.sh                                    # target-cuda/release/libautopipeline.so
#   mkdir -p .gpu/whl && xz -T2 -c target-cuda/release/libautopipeline.so > .gpu/libautopipeline.so.xz
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .gpu/whl diffusers==0.42.1 importlib_metadata
#
# then run `scripts/cuda/lent_gpu.sh` there with `.gpu` carried; results land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/ap
xz -dc .gpu/libautopipeline.so.xz > /tmp/ap/libautopipeline.so
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ap/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/ap/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
timeout "${AP_CHECK_SECONDS:-240}" scripts/cuda/device_check.sh /tmp/ap/libautopipeline.so "$out" "$@" 2>&1 \
  | tee "$out/device_check.log"
if [ $# -eq 0 ] || [ -n "${AP_BENCH_ALSO:-}" ]; then
  timeout "${AP_BENCH_SECONDS:-270}" bench/gpu.sh /tmp/ap/libautopipeline.so "$out" 2>&1 | tee "$out/gpu_bench.txt"
fi
