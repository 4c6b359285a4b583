// Our CUDA kernels for the UNet and VAE hot paths, where candle 0.11's generic kernels cost the most
// (measured on an H100, bench/README.md): convolution columns laid out for an NCHW result (candle's
// im2col uses 64-bit index arithmetic per element and its result needs a transpose), bias / residual
// adds, GEGLU, group norm (+ SiLU) and attention without a materialised score matrix.
//
// Every kernel computes in f32 and rounds its output once. Names end in the element type (_f16, _bf16,
// _f32); src/kernels/cuda/*.rs launch them. Index arithmetic is 32-bit where the Rust side has checked
// that the sizes fit.

#ifdef AP_HOST_EMULATION
// Compiled for the CPU by tests/kernel_emulation.rs: that header emulates the few CUDA features used
// here (threads, barriers, warp shuffles, the mma and cp.async instructions below) on host threads.
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
// A kernel's dynamic shared memory (its size set at launch).
#define AP_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
// Checked under emulation only: a shared-memory access of `bytes` at `p` is aligned and in bounds.
#define AP_CHECK_SHARED(p, bytes)
// Checked under emulation only: `p` is aligned to `bytes`.
#define AP_CHECK_ALIGNED(p, bytes)
#endif

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// ---------------------------------------------------------------------------------------------------
// Convolution columns, transposed: col[b][ci·k·k + ky·k + kx][p] for output pixels p of rows
// [row0, row0 + rows), from x (B, C, H, W) upsampled ×up (nearest) and zero-padded by pad. The matmul
// weight (c_out, C·k·k) × col[b] is then the NCHW output itself. Grid: (pixel blocks, C·k·k, B).
// KC / UPC: the kernel size and upsampling as compile-time constants (3×3 and 1×1, ×1 and ×2: every
// convolution of the models), which turns their divisions into multiplies and shifts; 0 = from the
// arguments. The kernel is bound by its integer arithmetic, not by memory.
template <typename T, uint32_t KC, uint32_t UPC>
__device__ void im2col_t(const T *x, T *col, uint32_t c, uint32_t h, uint32_t w, uint32_t up_arg, uint32_t k_arg,
                         uint32_t stride, uint32_t pad, uint32_t w_out, uint32_t row0, uint32_t rows) {
  const uint32_t k = KC ? KC : k_arg, up = UPC ? UPC : up_arg;
  const uint32_t n_pix = rows * w_out;
  const uint32_t p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= n_pix) return;
  const uint32_t r = blockIdx.y, b = blockIdx.z, ckk = gridDim.y;
  const uint32_t kx = r % k, ky = (r / k) % k, ci = r / (k * k);
  const uint32_t oy = row0 + p / w_out, ox = p - (p / w_out) * w_out;
  const int iy = (int)(oy * stride + ky) - (int)pad, ix = (int)(ox * stride + kx) - (int)pad;
  T v = from_f<T>(0.f);
  if (iy >= 0 && ix >= 0 && iy < (int)(h * up) && ix < (int)(w * up)) {
    v = x[((size_t)(b * c + ci) * h + (uint32_t)iy / up) * w + (uint32_t)ix / up];
  }
  col[((size_t)b * ckk + r) * n_pix + p] = v;
}

// ---------------------------------------------------------------------------------------------------
// out = y + vec[...] (+ res): vec indexed by the last dimension (n_vec values; a linear layer's bias).
template <typename T>
__device__ void add_last(const T *y, const T *vec, const T *res, T *out, uint32_t n, uint32_t n_vec,
                         uint32_t has_res) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float v = to_f(y[i]) + to_f(vec[i % n_vec]);
    if (has_res) v += to_f(res[i]);
    out[i] = from_f<T>(v);
  }
}

