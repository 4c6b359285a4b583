// Runs kernels of src/components/cuda/kernels.cu on the CPU under emulation.h and checks them against
// plain double-precision references: attention (f16, bf16; every head size the models use, partial
// tiles, one and many key tiles) and the convolution columns (each compile-time specialisation and the
// generic kernel). Prints one line per case; exits 1 if any case is off. Built and run by
// tests/kernel_emulation.rs (`AP_EMU_LATE_COPIES=1` makes cp.async copies land as late as allowed).
#include "emulation.h"

#include "../../src/components/cuda/kernels.cu"

#include <cstdio>
#include <string>

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

// softmax(q·kᵀ/√d)·v per head, in double from the rounded inputs, against the kernel launched as
// src/components/cuda/attention.rs launches it (64 query rows per block, one (image, head) per grid row,
// 128 threads, shared memory for the query tile and two key and two value tiles).
template <typename T>
void check_attention(const char *type, uint32_t b, uint32_t lq, uint32_t lk, uint32_t heads, uint32_t d, double tol) {
  const uint32_t inner = heads * d, nf = (d + 15) / 16;
  auto q = random_values<T>((size_t)b * lq * inner, 2.0f);
  auto k = random_values<T>((size_t)b * lk * inner, 2.0f);
  auto v = random_values<T>((size_t)b * lk * inner, 1.0f);
  std::vector<T> o((size_t)b * lq * inner, round_to<T>(12345.0f));
  const float scale = 1.0f / std::sqrt((float)d);
  const size_t shared = (size_t)(ATT_BR + 4 * ATT_BC) * (nf * 16 + 8) * sizeof(T);
  AttentionKernel kernel = attention_kernel<T>((int)nf);
  ap_emu::launch({(lq + ATT_BR - 1) / ATT_BR, b * heads, 1}, {128, 1, 1}, shared, true, [&] {
    kernel(q.data(), k.data(), v.data(), o.data(), heads, lq, lk, d, inner, inner, inner, scale);
  });
  double max_err = 0, max_ref = 1;
  std::vector<double> p(lk);
  for (uint32_t bi = 0; bi < b; ++bi)
    for (uint32_t h = 0; h < heads; ++h)
      for (uint32_t i = 0; i < lq; ++i) {
        const size_t qi = ((size_t)bi * lq + i) * inner + h * d;
        double m = -INFINITY, sum = 0;
        for (uint32_t j = 0; j < lk; ++j) {
          const size_t kj = ((size_t)bi * lk + j) * inner + h * d;
          double s = 0;
          for (uint32_t c = 0; c < d; ++c) s += (double)to_f(q[qi + c]) * (double)to_f(k[kj + c]);
          p[j] = s * scale;
          m = std::max(m, p[j]);
        }
        for (uint32_t j = 0; j < lk; ++j) sum += (p[j] = std::exp(p[j] - m));
        for (uint32_t c = 0; c < d; ++c) {
          double want = 0;
          for (uint32_t j = 0; j < lk; ++j) want += p[j] * (double)to_f(v[((size_t)bi * lk + j) * inner + h * d + c]);
          want /= sum;
          max_ref = std::max(max_ref, std::fabs(want));
          max_err = std::max(max_err, std::fabs(want - (double)to_f(o[qi + c])));
        }
      }
  char what[160];
  std::snprintf(what, sizeof what, "attention %s b=%u lq=%u lk=%u heads=%u d=%u", type, b, lq, lk, heads, d);
  report(what, max_err / max_ref, tol);
}

// The transposed convolution columns of ap_im2col_t*_f32 (launched as src/components/cuda/conv.rs
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

}  // namespace

int main() {
  ap_emu::late_copies = std::getenv("AP_EMU_LATE_COPIES") != nullptr;
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

  check_im2col("_k3_up1", ap_im2col_t_k3_up1_f32, 2, 3, 9, 7, 1, 3, 1, 1, 0, 9);
  check_im2col("_k3_up1", ap_im2col_t_k3_up1_f32, 1, 2, 11, 6, 1, 3, 2, 1, 1, 3);
  check_im2col("_k3_up2", ap_im2col_t_k3_up2_f32, 2, 3, 5, 4, 2, 3, 1, 1, 0, 10);
  check_im2col("_k1_up1", ap_im2col_t_k1_up1_f32, 1, 4, 7, 9, 1, 1, 2, 0, 0, 4);
  check_im2col("", ap_im2col_t_f32, 1, 2, 5, 4, 3, 3, 1, 1, 2, 7);
  check_im2col("", ap_im2col_t_f32, 1, 2, 7, 7, 1, 2, 1, 0, 0, 6);

  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
