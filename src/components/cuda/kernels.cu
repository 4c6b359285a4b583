// Our CUDA kernels for the UNet and VAE hot paths, where candle 0.11's generic kernels cost the most
// (measured on an H100, bench/README.md): convolution columns laid out for an NCHW result (candle's
// im2col uses 64-bit index arithmetic per element and its result needs a transpose), bias / residual
// adds, GEGLU, group norm (+ SiLU) and attention without a materialised score matrix.
//
// Every kernel computes in f32 and rounds its output once. Names end in the element type (_f16, _bf16,
// _f32); src/components/cuda/*.rs launch them. Index arithmetic is 32-bit where the Rust side has checked
// that the sizes fit.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>

using namespace nvcuda;

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
template <typename T>
__device__ void im2col_t(const T *x, T *col, uint32_t c, uint32_t h, uint32_t w, uint32_t up, uint32_t k,
                         uint32_t stride, uint32_t pad, uint32_t w_out, uint32_t row0, uint32_t rows) {
  const uint32_t n_pix = rows * w_out;
  const uint32_t p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= n_pix) return;
  const uint32_t r = blockIdx.y, b = blockIdx.z, ckk = gridDim.y;
  const uint32_t kx = r % k, ky = (r / k) % k, ci = r / (k * k);
  const uint32_t oy = row0 + p / w_out, ox = p % w_out;
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
// Attention softmax(q·kᵀ·scale)·v for one (image, head) per grid row and 64 query rows per block (4
// warps of 16), tensor cores through WMMA, scores and sums in f32. q, k, v, out are (B, L, H·D) rows
// (row strides given), head h at column h·D; D ≤ 16·NF, zero-padded to 16·NF in shared memory.
//
// Two passes over the keys: the first finds each row's max and sum of exponentials, the second adds
// the normalised probabilities (rounded to the input type, as a softmax output would be) times v. The
// second pass never rescales its accumulators, whose register layout WMMA leaves unspecified; the
// price is computing q·kᵀ twice. No L×L matrix is ever stored.
#define ATT_BR 64
#define ATT_BC 64
#define ATT_SLD (ATT_BC + 4)
#define ATT_PLD (ATT_BC + 8)

template <typename T>
__device__ __forceinline__ void load_tile(T *dst, const T *src, uint32_t row0, uint32_t len, uint32_t stride,
                                          uint32_t d, uint32_t dp, uint32_t ld, uint32_t rows) {
  for (uint32_t idx = threadIdx.x; idx < rows * dp; idx += blockDim.x) {
    const uint32_t r = idx / dp, col = idx % dp;
    T v = from_f<T>(0.f);
    if (row0 + r < len && col < d) v = src[(size_t)(row0 + r) * stride + col];
    dst[r * ld + col] = v;
  }
}

template <typename T, int NF>
__device__ __forceinline__ void att_scores(const T *qs, const T *ks, float *ss) {
  constexpr int LD = NF * 16 + 8;
  const uint32_t warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < ATT_BC / 16; ++j) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
    wmma::fill_fragment(s, 0.f);
#pragma unroll
    for (int kk = 0; kk < NF; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
      wmma::load_matrix_sync(a, qs + warp * 16 * LD + kk * 16, LD);
      wmma::load_matrix_sync(b, ks + j * 16 * LD + kk * 16, LD);
      wmma::mma_sync(s, a, b, s);
    }
    wmma::store_matrix_sync(ss + j * 16, s, ATT_SLD, wmma::mem_row_major);
  }
}