// out = y + vec[...] (+ res) over (B, C, inner): vec[c] (per_image == 0, a bias) or vec[b·C + c].
// Grid: (inner blocks, B·C).
template <typename T>
__device__ void add_channel(const T *y, const T *vec, const T *res, T *out, uint32_t inner, uint32_t c,
                            uint32_t per_image, uint32_t has_res) {
  const uint32_t plane = blockIdx.y;
  const float a = to_f(vec[per_image ? plane : plane % c]);
  const size_t base = (size_t)plane * inner;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < inner; i += gridDim.x * blockDim.x) {
    float v = to_f(y[base + i]) + a;
    if (has_res) v += to_f(res[base + i]);
    out[base + i] = from_f<T>(v);
  }
}

// GEGLU with the projection's bias: h (M, 2F) → (h[:, :F] + b[:F]) · gelu_erf(h[:, F:] + b[F:]).
template <typename T>
__device__ void geglu(const T *h, const T *bias, T *out, uint32_t n, uint32_t f, uint32_t has_bias) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const uint32_t m = i / f, j = i % f;
    const size_t row = (size_t)m * 2 * f;
    float a = to_f(h[row + j]), g = to_f(h[row + f + j]);
    if (has_bias) {
      a += to_f(bias[j]);
      g += to_f(bias[f + j]);
    }
    out[i] = from_f<T>(a * 0.5f * g * (1.f + erff(g * 0.70710678118654752f)));
  }
}

// ---------------------------------------------------------------------------------------------------
// Group norm, pass 1: per row (image, group) of n contiguous values and per chunk of GN_CHUNK of them,
// sums of (x − x[row start]) and of its square (shifted by the row's first value so a large common
// offset does not cancel). partial: (rows, chunks, 2) f32. Grid: (chunks, rows); 256 threads.
#define GN_CHUNK 4096
template <typename T>
__device__ void gn_partial(const T *x, float *partial, uint32_t n) {
  __shared__ float red[2][8];
  const uint32_t row = blockIdx.y, chunk = blockIdx.x;
  const T *xr = x + (size_t)row * n;
  const float shift = to_f(xr[0]);
  const uint32_t lo = chunk * GN_CHUNK, hi = min(n, lo + GN_CHUNK);
  float s1 = 0.f, s2 = 0.f;
  for (uint32_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float d = to_f(xr[i]) - shift;
    s1 += d;
    s2 += d * d;
  }
  for (int o = 16; o > 0; o >>= 1) {
    s1 += __shfl_xor_sync(0xffffffffu, s1, o);
    s2 += __shfl_xor_sync(0xffffffffu, s2, o);
  }
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    red[0][warp] = s1;
    red[1][warp] = s2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float a = 0.f, q = 0.f;
    for (uint32_t j = 0; j < blockDim.x / 32; ++j) {
      a += red[0][j];
      q += red[1][j];
    }
    float *dst = partial + ((size_t)row * gridDim.x + chunk) * 2;
    dst[0] = a;
    dst[1] = q;
  }
}

// Pass 2, one warp per row: the row's mean and 1/sqrt(var + eps) from its partial sums (combined in
// f64), into stats (rows, 2).
template <typename T>
__device__ void gn_finalize(const T *x, const float *partial, float *stats, uint32_t n, uint32_t chunks, float eps) {
  const uint32_t row = blockIdx.x;
  double s1 = 0.0, s2 = 0.0;
  for (uint32_t j = threadIdx.x; j < chunks; j += 32) {
    s1 += partial[((size_t)row * chunks + j) * 2];
    s2 += partial[((size_t)row * chunks + j) * 2 + 1];
  }
  for (int o = 16; o > 0; o >>= 1) {
    s1 += __shfl_xor_sync(0xffffffffu, s1, o);
    s2 += __shfl_xor_sync(0xffffffffu, s2, o);
  }
  if (threadIdx.x == 0) {
    const double md = s1 / n;
    double var = s2 / n - md * md;
    if (var < 0.0) var = 0.0;
    stats[2 * row] = to_f(x[(size_t)row * n]) + (float)md;
    stats[2 * row + 1] = rsqrtf((float)var + eps);
  }
}

