//! Bit-exact port of PyTorch's CPU random generator as used by `torch.randn`.
//!
//! `g = torch.Generator("cpu").manual_seed(seed); torch.randn(shape, generator=g)` (float32)
//! is reproduced here, including the state carried between successive draws on one generator.
//! The pieces, and the PyTorch sources they follow:
//!
//! * `aten/src/ATen/core/MT19937RNGEngine.h`: the mt19937 engine. It is seeded from the low
//!   32 bits of the 64-bit seed (`init_with_uint32`); the full seed is only remembered.
//! * `aten/src/ATen/CPUGeneratorImpl.cpp`: `random()` is one engine output, `random64()` is two
//!   (the first one is the high word). `manual_seed` also clears the cached normal sample.
//! * `aten/src/ATen/core/TransformationHelper.h` / `DistributionsHelper.h`:
//!   `uniform_real_distribution` (the low 24 or 53 bits scaled into `[0, 1)`) and
//!   `normal_distribution<double>` (Box-Muller whose second value is cached on the generator).
//! * `aten/src/ATen/native/cpu/DistributionTemplates.h`: `normal_kernel`. A contiguous float
//!   tensor with at least 16 elements goes through `normal_fill_AVX2` (x86-64 builds dispatch
//!   `normal_stub` to the AVX2 kernel, also on AVX-512 machines), which fills the tensor with
//!   uniforms and then applies Box-Muller to chunks of 16 using the Cephes-style vector math of
//!   `aten/src/ATen/native/cpu/avx_mathfun.h` (`log256_ps`, `sincos256_ps`). Smaller tensors are
//!   filled element by element with `normal_distribution<double>`.
//!
//! Everything is plain scalar Rust with the same sequence of IEEE single/double operations as
//! the vector code. One subtlety: PyTorch's AVX2 kernels are compiled by GCC with `-mfma` and
//! GCC's default `-ffp-contract=fast`, and the avx_mathfun intrinsics are plain vector `*`/`+`
//! to GCC, so wherever a product feeds only an add/sub GCC emits a fused multiply-add. Those
//! exact spots are written with `mul_add` below (a correctly rounded FMA on every target);
//! computing them unfused leaves about 1% of the values one ulp off.
//!
//! The `numel < 16` path uses the platform's double `sin`/`cos`/`log1p`/`sqrt` as torch does;
//! with glibc's libm (Linux, where the fixtures were produced) it matches bit for bit.

