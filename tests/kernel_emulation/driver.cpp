// Runs kernels of src/kernels/cuda/kernels.cu on the CPU under emulation.h and checks them against
// plain double-precision references: attention (f16, bf16; every head size the models use, partial
// tiles, one and many key tiles, inputs apart or as views of fused projections), the convolution columns (each compile-time specialisation and the
// generic kernel), group norm's three passes, GEGLU and the adds. Prints one line per case; exits 1 if any case is off. Built and run by
// tests/kernel_emulation.rs (`AP_EMU_LATE_COPIES=1` makes cp.async copies land as late as allowed).
#include "emulation.h"

#include "../../src/kernels/cuda/kernels.cu"

#include <cstdio>
#include <string>
#include <type_traits>

namespace {

uint64_t rng_state = 0x9e3779b97f4a7c15ull;
// Uniform in [-1, 1): enough for attention and convolution inputs.
float uniform() {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((rng_state >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

template <typename T> T round_to(float x);
template <> __half round_to<__half>(float x) { return __float2half_rn(x); }
template <> __nv_bfloat16 round_to<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> float round_to<float>(float x) { return x; }

template <typename T> std::vector<T> random_values(size_t n, float scale) {
  std::vector<T> v(n);
  for (auto &x : v) x = round_to<T>(uniform() * scale);
  return v;
}

int failures = 0;

void report(const std::string &what, double err, double tol) {
  const bool ok = err <= tol;
  if (!ok) ++failures;
  std::printf("%s %s: relative error %.3g (tolerance %.3g)\n", ok ? "ok  " : "FAIL", what.c_str(), err, tol);
}

using AttentionKernel = void (*)(const void *, const void *, const void *, void *, uint32_t, uint32_t, uint32_t,
                                 uint32_t, uint32_t, uint32_t, uint32_t, float);

template <typename T> AttentionKernel attention_kernel(int nf);
#define AP_NF_TABLE(S, T)                                                                                      \
  template <> AttentionKernel attention_kernel<T>(int nf) {                                                   \
    static const AttentionKernel table[] = {                                                                  \
        (AttentionKernel)ap_attention_##S##_nf1, (AttentionKernel)ap_attention_##S##_nf2,                     \
        (AttentionKernel)ap_attention_##S##_nf3, (AttentionKernel)ap_attention_##S##_nf4,                     \
        (AttentionKernel)ap_attention_##S##_nf5, (AttentionKernel)ap_attention_##S##_nf6,                     \
        (AttentionKernel)ap_attention_##S##_nf7, (AttentionKernel)ap_attention_##S##_nf8,                     \
        (AttentionKernel)ap_attention_##S##_nf9, (AttentionKernel)ap_attention_##S##_nf10};                   \
    return table[nf - 1];                                                                                     \
  }
AP_NF_TABLE(f16, __half)
AP_NF_TABLE(bf16, __nv_bfloat16)

// How q, k and v lie in memory: each in its own (B, L, H·D) buffer, or as column blocks of one fused
// projection's output (src/models/transformer.rs): self-attention's q | k | v in rows of 3·H·D,
// cross-attention's k | v in rows of 2·H·D next to a separate q.
enum class Layout { Apart, Qkv, Kv };

// softmax(q·kᵀ/√d)·v per head, in double from the rounded inputs, against the kernel launched as
// src/kernels/cuda/attention.rs launches it (64 query rows per block, one (image, head) per grid row,
// 128 threads, shared memory for the query tile and two key and two value tiles, row strides of the
// layout).
template <typename T>
void check_attention(const char *type, uint32_t b, uint32_t lq, uint32_t lk, uint32_t heads, uint32_t d, double tol,
                     Layout layout = Layout::Apart) {
  const uint32_t inner = heads * d, nf = (d + 15) / 16;
  if (layout == Layout::Qkv) lk = lq;  // self-attention
  const uint32_t q_row = layout == Layout::Qkv ? 3 * inner : inner;
  const uint32_t kv_row = layout == Layout::Qkv ? 3 * inner : layout == Layout::Kv ? 2 * inner : inner;
    std::vector<T> q_buf((size_t)b * lq * q_row), kv_buf, k_buf, v_buf;
  const T *q = q_buf.data(), *k, *v;
  if (layout == Layout::Qkv) {
    k = q + inner;
    v = q + 2 * inner;
  } else if (layout == Layout::Kv) {
    kv_buf.resize((size_t)b * lk * kv_row);
    k = kv_buf.data();
    v = k + inner;
  } else {
    k_buf.resize((size_t)b * lk * inner);
    v_buf.resize((size_t)b * lk * inner);
    k = k_buf.data();
    v = v_buf.data();
  }
  // Element c of row r (of all images) of a view with row stride `row`.
  auto at = [](const T *base, uint32_t row, size_t r, uint32_t c) -> T & {
    return const_cast<T *>(base)[r * row + c];
  };
  for (size_t r = 0; r < (size_t)b * lq; ++r)
    for (uint32_t c = 0; c < inner; ++c) at(q, q_row, r, c) = round_to<T>(uniform() * 2.0f);
  for (size_t r = 0; r < (size_t)b * lk; ++r)
    for (uint32_t c = 0; c < inner; ++c) {
      at(k, kv_row, r, c) = round_to<T>(uniform() * 2.0f);
      at(v, kv_row, r, c) = round_to<T>(uniform());
    }
  std::vector<T> o((size_t)b * lq * inner, round_to<T>(12345.0f));
  const float scale = 1.0f / std::sqrt((float)d);
  const size_t shared = (size_t)(ATT_BR + 4 * ATT_BC) * (nf * 16 + 8) * sizeof(T);
  AttentionKernel kernel = attention_kernel<T>((int)nf);
  ap_emu::launch({(lq + ATT_BR - 1) / ATT_BR, b * heads, 1}, {128, 1, 1}, shared, true, [&] {
    kernel(q, k, v, o.data(), heads, lq, lk, d, q_row, kv_row, inner, scale);
  });
  double max_err = 0, max_ref = 1;
  std::vector<double> p(lk);
  for (uint32_t bi = 0; bi < b; ++bi)
    for (uint32_t h = 0; h < heads; ++h)
      for (uint32_t i = 0; i < lq; ++i) {
        const size_t qr = (size_t)bi * lq + i;
        double m = -INFINITY, sum = 0;
        for (uint32_t j = 0; j < lk; ++j) {
          const size_t kr = (size_t)bi * lk + j;
          double s = 0;
          for (uint32_t c = 0; c < d; ++c)
            s += (double)to_f(at(q, q_row, qr, h * d + c)) * (double)to_f(at(k, kv_row, kr, h * d + c));
          p[j] = s * scale;
          m = std::max(m, p[j]);
        }
        for (uint32_t j = 0; j < lk; ++j) sum += (p[j] = std::exp(p[j] - m));
        for (uint32_t c = 0; c < d; ++c) {
          double want = 0;
          for (uint32_t j = 0; j < lk; ++j) want += p[j] * (double)to_f(at(v, kv_row, (size_t)bi * lk + j, h * d + c));
          want /= sum;
          const double got = (double)to_f(o[qr * inner + h * d + c]);
          max_ref = std::max(max_ref, std::fabs(want));
          max_err = std::isnan(got) ? INFINITY : std::max(max_err, std::fabs(want - got));
        }
      }
  static const char *names[] = {"", " fused qkv", " fused kv"};
  char what[160];
  std::snprintf(what, sizeof what, "attention %s b=%u lq=%u lk=%u heads=%u d=%u%s", type, b, lq, lk, heads, d,
                names[(int)layout]);
  report(what, max_err / max_ref, tol);
}

// The transposed convolution columns of ap_im2col_t*_f32 (launched as src/kernels/cuda/conv.rs
// does) against their definition: col[b][ci·k·k + ky·k + kx][p] = upsampled, padded x at the tap.
void check_im2col(const char *variant, void (*kernel)(const float *, float *, uint32_t, uint32_t, uint32_t, uint32_t,
                                                    uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t),
                  uint32_t b, uint32_t c, uint32_t h, uint32_t w, uint32_t up, uint32_t k, uint32_t stride, uint32_t pad,
                  uint32_t row0, uint32_t rows) {
  const uint32_t w_out = (w * up + 2 * pad - k) / stride + 1, ckk = c * k * k, n_pix = rows * w_out;
  auto x = random_values<float>((size_t)b * c * h * w, 1.0f);
  std::vector<float> col((size_t)b * ckk * n_pix, 777.0f);
  ap_emu::launch({(n_pix + 255) / 256, ckk, b}, {256, 1, 1}, 0, false,
                 [&] { kernel(x.data(), col.data(), c, h, w, up, k, stride, pad, w_out, row0, rows); });
  double max_err = 0;
  for (uint32_t bi = 0; bi < b; ++bi)
    for (uint32_t ci = 0; ci < c; ++ci)
      for (uint32_t ky = 0; ky < k; ++ky)
        for (uint32_t kx = 0; kx < k; ++kx)
          for (uint32_t pix = 0; pix < n_pix; ++pix) {
            const int oy = (int)(row0 + pix / w_out), ox = (int)(pix % w_out);
            const int iy = oy * (int)stride + (int)ky - (int)pad, ix = ox * (int)stride + (int)kx - (int)pad;
            float want = 0;
            if (iy >= 0 && ix >= 0 && iy < (int)(h * up) && ix < (int)(w * up))
              want = x[(((size_t)bi * c + ci) * h + iy / up) * w + ix / up];
            const float got = col[((size_t)bi * ckk + (ci * k + ky) * k + kx) * n_pix + pix];
            max_err = std::max(max_err, (double)std::fabs(got - want));
          }
  char what[160];
  std::snprintf(what, sizeof what, "im2col%s b=%u c=%u %ux%u up=%u k=%u stride=%u pad=%u rows %u+%u", variant, b, c, h,
                w, up, k, stride, pad, row0, rows);
  report(what, max_err, 0.0);
}

// Group norm (+ SiLU) through its three kernels, launched as src/kernels/cuda/norm.rs launches them,
// against a double-precision group norm. Rows past one GN_CHUNK take several partial sums; `offset`
// shifts every value, which the shifted sums must not lose to cancellation.
template <typename T>
void check_group_norm(const char *type, uint32_t b, uint32_t c, uint32_t inner, uint32_t groups, float offset,
                      bool silu, double tol) {
  const uint32_t cpg = c / groups, rows = b * groups, n = cpg * inner, chunks = (n + GN_CHUNK - 1) / GN_CHUNK;
  std::vector<T> x((size_t)b * c * inner);
  for (auto &v : x) v = round_to<T>(offset + uniform() * 3.0f);
  auto weight = random_values<T>(c, 1.5f), bias = random_values<T>(c, 1.0f);
  std::vector<float> partial((size_t)rows * chunks * 2, -1.0f), stats((size_t)rows * 2, -1.0f);
  std::vector<T> out(x.size(), round_to<T>(999.0f));
  void (*partial_k)(const T *, float *, uint32_t);
  void (*finalize_k)(const T *, const float *, float *, uint32_t, uint32_t, float);
  void (*apply_k)(const T *, const float *, const T *, const T *, T *, uint32_t, uint32_t, uint32_t, uint32_t);
  if constexpr (std::is_same_v<T, float>) {
    partial_k = ap_gn_partial_f32, finalize_k = ap_gn_finalize_f32, apply_k = ap_gn_apply_f32;
  } else {
    partial_k = ap_gn_partial_f16, finalize_k = ap_gn_finalize_f16, apply_k = ap_gn_apply_f16;
  }
  ap_emu::launch({chunks, rows, 1}, {256, 1, 1}, 0, true, [&] { partial_k(x.data(), partial.data(), n); });
  ap_emu::launch({rows, 1, 1}, {32, 1, 1}, 0, true,
                 [&] { finalize_k(x.data(), partial.data(), stats.data(), n, chunks, 1e-5f); });
  const uint32_t blocks = std::min(1024u, std::max(1u, (inner + 1023) / 1024));
  ap_emu::launch({blocks, b * c, 1}, {256, 1, 1}, 0, false, [&] {
    apply_k(x.data(), stats.data(), weight.data(), bias.data(), out.data(), inner, c, cpg, silu ? 1 : 0);
  });
  double max_err = 0, max_ref = 1;
  for (uint32_t r = 0; r < rows; ++r) {
    const size_t base = (size_t)r * n;
    double mean = 0, var = 0;
    for (uint32_t i = 0; i < n; ++i) mean += (double)to_f(x[base + i]);
    mean /= n;
    for (uint32_t i = 0; i < n; ++i) var += std::pow((double)to_f(x[base + i]) - mean, 2);
    var /= n;
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t ch = (r % groups) * cpg + i / inner;
      double want = ((double)to_f(x[base + i]) - mean) / std::sqrt(var + 1e-5) * (double)to_f(weight[ch]) +
                    (double)to_f(bias[ch]);
      if (silu) want = want / (1.0 + std::exp(-want));
      max_ref = std::max(max_ref, std::fabs(want));
      max_err = std::max(max_err, std::fabs(want - (double)to_f(out[base + i])));
    }
  }
  char what[160];
  std::snprintf(what, sizeof what, "group norm %s b=%u c=%u inner=%u groups=%u offset=%g silu=%d", type, b, c, inner,
                groups, offset, silu);
  report(what, max_err / max_ref, tol);
}

// GEGLU with bias and the bias + residual adds (grid-stride loops), f32, against their definitions.
void check_elementwise() {
  const uint32_t m = 7, f = 300, n = m * f;
  auto h = random_values<float>((size_t)m * 2 * f, 3.0f), bias = random_values<float>(2 * f, 1.0f);
  std::vector<float> out(n, 999.0f);
  ap_emu::launch({3, 1, 1}, {256, 1, 1}, 0, false, [&] { ap_geglu_f32(h.data(), bias.data(), out.data(), n, f, 1); });
  double err = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t r = i / f, j = i % f;
    const double a = (double)h[(size_t)r * 2 * f + j] + bias[j], g = (double)h[(size_t)r * 2 * f + f + j] + bias[f + j];
    err = std::max(err, std::fabs(a * 0.5 * g * (1.0 + std::erf(g / std::sqrt(2.0))) - out[i]));
  }
  report("geglu f32 m=7 f=300", err / 10.0, 1e-5);

  const uint32_t b = 2, c = 5, inner = 1100;
  auto y = random_values<float>((size_t)b * c * inner, 1.0f), res = random_values<float>(y.size(), 1.0f);
  auto per_image = random_values<float>(b * c, 1.0f);
  std::vector<float> o(y.size(), 999.0f);
  ap_emu::launch({2, b * c, 1}, {256, 1, 1}, 0, false, [&] {
    ap_add_channel_f32(y.data(), per_image.data(), res.data(), o.data(), inner, c, 1, 1);
  });
  err = 0;
  for (size_t i = 0; i < y.size(); ++i) err = std::max(err, (double)std::fabs(y[i] + per_image[i / inner] + res[i] - o[i]));
  report("add_channel f32 per image + residual", err, 1e-6);
  ap_emu::launch({4, 1, 1}, {256, 1, 1}, 0, false,
                 [&] { ap_add_last_f32(y.data(), per_image.data(), nullptr, o.data(), (uint32_t)y.size(), b * c, 0); });
  err = 0;
  for (size_t i = 0; i < y.size(); ++i) err = std::max(err, (double)std::fabs(y[i] + per_image[i % (b * c)] - o[i]));
  report("add_last f32", err, 1e-6);
}

}  // namespace

int main() {
  ap_emu::late_copies = std::getenv("AP_EMU_LATE_COPIES") != nullptr;  // any value
  std::printf("cp.async copies land %s\n", ap_emu::late_copies ? "at the latest wait" : "at once");

  // (b, lq, lk, heads, d): SD 1.5 heads (40, 80, 160), SDXL's (64), cross attention over 77 tokens,
  // partial query and key tiles, one key, exactly one and two key tiles, many key tiles.
  const uint32_t cases[][5] = {{2, 70, 77, 2, 40},  {1, 65, 130, 1, 80}, {1, 40, 70, 1, 160}, {1, 130, 200, 2, 64},
                               {1, 20, 1, 2, 8},    {1, 64, 64, 1, 64},  {1, 64, 128, 1, 72}, {1, 16, 600, 1, 40},
                               {1, 33, 90, 3, 24}};
  for (const auto &cs : cases) {
    check_attention<__half>("f16", cs[0], cs[1], cs[2], cs[3], cs[4], 4e-3);
    check_attention<__nv_bfloat16>("bf16", cs[0], cs[1], cs[2], cs[3], cs[4], 3e-2);
  }
  // Column views of fused projections (row strides of 3·H·D or 2·H·D), as the UNet's transformer
  // blocks pass them: SD 1.5's and SDXL's self-attention, cross-attention over 77 tokens, partial tiles.
  check_attention<__half>("f16", 2, 70, 70, 2, 40, 4e-3, Layout::Qkv);
  check_attention<__nv_bfloat16>("bf16", 1, 130, 130, 2, 64, 3e-2, Layout::Qkv);
  check_attention<__half>("f16", 2, 70, 77, 3, 64, 4e-3, Layout::Kv);
  check_attention<__nv_bfloat16>("bf16", 1, 65, 200, 1, 80, 3e-2, Layout::Kv);

  check_im2col("_k3_up1", ap_im2col_t_k3_up1_f32, 2, 3, 9, 7, 1, 3, 1, 1, 0, 9);
  check_im2col("_k3_up1", ap_im2col_t_k3_up1_f32, 1, 2, 11, 6, 1, 3, 2, 1, 1, 3);
  check_im2col("_k3_up2", ap_im2col_t_k3_up2_f32, 2, 3, 5, 4, 2, 3, 1, 1, 0, 10);
  check_im2col("_k1_up1", ap_im2col_t_k1_up1_f32, 1, 4, 7, 9, 1, 1, 2, 0, 0, 4);
  check_im2col("", ap_im2col_t_f32, 1, 2, 5, 4, 3, 3, 1, 1, 2, 7);
  check_im2col("", ap_im2col_t_f32, 1, 2, 7, 7, 1, 2, 1, 0, 0, 6);

  check_group_norm<float>("f32", 2, 8, 2000, 2, 0.0f, false, 1e-5);
  check_group_norm<float>("f32", 1, 6, 3000, 3, 300.0f, true, 1e-4);
  check_group_norm<__half>("f16", 2, 8, 1500, 4, 20.0f, true, 4e-3);
  check_elementwise();

  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