// Pass 3: y = x·scale + shift per channel (scale = weight·rstd, shift = bias − mean·scale, in f32, as
// PyTorch applies it), SiLU optional, rounded once. x (B, C, inner) with C = groups·cpg.
// Grid: (inner blocks, B·C).
template <typename T>
__device__ void gn_apply(const T *x, const float *stats, const T *weight, const T *bias, T *out, uint32_t inner,
                         uint32_t c, uint32_t cpg, uint32_t silu) {
  const uint32_t plane = blockIdx.y, ch = plane % c, img = plane / c;
  const uint32_t row = img * (c / cpg) + ch / cpg;
  const float scale = to_f(weight[ch]) * stats[2 * row + 1];
  const float sh = to_f(bias[ch]) - stats[2 * row] * scale;
  const size_t base = (size_t)plane * inner;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < inner; i += gridDim.x * blockDim.x) {
    float v = to_f(x[base + i]) * scale + sh;
    if (silu) v = v / (1.f + expf(-v));
    out[base + i] = from_f<T>(v);
  }
}

// ---------------------------------------------------------------------------------------------------
// Attention softmax(q·kᵀ·scale)·v, single pass with an online softmax (the flash-attention scheme), for
// one (image, head) per grid row and 64 query rows per block: 4 warps of 16 rows, keys in tiles of 64.
// q, k, v, out are (B, L, H·D) rows (row strides given), head h at column h·D, D a multiple of 8 and
// ≤ 16·NF (zero-padded to 16·NF in shared memory), so no transposes are needed around it. Key and value
// tiles are double buffered through cp.async, so their loads overlap the previous tile's products.
//
// Tensor cores through `mma.sync.m16n8k16` with f32 accumulators, whose register layouts the PTX ISA
// documents (“Matrix Fragments for mma.m16n8k16”): lane = 4·g + t holds rows g and g + 8 and columns
// 2t, 2t + 1 of each 16×8 accumulator tile, and the same rows / columns (+8) of a 16×16 A operand.
// That lets the scores stay in registers: row maxima and sums reduce over the 4 lanes of a row, the
// output accumulators are rescaled in place when a row's maximum grows, and the probabilities (rounded
// to the input type, ≤ 1) are repacked directly as the A operand of the probabilities × values product.
#define ATT_BR 64
#define ATT_BC 64

__device__ __forceinline__ uint32_t pack2(__half lo, __half hi) {
  return (uint32_t)__half_as_ushort(lo) | ((uint32_t)__half_as_ushort(hi) << 16);
}
__device__ __forceinline__ uint32_t pack2(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}

