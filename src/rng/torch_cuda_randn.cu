// torch.randn on a torch.Generator("cuda"), as one kernel: the launch geometry and counters of torch's
// `distribution_nullary_kernel` (aten/src/ATen/native/cuda/DistributionTemplates.h) around cuRAND's own
// `curand_init` / `curand_normal4` (Philox4x32-10; Box-Muller with logf and the __sincosf intrinsic,
// which no host code reproduces exactly). Built to PTX by build.rs with nvcc's default flags, as torch's
// kernels are, so the values match torch bit for bit.
#include <curand_kernel.h>

// `out[n]` from seed `seed` starting at Philox offset `offset` (a multiple of 4), launched with torch's
// grid: blocks of 256 threads, min(ceil(n / 256), max_blocks) of them.
extern "C" __global__ void ap_torch_cuda_randn(float *out, unsigned long long n, unsigned long long seed,
                                               unsigned long long offset) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    curandStatePhilox4_32_10_t state;
    curand_init(seed, idx, offset, &state);
    for (unsigned long long base = idx; base < n; base += 4 * stride) {
        float4 r = curand_normal4(&state);
        float v[4] = {r.x, r.y, r.z, r.w};
        for (int i = 0; i < 4; ++i) {
            unsigned long long at = base + stride * i;
            // torch's `normal` transform, `v * std + mean` with std 1 and mean 0.
            if (at < n) out[at] = v[i] * 1.0f + 0.0f;
        }
    }
}
