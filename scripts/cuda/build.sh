#!/usr/bin/env bash
# Builds the CUDA variant of the library (`--features cuda`) on a machine without a GPU, into
# target-cuda/release. Needs network access to PyPI for the CUDA 13 toolchain wheels.
# Measured on the 2-core dev machine: ~25 minutes; the .so (~55 MB, sm_90) loads libcuda.so.1,
# libcudart.so.13, libcublas.so.13 and libcurand.so.10 at run time.
#
#   scripts/cuda/build.sh [COMPUTE_CAP [CARGO_ARGS...]]   # default 90 (H100/H200)
#   scripts/cuda/build.sh 90 --features cudnn             # + cuDNN convolutions (needs libcudnn.so.9
#                                                         #   at run time; PyTorch's wheels have it)
set -euo pipefail
cd "$(dirname "$0")/../.."
cap=${1:-90}
venv=${CUDA_VENV:-$PWD/target-cuda/venv}

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  # The toolchain is CUDA 13.0, the oldest 13.x: the kernels are shipped as PTX, which a driver only
  # JIT-compiles when its CUDA version is at least the compiler's (the lent GPUs run driver 580 = CUDA
  # 13.0, which rejects PTX from nvcc 13.4 as an unsupported PTX version). cudarc also picks its API
  # bindings from this nvcc's version.
  "$venv/bin/pip" install -q 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' \
    'nvidia-cuda-crt==13.0.*' 'nvidia-nvvm==13.0.*' 'nvidia-cuda-cccl==13.0.*' nvidia-cublas nvidia-curand
fi
cu=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
[ -x "$cu/bin/nvcc" ] || { echo "no nvcc under $cu" >&2; exit 1; }

# Unversioned names for the linker.
for lib in cudart cublas cublasLt nvrtc curand; do
  real=$(ls "$cu"/lib/lib$lib.so.* 2>/dev/null | head -n1)
  [ -n "$real" ] && ln -sf "$(basename "$real")" "$cu/lib/lib$lib.so"
done

# No package ships the driver library: link against a stub with every cu* symbol cudarc names. The
# real libcuda.so.1 of the GPU machine's driver is loaded at run time.
mkdir -p "$cu/lib/stubs"
if [ ! -f "$cu/lib/stubs/libcuda.so" ]; then
  src=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys | head -n1)
  grep -ohE 'pub (unsafe )?fn cu[A-Za-z0-9_]+' "$src"/*.rs | awk '{print $NF}' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$cu/lib/stubs/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" "$cu/lib/stubs/cuda_stub.c"
  ln -sf libcuda.so "$cu/lib/stubs/libcuda.so.1"
fi
# The same for cuDNN (`--features cudnn`): no cuDNN package is needed here; the GPU machine's
# libcudnn.so.9 (PyTorch's nvidia-cudnn wheel) is loaded at run time.
if [ ! -f "$cu/lib/stubs/libcudnn.so" ]; then
  src=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/cudnn/sys | head -n1)
  grep -ohE 'pub (unsafe )?fn cudnn[A-Za-z0-9_]+' "$src"/*.rs | awk '{print $NF}' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$cu/lib/stubs/cudnn_stub.c"
  cc -shared -fPIC -Wl,-soname,libcudnn.so.9 -o "$cu/lib/stubs/libcudnn.so" "$cu/lib/stubs/cudnn_stub.c"
fi

export PATH="$cu/bin:$PATH" CUDA_ROOT="$cu" CUDA_PATH="$cu" CUDA_HOME="$cu" CUDA_COMPUTE_CAP="$cap"
export LIBRARY_PATH="$cu/lib:$cu/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR="$PWD/target-cuda"
# cudarc (API version) and candle-kernels (PTX) read nvcc in build scripts that cargo does not rerun when
# the toolchain changes: rebuild them whenever it differs from the last build's.
stamp="$CARGO_TARGET_DIR/.nvcc-version"
now=$(nvcc --version | tail -n1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$now" ] || [ ! -f "$stamp" ] && [ -d "$CARGO_TARGET_DIR/release" ]; then
  cargo clean --release -p cudarc -p candle-kernels -p candle-core -p candle-nn -p autopipeline
fi
mkdir -p "$CARGO_TARGET_DIR" && echo "$now" > "$stamp"
cargo build --release --features cuda "${@:2}" --lib
echo "built $CARGO_TARGET_DIR/release/libautopipeline.so"
# AP_CUDA_TESTS=1: also the GPU kernel tests (tests/cuda_kernels.rs) as one binary to carry to a GPU
# machine, copied to target-cuda/release/cuda_kernels.
if [ -n "${AP_CUDA_TESTS:-}" ]; then
  exe=$(cargo test --release --features cuda "${@:2}" --test cuda_kernels --no-run --message-format=json \
    | python3 -c 'import json,sys;print([m["executable"] for m in map(json.loads,sys.stdin) if m.get("executable")][-1])')
  cp "$exe" "$CARGO_TARGET_DIR/release/cuda_kernels"
  echo "built $CARGO_TARGET_DIR/release/cuda_kernels"
fi