// c += a·b for one warp: a 16×16 A, a 16×8 B and a 16×8 f32 accumulator in the documented fragments.
template <typename T> __device__ __forceinline__ void mma16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1);
#ifdef AP_HOST_EMULATION
template <> inline void mma16816<__half>(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
  ap_emu::mma16816(c, a, b0, b1, ap_emu::half_bits_to_float);
}
template <> inline void mma16816<__nv_bfloat16>(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
  ap_emu::mma16816(c, a, b0, b1, ap_emu::bf16_bits_to_float);
}
#else
template <>
__device__ __forceinline__ void mma16816<__half>(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// 16 bytes from global to shared memory without going through registers (cp.async, sm_80+), or 16
// zeros (a zero source size reads nothing); lands by the matching cp_async_wait.
__device__ __forceinline__ void cp_async_16(void *shared_dst, const void *global_src, bool copy) {
#ifdef AP_HOST_EMULATION
  ap_emu::cp_async_16(shared_dst, global_src, copy);
#else
  const uint32_t to = (uint32_t)__cvta_generic_to_shared(shared_dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(global_src), "r"(copy ? 16u : 0u));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef AP_HOST_EMULATION
  ap_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N of this thread's most recent copy groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef AP_HOST_EMULATION
  ap_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Rows [row0, row0 + rows) of one head into shared memory (row stride ld) by asynchronous 16-byte copies
// (cp.async, sm_80+), zeros past the sequence and past D (D a multiple of 8, so each 8-value chunk is
// wholly inside or outside; a zero source size fills the chunk with zeros and reads nothing).
template <typename T>
__device__ __forceinline__ void load_tile_async(T *dst, const T *src, uint32_t row0, uint32_t len, uint32_t stride,
                                                uint32_t d, uint32_t dp, uint32_t ld, uint32_t rows) {
  const uint32_t chunks = dp / 8;
  for (uint32_t idx = threadIdx.x; idx < rows * chunks; idx += blockDim.x) {
    const uint32_t r = idx / chunks, col = 8 * (idx % chunks);
    const bool inside = row0 + r < len && col < d;
    cp_async_16(dst + r * ld + col, inside ? src + (size_t)(row0 + r) * stride + col : src, inside);
  }
}

template <typename T> __device__ __forceinline__ uint32_t lds2(const T *p) {
  AP_CHECK_SHARED(p, 4);
  return *reinterpret_cast<const uint32_t *>(p);
}

template <typename T, int NF>
__device__ void attention(const T *q, const T *k, const T *v, T *o, uint32_t heads, uint32_t lq, uint32_t lk,
                          uint32_t d, uint32_t q_stride, uint32_t kv_stride, uint32_t o_stride, float scale) {
  constexpr int DP = NF * 16, LD = DP + 8, NT = DP / 8;
  // Shared memory: the query tile, then two key tiles and two value tiles (double buffered: the copy of
  // tile t + 1 runs while tile t is computed).
  AP_DYNAMIC_SHARED(smem);
  T *qs = reinterpret_cast<T *>(smem);
  T *ks_base = qs + ATT_BR * LD;
  T *vs_base = ks_base + 2 * ATT_BC * LD;

  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const uint32_t bh = blockIdx.y, b = bh / heads, h = bh % heads;
  const uint32_t q0 = blockIdx.x * ATT_BR;
  const T *qb = q + (size_t)b * lq * q_stride + h * d;
  const T *kb = k + (size_t)b * lk * kv_stride + h * d;
  const T *vb = v + (size_t)b * lk * kv_stride + h * d;
  const uint32_t tiles = (lk + ATT_BC - 1) / ATT_BC;

  load_tile_async(qs, qb, q0, lq, q_stride, d, DP, LD, ATT_BR);
  cp_async_commit();
  load_tile_async(ks_base, kb, 0, lk, kv_stride, d, DP, LD, ATT_BC);
  load_tile_async(vs_base, vb, 0, lk, kv_stride, d, DP, LD, ATT_BC);
  cp_async_commit();
  cp_async_wait<1>();  // the query tile (the first key / value tile may still be in flight)
  __syncthreads();
  // This warp's 16 query rows as A operands, one per 16 values of the head.
  uint32_t qa[NF][4];
  const T *qw = qs + warp * 16 * LD;
#pragma unroll
  for (int kk = 0; kk < NF; ++kk) {
    qa[kk][0] = lds2(qw + g * LD + kk * 16 + 2 * t);
    qa[kk][1] = lds2(qw + (g + 8) * LD + kk * 16 + 2 * t);
    qa[kk][2] = lds2(qw + g * LD + kk * 16 + 8 + 2 * t);
    qa[kk][3] = lds2(qw + (g + 8) * LD + kk * 16 + 8 + 2 * t);
  }

  // Scores in base 2: x·scale·log2(e), so that exp2 gives the softmax's exp.
  const float sl2 = scale * 1.4426950408889634f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  for (uint32_t tile = 0; tile < tiles; ++tile) {
    const uint32_t k0 = tile * ATT_BC, buf = tile & 1;
    if (tile + 1 < tiles) {
      // The buffer tile + 1 goes to was last read in iteration tile − 1, which ended with a barrier.
      load_tile_async(ks_base + (buf ^ 1) * ATT_BC * LD, kb, k0 + ATT_BC, lk, kv_stride, d, DP, LD, ATT_BC);
      load_tile_async(vs_base + (buf ^ 1) * ATT_BC * LD, vb, k0 + ATT_BC, lk, kv_stride, d, DP, LD, ATT_BC);
      cp_async_commit();
      cp_async_wait<1>();  // this tile's copies done, the next one's may be in flight
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // every thread's copies of this tile visible to all
    const T *ks = ks_base + buf * ATT_BC * LD;
    const T *vs = vs_base + buf * ATT_BC * LD;

    // s[j]: keys 8j .. 8j + 7 of the tile; [0], [1] row g, [2], [3] row g + 8; columns 2t, 2t + 1.
    float s[ATT_BC / 8][4];
#pragma unroll
    for (int j = 0; j < ATT_BC / 8; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
      const T *kr = ks + (8 * j + g) * LD + 2 * t;
#pragma unroll
      for (int kk = 0; kk < NF; ++kk) mma16816<T>(s[j], qa[kk], lds2(kr + kk * 16), lds2(kr + kk * 16 + 8));
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < ATT_BC / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool valid = k0 + 8 * j + 2 * t + (e & 1) < lk;
        s[j][e] = valid ? s[j][e] * sl2 : -INFINITY;
        mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
      }
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m[r], mx[r]);  // finite: the tile has at least one key
      alpha[r] = exp2f(m[r] - m_new);
      m[r] = m_new;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      acc[n][0] *= alpha[0];
      acc[n][1] *= alpha[0];
      acc[n][2] *= alpha[1];
      acc[n][3] *= alpha[1];
    }
    // Probabilities × values, 16 keys (two score tiles) per step.
#pragma unroll
    for (int c = 0; c < ATT_BC / 16; ++c) {
      T p[8];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p0 = exp2f(s[2 * c][e] - m[e >> 1]), p1 = exp2f(s[2 * c + 1][e] - m[e >> 1]);
        p[e] = from_f<T>(p0);
        p[4 + e] = from_f<T>(p1);
        // The sum takes the rounded probabilities, the ones the product uses.
        l[e >> 1] += to_f(p[e]) + to_f(p[4 + e]);
      }
      const uint32_t a[4] = {pack2(p[0], p[1]), pack2(p[2], p[3]), pack2(p[4], p[5]), pack2(p[6], p[7])};
      const T *v0 = vs + (16 * c + 2 * t) * LD + g;
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const T *vn = v0 + 8 * n;
        const uint32_t b0 = pack2(vn[0], vn[LD]), b1 = pack2(vn[8 * LD], vn[9 * LD]);
        mma16816<T>(acc[n], a, b0, b1);
      }
    }
    __syncthreads();  // all warps are done with this buffer before it is refilled
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    l[r] = 1.f / l[r];
  }
  T *ob = o + (size_t)b * lq * o_stride + h * d;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const uint32_t row = q0 + warp * 16 + g + 8 * r;
    if (row >= lq) continue;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const uint32_t col = 8 * n + 2 * t;
      if (col < d) {
        AP_CHECK_ALIGNED(ob + (size_t)row * o_stride + col, 4);
        *reinterpret_cast<uint32_t *>(ob + (size_t)row * o_stride + col) =
            pack2(from_f<T>(acc[n][2 * r] * l[r]), from_f<T>(acc[n][2 * r + 1] * l[r]));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
#define IM2COL(T, S, V, KC, UPC)                                                                                 \
  extern "C" __global__ void ap_im2col_t##V##_##S(const T *x, T *col, uint32_t c, uint32_t h, uint32_t w,    \
                                                  uint32_t up, uint32_t k, uint32_t stride, uint32_t pad,     \
                                                  uint32_t w_out, uint32_t row0, uint32_t rows) {             \
    im2col_t<T, KC, UPC>(x, col, c, h, w, up, k, stride, pad, w_out, row0, rows);                             \
  }

