//! Elementwise kernels (exp, softmax rows, SiLU) written as plain loops over fixed-width lanes, compiled
//! three times: for AVX-512, for AVX2+FMA and for the baseline instruction set, the first the CPU
//! supports being picked at run time. The per-element arithmetic is the same in all three (no FMA
//! contraction), so only the order of the row sums differs between machines.

/// Lanes of the accumulators: one AVX-512 register of f32.
const LANES: usize = 16;

/// Defines `fn $name(args)` from a body, compiled for each instruction set and dispatched at run time.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn imp($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($arg: $ty),*) {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features `v4` is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

/// `exp(x)` in f32, vectorisable: Cephes' `expf` (range reduction by ln 2, degree-5 polynomial), within
/// about 1 ulp of the correctly rounded result. Inputs are clamped to [-87.3, 88]: below, the result
/// is the smallest normal float instead of a subnormal or 0 (no softmax or SiLU here can tell).
///
/// `n = round(x / ln 2)` comes from adding and subtracting 1.5·2²³, which also leaves `n` in the low
/// mantissa bits; building `2ⁿ` from those bits keeps every step a vector instruction (a float → int
/// cast would be scalarised, as Rust's casts saturate).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.336_55, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * C1) - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * (r * r) + r + 1.0;
    // t's bits are 0x4B40_0000 + n for |n| < 2^22.
    let pow2n = (t.to_bits().wrapping_sub(0x4B40_0000 - 127)) << 23;
    e * f32::from_bits(pow2n)
}

/// `x · sigmoid(x)`, as torch's `silu`: `x / (1 + exp(-x))`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

multiversion! {
    /// Softmax of each `row_len`-long row of `data`, in place: `exp(x - max) / sum`.
    pub fn softmax_rows(data: &mut [f32], row_len: usize) {
        for row in data.chunks_exact_mut(row_len) {
            let mut lanes = [f32::NEG_INFINITY; LANES];
            let mut chunks = row.chunks_exact(LANES);
            for c in &mut chunks {
                for i in 0..LANES {
                    lanes[i] = lanes[i].max(c[i]);
                }
            }
            let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            for l in lanes {
                max = max.max(l);
            }
            let mut sums = [0f32; LANES];
            let mut chunks = row.chunks_exact_mut(LANES);
            for c in &mut chunks {
                for i in 0..LANES {
                    let e = exp(c[i] - max);
                    c[i] = e;
                    sums[i] += e;
                }
            }
            let mut sum = 0f32;
            for x in chunks.into_remainder() {
                *x = exp(*x - max);
                sum += *x;
            }
            sum += sums.iter().sum::<f32>();
            let inv = 1.0 / sum;
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    }
}

multiversion! {
    /// `dst[i] = (src[i] - mean) · scale + shift`, then SiLU when `act`.
    pub fn normalize(dst: &mut [f32], src: &[f32], mean: f32, scale: f32, shift: f32, act: bool) {
        if act {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = silu((s - mean) * scale + shift);
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (s - mean) * scale + shift;
            }
        }
    }
}

/// Sum and sum of squares of `src`, accumulated in f64 over independent lanes.
pub fn moments(src: &[f32]) -> (f64, f64) {
    let mut out = (0.0, 0.0);
    moments_into(src, &mut out);
    out
}

multiversion! {
    fn moments_into(src: &[f32], out: &mut (f64, f64)) {
        const W: usize = 8;
        let mut s = [0f64; W];
        let mut q = [0f64; W];
        let mut chunks = src.chunks_exact(W);
        for c in &mut chunks {
            for i in 0..W {
                let v = c[i] as f64;
                s[i] += v;
                q[i] += v * v;
            }
        }
        let (mut sum, mut sq) = (0f64, 0f64);
        for &v in chunks.remainder() {
            sum += v as f64;
            sq += v as f64 * v as f64;
        }
        *out = (sum + s.iter().sum::<f64>(), sq + q.iter().sum::<f64>());
    }
}

multiversion! {
    /// diffusers' GEGLU on rows of `[value | gate]`: `out = value · gelu(gate)` with the exact (erf)
    /// GELU, `gelu(x) = x/2 · (1 + erf(x/√2))`.
    pub fn geglu(out: &mut [f32], src: &[f32], inner: usize) {
        for (o, s) in out.chunks_exact_mut(inner).zip(src.chunks_exact(2 * inner)) {
            let (value, gate) = s.split_at(inner);
            for ((o, &v), &g) in o.iter_mut().zip(value).zip(gate) {
                *o = v * ((erf(g * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * g);
            }
        }
    }
}

/// `erf(x)` in f32: the function candle's `gelu_erf` uses, so results match it bit for bit.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    candle_core::cpu::erf::erf_f32(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, libm {want} ({ulp} ulp)");
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e30) >= 0.0 && exp(-1e30) < 1.2e-38);
        assert!(exp(f32::NEG_INFINITY) < 1.2e-38);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut v: Vec<f32> = (0..3 * 37)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
            .collect();
        let want: Vec<f32> = v
            .chunks(37)
            .flat_map(|r| {
                let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let s: f32 = r.iter().map(|x| (x - m).exp()).sum();
                r.iter().map(move |x| (x - m).exp() / s).collect::<Vec<_>>()
            })
            .collect();
        softmax_rows(&mut v, 37);
        for (a, b) in v.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "{a} vs {b}");
        }
    }

    #[test]
    fn moments_match_a_plain_sum() {
        let v: Vec<f32> = (0..1001).map(|i| i as f32 * 0.5 - 100.0).collect();
        let (s, q) = moments(&v);
        let want_s: f64 = v.iter().map(|&x| x as f64).sum();
        let want_q: f64 = v.iter().map(|&x| x as f64 * x as f64).sum();
        assert!((s - want_s).abs() < 1e-9 && (q - want_q).abs() < 1e-6 * want_q);
    }
}
