//! `np.log` on float32 values, bit for bit. numpy (x86-64 builds with AVX2/AVX-512 dispatch) does not
//! call libm for float32 `log`: its SIMD loop evaluates a fixed rational approximation, which rounds
//! about one value in five one ulp away from the correctly rounded logf. diffusers takes the log of its
//! float32 training sigmas with numpy, and fractional timesteps (`_sigma_to_t` of Karras / exponential
//! schedules, KDPM2's midpoints) divide by differences of neighbouring log-sigmas, so that ulp moves a
//! timestep by up to ~1e-4. Evaluating numpy's formula makes those timesteps exact.
//!
//! The method (numpy `_core/src/umath/loops_exponent_log.dispatch.c.src`, `simd_log_FLOAT`): split
//! x = m·2^e with m in [½, 1); if m ≤ √½ take 2m and e-1 so m lies in (√½, √2]; with y = m - 1,
//! log x = e·ln 2 + P(y)/Q(y), P and Q of degree 5 evaluated by Horner with fused multiply-adds.

/// Coefficients of P, constant term first (numpy's `NPY_COEFF_P*_LOGf`, as float32 bit patterns).
const P: [u32; 6] = [
    0x0000_0000,
    0x3F80_0000,
    0x4007_361C,
    0x3FBD_70A9,
    0x3EC3_0333,
    0x3CD4_2BCD,
];
/// Coefficients of Q, constant term first (`NPY_COEFF_Q*_LOGf`).
const Q: [u32; 6] = [
    0x3F80_0000,
    0x4027_361C,
    0x401C_FE0D,
    0x3F7C_8AE4,
    0x3E1E_5BF3,
    0x3BC0_83DF,
];
/// `NPY_LOGE2f` and `NPY_SQRT1_2f`: float32 ln 2 and √½.
const LN_2: u32 = 0x3F31_7218;
const SQRT_HALF: u32 = 0x3F35_04F3;

/// Horner evaluation with fused multiply-adds, highest coefficient first, as numpy's loop does.
fn horner(coefficients: &[u32; 6], y: f32) -> f32 {
    coefficients[..5]
        .iter()
        .rev()
        .fold(f32::from_bits(coefficients[5]), |acc, &c| {
            acc.mul_add(y, f32::from_bits(c))
        })
}

/// `np.log(np.float32(x))`. Zero, negative, infinite and NaN inputs give what numpy gives (−inf, NaN,
/// +inf, NaN); subnormals are rescaled first, as numpy does.
pub(crate) fn log_f32(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x == f32::INFINITY {
        return x;
    }
    // numpy scales subnormals by 2^100 before reading the exponent field.
    let (x, bias) = if x < f32::MIN_POSITIVE {
        (x * f32::from_bits(0x7180_0000), 100.0)
    } else {
        (x, 0.0)
    };
    let bits = x.to_bits();
    let mut exponent = ((bits >> 23) as i32 - 126) as f32 - bias;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | (126 << 23));
    if m <= f32::from_bits(SQRT_HALF) {
        m = m + m;
        exponent -= 1.0;
    }
    let y = m - 1.0;
    let ratio = horner(&P, y) / horner(&Q, y);
    exponent.mul_add(f32::from_bits(LN_2), ratio)
}

#[cfg(test)]
mod tests {
    use super::log_f32;

    #[test]
    fn exact_where_numpy_is_exact_and_special_values() {
        assert_eq!(log_f32(1.0), 0.0);
        assert_eq!(log_f32(2.0), f32::from_bits(0x3F31_7218));
        assert_eq!(log_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(log_f32(f32::INFINITY), f32::INFINITY);
        assert!(log_f32(-1.0).is_nan() && log_f32(f32::NAN).is_nan());
    }

    #[test]
    fn matches_numpy_values() {
        // np.log(np.float32(x)) from numpy 2.4.6 (AVX-512 dispatch); the first four are one ulp below the
        // correctly rounded logf.
        for (x, want) in [
            (0x40D3_3E27u32, 0x3FF1_9222u32),
            (0x402C_20A9, 0x3F7D_463A),
            (0x3F4D_2C96, 0xBE62_A13F),
            (0x4060_0000, 0x3FA0_5A8A),
            (0x3A83_126F, 0xC0DD_0C55),
            (0x0DA2_4260, 0xC28A_27B5),
        ] {
            let got = log_f32(f32::from_bits(x));
            assert_eq!(got.to_bits(), want, "log({})", f32::from_bits(x));
        }
    }
}