#define ELEMENTWISE(T, S)                                                                                       \
  IM2COL(T, S, , 0, 0)                                                                                        \
  IM2COL(T, S, _k3_up1, 3, 1)                                                                                 \
  IM2COL(T, S, _k3_up2, 3, 2)                                                                                 \
  IM2COL(T, S, _k1_up1, 1, 1)                                                                                 \
  extern "C" __global__ void ap_add_last_##S(const T *y, const T *vec, const T *res, T *out, uint32_t n,      \
                                             uint32_t n_vec, uint32_t has_res) {                              \
    add_last<T>(y, vec, res, out, n, n_vec, has_res);                                                         \
  }                                                                                                           \
  extern "C" __global__ void ap_add_channel_##S(const T *y, const T *vec, const T *res, T *out,               \
                                                uint32_t inner, uint32_t c, uint32_t per_image,              \
                                                uint32_t has_res) {                                           \
    add_channel<T>(y, vec, res, out, inner, c, per_image, has_res);                                           \
  }                                                                                                           \
  extern "C" __global__ void ap_geglu_##S(const T *h, const T *bias, T *out, uint32_t n, uint32_t f,          \
                                          uint32_t has_bias) {                                                \
    geglu<T>(h, bias, out, n, f, has_bias);                                                                   \
  }                                                                                                           \
  extern "C" __global__ void ap_gn_partial_##S(const T *x, float *partial, uint32_t n) {                      \
    gn_partial<T>(x, partial, n);                                                                             \
  }                                                                                                           \
  extern "C" __global__ void ap_gn_finalize_##S(const T *x, const float *partial, float *stats, uint32_t n,   \
                                                uint32_t chunks, float eps) {                                 \
    gn_finalize<T>(x, partial, stats, n, chunks, eps);                                                        \
  }                                                                                                           \
  extern "C" __global__ void ap_gn_apply_##S(const T *x, const float *stats, const T *weight, const T *bias,  \
                                             T *out, uint32_t inner, uint32_t c, uint32_t cpg, uint32_t silu) { \
    gn_apply<T>(x, stats, weight, bias, out, inner, c, cpg, silu);                                            \
  }