const MT_N: usize = 624;
const MT_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The 32-bit Mersenne Twister exactly as `at::mt19937` drives it (same output stream as
/// `std::mt19937`, regenerating the whole state block lazily on the first draw).
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    /// Index of the next state word to temper; `MT_N` means the block must be regenerated.
    next: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Mt19937 { state, next: MT_N }
    }

    fn twist(&mut self) {
        for j in 0..MT_N {
            let y = (self.state[j] & UPPER_MASK) | (self.state[(j + 1) % MT_N] & LOWER_MASK);
            let mag = if self.state[(j + 1) % MT_N] & 1 != 0 {
                MATRIX_A
            } else {
                0
            };
            self.state[j] = self.state[(j + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// torch.Generator("cpu") compatible generator.
///
/// Holds the mt19937 engine plus the cached second Box-Muller value of
/// `at::normal_distribution<double>`: torch keeps that cache on the generator, so a small
/// (`numel < 16`) draw with an odd element count hands its spare value to the next small draw.
/// The vectorised path (`numel >= 16`) neither reads nor clears it.
#[derive(Clone, Debug)]
pub struct TorchCpuGenerator {
    seed: u64,
    engine: Mt19937,
    next_double_normal: Option<f64>,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl TorchCpuGenerator {
    /// Same state as `torch.Generator('cpu').manual_seed(seed)`.
    ///
    /// Only the low 32 bits of `seed` reach the engine (torch's `init_with_uint32` masks it),
    /// so seeds that differ only above bit 31 give the same numbers; `seed()` still reports
    /// the full value, as `Generator.initial_seed()` does.
    pub fn new(seed: u64) -> Self {
        TorchCpuGenerator {
            seed,
            engine: Mt19937::new(seed as u32),
            next_double_normal: None,
        }
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `torch.randn(shape, generator=g, dtype=torch.float32)` flattened in row-major order, for
    /// any `shape` whose element count is `numel`. Advances the generator like torch does.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        if numel >= 16 {
            self.normal_fill(numel)
        } else {
            (0..numel).map(|_| self.normal_f64() as f32).collect()
        }
    }

    /// `torch.randn(shape, generator=g, dtype=torch.float16 / bfloat16)`: `round` is the cast to that
    /// type. torch (2.15) computes these in float with the same Box-Muller as [`Self::randn`] and casts,
    /// but fills the tensor chunk by chunk, so for a ragged end the refilled last 16 use the uniforms
    /// right after the full chunks (float draws uniforms for every element first): element counts that
    /// are multiples of 16 (all latents) give `randn` rounded. Returns f32s that are exact values of
    /// the reduced type.
    pub fn randn_reduced(&mut self, numel: usize, round: fn(f32) -> f32) -> Vec<f32> {
        if numel < 16 {
            // `static_cast<scalar_t>(double)`: through float, as c10's Half / BFloat16 constructors take one.
            return (0..numel).map(|_| round(self.normal_f64() as f32)).collect();
        }
        let mut data = vec![0f32; numel];
        let full = numel / 16 * 16;
        for chunk in data[..full].chunks_exact_mut(16) {
            for v in chunk.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(chunk);
        }
        if full != numel {
            let tail = &mut data[numel - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data.into_iter().map(round).collect()
    }

    /// `uniform_real_distribution<float>(0, 1)`: low 24 bits of one engine word times 2^-24.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `uniform_real_distribution<double>(0, 1)`: low 53 bits of `random64()` times 2^-53.
    fn uniform_f64(&mut self) -> f64 {
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// One sample of `at::normal_distribution<double>(0, 1)`: returns the cached value when
    /// there is one, otherwise draws two uniforms, returns `r cos θ` and caches `r sin θ`.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached * 1.0 + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        // `transformation::normal(ret, mean = 0, std = 1)`.
        r * theta.cos() * 1.0 + 0.0
    }

    /// `normal_fill_AVX2`: uniforms for every element, Box-Muller on each full chunk of 16, and
    /// for a ragged end the last 16 elements are refilled with fresh uniforms and transformed
    /// again (overwriting values of the previous chunk when they overlap).
    fn normal_fill(&mut self, numel: usize) -> Vec<f32> {
        let mut data: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        for chunk in data.chunks_exact_mut(16) {
            normal_fill_16(chunk);
        }
        if !numel.is_multiple_of(16) {
            let tail = &mut data[numel - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data
    }
}

/// `normal_fill_16_AVX2` on one chunk: `data[j]` and `data[j + 8]` (j < 8) are the two
/// uniforms of a Box-Muller pair and become `r cos θ` and `r sin θ`.
fn normal_fill_16(data: &mut [f32]) {
    // `_mm256_set1_ps(2.0f * c10::pi<double>)`: 2π in double, rounded once to float.
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0f32 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0f32 * log_ps(u1)).sqrt();
        let theta = two_pi * u2;
        let (sin, cos) = sincos_ps(theta);
        // `_mm256_fmadd_ps(n, std = 1, mean = 0)` is exactly `n + 0.0`.
        data[j] = radius * cos + 0.0;
        data[j + 8] = radius * sin + 0.0;
    }
}

/// One lane of `log256_ps` (Cephes `logf` as vectorised in avx_mathfun.h), reproduced
/// operation by operation; not a correctly rounded log, which is why `f32::ln` won't do.
/// `mul_add` marks where GCC fuses the vector code (see the module docs).
fn log_ps(x: f32) -> f32 {
    // The `static const float` tables of avx_mathfun.h are filled from unsuffixed (double)
    // literals, so every constant here is the double rounded once to float.
    // cephes_SQRTHF, written 0.707106781186547524 in avx_mathfun.h: the same double.
    const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
    const P: [f32; 9] = [
        7.0376836292E-2_f64 as f32,
        -1.1514610310E-1_f64 as f32,
        1.1676998740E-1_f64 as f32,
        -1.2420140846E-1_f64 as f32,
        1.4249322787E-1_f64 as f32,
        -1.6668057665E-1_f64 as f32,
        2.0000714765E-1_f64 as f32,
        -2.4999993993E-1_f64 as f32,
        3.3333331174E-1_f64 as f32,
    ];
    const Q1: f32 = -2.12194440e-4_f64 as f32;
    const Q2: f32 = 0.693359375_f64 as f32;

    // NaN for x <= 0 (the vector code ORs an all-ones mask in); randn only passes (0, 1].
    if x <= 0.0 {
        return f32::from_bits(u32::MAX);
    }
    // Cut off denormals, then split into exponent and a mantissa in [0.5, 1).
    let x = x.max(f32::from_bits(0x0080_0000));
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32;
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    e += 1.0;

    // if x < SQRTHF { e -= 1; x = x + x - 1 } else { x = x - 1 }, done with masks.
    let below = x < SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;

    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * Q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    e.mul_add(Q2, x)
}

/// One lane of `sincos256_ps` (Cephes `sinf`/`cosf` as vectorised in avx_mathfun.h):
/// returns `(sin x, cos x)` with the same float rounding as the vector code, including the
/// multiply-adds GCC fuses (see the module docs).
fn sincos_ps(x: f32) -> (f32, f32) {
    const FOPI: f32 = 1.27323954473516_f64 as f32;
    const DP1: f32 = -0.78515625_f64 as f32;
    // Written -2.4187564849853515625e-4 and -3.77489497744594108e-8 in avx_mathfun.h; these
    // shorter literals parse to the same doubles.
    const DP2: f32 = -2.418_756_484_985_351_6e-4_f64 as f32;
    const DP3: f32 = -3.774_894_977_445_941e-8_f64 as f32;
    const SINCOF: [f32; 3] = [
        -1.9515295891E-4_f64 as f32,
        8.3321608736E-3_f64 as f32,
        -1.6666654611E-1_f64 as f32,
    ];
    const COSCOF: [f32; 3] = [
        2.443315711809948E-005_f64 as f32,
        -1.388731625493765E-003_f64 as f32,
        4.166664568298827E-002_f64 as f32,
    ];
    const SIGN: u32 = 0x8000_0000;

    let mut sign_sin = x.to_bits() & SIGN;
    let mut x = x.abs();

    // j = (int(x * 4/π) + 1) & ~1: the octant pair, reduced with Cody-Waite below.
    let mut j = (x * FOPI) as i32; // truncation, like _mm256_cvttps_epi32 for in-range values
    j = j.wrapping_add(1) & !1;
    let y = j as f32;

    let swap_sign_sin = ((j & 4) as u32) << 29;
    let poly_is_sin = (j & 2) == 0;
    let sign_cos = ((!(j.wrapping_sub(2)) & 4) as u32) << 29;
    sign_sin ^= swap_sign_sin;

    x = y.mul_add(DP1, x);
    x = y.mul_add(DP2, x);
    x = y.mul_add(DP3, x);

    let z = x * x;
    // Cosine polynomial on [0, π/4].
    let mut yc = COSCOF[0];
    yc = yc.mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    // Sine polynomial on [0, π/4].
    let mut ys = SINCOF[0];
    ys = ys.mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = ys.mul_add(x, x);

    // Blend exactly as the masked vector code does (the masked-out lanes are +0.0).
    let ysin2 = if poly_is_sin { ys } else { 0.0 };
    let ysin1 = if poly_is_sin { 0.0 } else { yc };
    let ys = ys - ysin2;
    let yc = yc - ysin1;
    let sin = ysin1 + ysin2;
    let cos = yc + ys;
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::TorchCpuGenerator;

    #[test]
    fn seed0_vectorised_first_values() {
        let v = TorchCpuGenerator::new(0).randn(256);
        assert_eq!(v.len(), 256);
        // Shortest round-trip forms of torch's -1.1258398294448853, -1.152360200881958,
        // -0.2505785822868347, -0.4338788092136383 (compared as bits).
        let want = [-1.125_839_8f32, -1.152_360_2, -0.250_578_58, -0.433_878_8];
        let got: Vec<u32> = v[..4].iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want.map(f32::to_bits));
    }

    #[test]
    fn seed1_scalar_single_value() {
        let mut g = TorchCpuGenerator::new(1);
        assert_eq!(g.randn(1)[0].to_bits(), 0.661_352_16f32.to_bits());
        assert_eq!(g.seed(), 1);
    }

    #[test]
    fn seed_uses_low_32_bits_only() {
        let a = TorchCpuGenerator::new(7).randn(20);
        let b = TorchCpuGenerator::new(7 + (1u64 << 32)).randn(20);
        assert_eq!(a, b);
    }
}
