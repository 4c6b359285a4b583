// torch.randn on a torch.Generator("cuda"), as one kernel: the launch geometry, counters and float
// operations of torch's `distribution_nullary_kernel` with cuRAND's Philox4x32-10 `curand_normal4`
// (see philox.rs for the sources). Built to PTX by build.rs with nvcc's default flags, which is how
// torch's kernels are built: `a * b + c` contracted to FMA, IEEE sqrtf, and the `__logf` /
// `__sincosf` intrinsics cuRAND uses, so the values match torch bit for bit.

#define AP_M0 0xD2511F53u
#define AP_M1 0xCD9E8D57u
#define AP_W0 0x9E3779B9u
#define AP_W1 0xBB67AE85u
#define AP_POW32_INV 2.3283064e-10f
#define AP_POW32_INV_2PI (2.3283064e-10f * 6.2831855f)

__device__ __forceinline__ uint4 ap_philox(uint4 c, uint2 k) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k.x += AP_W0;
            k.y += AP_W1;
        }
        unsigned int hi0 = __umulhi(AP_M0, c.x);
        unsigned int hi1 = __umulhi(AP_M1, c.z);
        unsigned int lo0 = AP_M0 * c.x;
        unsigned int lo1 = AP_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

__device__ __forceinline__ float2 ap_box_muller(unsigned int x, unsigned int y) {
    float u = x * AP_POW32_INV + (AP_POW32_INV / 2.0f);
    float v = y * AP_POW32_INV_2PI + (AP_POW32_INV_2PI / 2.0f);
    float s = sqrtf(-2.0f * __logf(u));
    float2 r;
    __sincosf(v, &r.x, &r.y);
    r.x *= s;
    r.y *= s;
    return r;
}

// `out[n]` from seed `seed` starting at Philox offset `offset` (a multiple of 4), launched with
// torch's grid: blocks of 256, min(ceil(n / 256), max_blocks) of them.
extern "C" __global__ void ap_torch_cuda_randn(float *out, unsigned long long n, unsigned long long seed,
                                               unsigned long long offset) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    unsigned long long ctr = offset / 4;
    uint2 key = make_uint2((unsigned int)seed, (unsigned int)(seed >> 32));
    for (unsigned long long base = idx; base < n; base += 4 * stride, ++ctr) {
        uint4 w = ap_philox(make_uint4((unsigned int)ctr, (unsigned int)(ctr >> 32), (unsigned int)idx,
                                       (unsigned int)(idx >> 32)),
                            key);
        float2 a = ap_box_muller(w.x, w.y);
        float2 b = ap_box_muller(w.z, w.w);
        float v[4] = {a.x, a.y, b.x, b.y};
        for (int i = 0; i < 4; ++i) {
            unsigned long long at = base + stride * i;
            // torch's `normal` transform, `v * std + mean` with std 1 and mean 0.
            if (at < n) out[at] = v[i] * 1.0f + 0.0f;
        }
    }
}