ELEMENTWISE(float, f32)
ELEMENTWISE(__half, f16)
ELEMENTWISE(__nv_bfloat16, bf16)

#define ATTENTION(T, S, NF)                                                                                      \
  extern "C" __global__ void __launch_bounds__(128)                                                            \
      ap_attention_##S##_nf##NF(const T *q, const T *k, const T *v, T *o, uint32_t heads, uint32_t lq,         \
                                uint32_t lk, uint32_t d, uint32_t q_stride, uint32_t kv_stride,                \
                                uint32_t o_stride, float scale) {                                              \
    attention<T, NF>(q, k, v, o, heads, lq, lk, d, q_stride, kv_stride, o_stride, scale);                      \
  }
#define ATTENTION_ALL(T, S)                                                                                      \
  ATTENTION(T, S, 1)                                                                                             \
  ATTENTION(T, S, 2)                                                                                             \
  ATTENTION(T, S, 3)                                                                                             \
  ATTENTION(T, S, 4)                                                                                             \
  ATTENTION(T, S, 5)                                                                                             \
  ATTENTION(T, S, 6)                                                                                             \
  ATTENTION(T, S, 7)                                                                                             \
  ATTENTION(T, S, 8)                                                                                             \
  ATTENTION(T, S, 9)                                                                                             \
  ATTENTION(T, S, 10)

ATTENTION_ALL(__half, f16)
ATTENTION_ALL(__nv_bfloat16, bf16)