template <typename T, int NF>
__device__ void attention(const T *q, const T *k, const T *v, T *o, uint32_t heads, uint32_t lq, uint32_t lk,
                          uint32_t d, uint32_t q_stride, uint32_t kv_stride, uint32_t o_stride, float scale) {
  constexpr int DP = NF * 16, LD = DP + 8, OLD = DP + 4;
  extern __shared__ __align__(128) unsigned char smem[];
  T *qs = reinterpret_cast<T *>(smem);
  T *ks = qs + ATT_BR * LD;
  T *vs = ks + ATT_BC * LD;
  float *ss_all = reinterpret_cast<float *>(vs + ATT_BC * LD);
  T *ps_all = reinterpret_cast<T *>(ss_all + 4 * 16 * ATT_SLD);

  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t bh = blockIdx.y, b = bh / heads, h = bh % heads;
  const uint32_t q0 = blockIdx.x * ATT_BR;
  const T *qb = q + (size_t)b * lq * q_stride + h * d;
  const T *kb = k + (size_t)b * lk * kv_stride + h * d;
  const T *vb = v + (size_t)b * lk * kv_stride + h * d;
  float *ss = ss_all + warp * 16 * ATT_SLD;
  T *ps = ps_all + warp * 16 * ATT_PLD;

  load_tile(qs, qb, q0, lq, q_stride, d, DP, LD, ATT_BR);
  // Lanes 2r and 2r + 1 share query row r of the warp, 32 score columns each.
  const uint32_t r = lane >> 1, side = lane & 1;
  const float *srow = ss + r * ATT_SLD + side * 32;
  float m = -INFINITY, l = 0.f;
  for (uint32_t k0 = 0; k0 < lk; k0 += ATT_BC) {
    __syncthreads();
    load_tile(ks, kb, k0, lk, kv_stride, d, DP, LD, ATT_BC);
    __syncthreads();
    att_scores<T, NF>(qs, ks, ss);
    __syncwarp();
    const int valid = min(32, (int)lk - (int)(k0 + side * 32));
    float mx = -INFINITY;
    for (int j = 0; j < valid; ++j) mx = fmaxf(mx, srow[j] * scale);
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m, mx);
    float sum = 0.f;
    for (int j = 0; j < valid; ++j) sum += expf(srow[j] * scale - m_new);
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * expf(m - m_new) + sum;
    m = m_new;
    __syncwarp();
  }
  const float inv_l = 1.f / l;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NF];
#pragma unroll
  for (int i = 0; i < NF; ++i) wmma::fill_fragment(acc[i], 0.f);
  for (uint32_t k0 = 0; k0 < lk; k0 += ATT_BC) {
    __syncthreads();
    load_tile(ks, kb, k0, lk, kv_stride, d, DP, LD, ATT_BC);
    load_tile(vs, vb, k0, lk, kv_stride, d, DP, LD, ATT_BC);
    __syncthreads();
    att_scores<T, NF>(qs, ks, ss);
    __syncwarp();
    for (int j = 0; j < 32; ++j) {
      const uint32_t col = side * 32 + j;
      const float p = k0 + col < lk ? expf(srow[j] * scale - m) * inv_l : 0.f;
      ps[r * ATT_PLD + col] = from_f<T>(p);
    }
    __syncwarp();
#pragma unroll
    for (int kk = 0; kk < ATT_BC / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, ps + kk * 16, ATT_PLD);
#pragma unroll
      for (int i = 0; i < NF; ++i) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bf;
        wmma::load_matrix_sync(bf, vs + kk * 16 * LD + i * 16, LD);
        wmma::mma_sync(acc[i], a, bf, acc[i]);
      }
    }
  }
  __syncthreads();  // the q/k/v tiles are reused as the output staging area
  float *os = reinterpret_cast<float *>(smem) + warp * 16 * OLD;
#pragma unroll
  for (int i = 0; i < NF; ++i) wmma::store_matrix_sync(os + i * 16, acc[i], OLD, wmma::mem_row_major);
  __syncwarp();
  T *ob = o + (size_t)b * lq * o_stride + h * d;
  for (uint32_t idx = lane; idx < 16 * d; idx += 32) {
    const uint32_t rr = idx / d, col = idx % d, row = q0 + warp * 16 + rr;
    if (row < lq) ob[(size_t)row * o_stride + col] = from_f<T>(os[rr * OLD + col]);
  }
}

// ---------------------------------------------------------------------------------------------------
#define ELEMENTWISE(T, S)                                                                                       \
  extern "C" __global__ void ap_im2col_t_##S(const T *x, T *col, uint32_t c, uint32_t h, uint32_t w,         \
                                             uint32_t up, uint32_t k, uint32_t stride, uint32_t pad,          \
                                             uint32_t w_out, uint32_t row0, uint32_t rows) {                  \
    im2col_t<T>(x, col, c, h, w, up, k, stride, pad, w_out, row0, rows);                                      \
  }                                                                                                           \
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
