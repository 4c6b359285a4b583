//! The sigma-space machinery shared by the k-diffusion-style schedulers (Euler, Euler ancestral, LMS,
//! Heun, KDPM2) and the DPM-Solver family: training sigmas, `np.interp`, the Karras / exponential
//! schedules, `_sigma_to_t`, and the step-index bookkeeping diffusers uses for img2img.
//!
//! diffusers builds these schedules with numpy in float64 from float32 training sigmas and stores the
//! result as float32; the helpers keep that split (f64 math, f32 storage) so schedules agree to the ulp.

use super::{arange_desc, linspace_f64, spacing_error, SchedulerConfig};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// `((1 - ᾱ) / ᾱ) ** 0.5` in float32, ascending timestep order.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// `np.log` of the float32 training sigmas (kept float32), with numpy's own float32 log.
pub(crate) fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|&s| super::numpy_log::log_f32(s)).collect()
}

/// `np.interp(x, arange(len(fp)), fp)` in float64.
pub(crate) fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    let (lo, hi) = (fp[j] as f64, fp[j + 1] as f64);
    if x == j as f64 {
        return lo;
    }
    (hi - lo) * (x - j as f64) + lo
}

/// Karras et al. (2022) schedule, `rho = 7`, in float64 (`_convert_to_karras`).
pub(crate) fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    linspace_f64(0.0, 1.0, n)
        .iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Log-uniform schedule (`_convert_to_exponential`).
pub(crate) fn exponential(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    linspace_f64(sigma_max.ln(), sigma_min.ln(), n)
        .iter()
        .map(|v| v.exp())
        .collect()
}

/// `_sigma_to_t`: the fractional training timestep whose log-sigma `sigma` interpolates to.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // argmax of the cumulative count of `log_sigma >= log_sigmas[i]`: the last such i (0 if none).
    let count = log_sigmas
        .iter()
        .filter(|&&l| log_sigma - l as f64 >= 0.0)
        .count();
    let mut low_idx = 0usize;
    if count > 0 {
        // the cumulative sum first reaches its maximum at the last true entry
        let mut seen = 0;
        for (i, &l) in log_sigmas.iter().enumerate() {
            if log_sigma - l as f64 >= 0.0 {
                seen += 1;
                if seen == count {
                    low_idx = i;
                    break;
                }
            }
        }
    }
    let low_idx = low_idx.min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Timesteps of the k-diffusion-style schedulers (Euler, LMS, Heun, KDPM2): float32 values, descending.
pub(crate) fn kdiff_timesteps(c: &SchedulerConfig, n: usize) -> Result<Vec<f32>> {
    let t = c.num_train_timesteps;
    check_steps(n, t)?;
    Ok(match c.timestep_spacing.as_str() {
        "linspace" => linspace_f64(0.0, (t - 1) as f64, n)
            .iter()
            .rev()
            .map(|&v| v as f32)
            .collect(),
        "leading" => (0..n)
            .rev()
            .map(|i| (i * (t / n)) as f32 + c.steps_offset as f32)
            .collect(),
        "trailing" => arange_desc(t as f64, t as f64 / n as f64)
            .iter()
            .map(|v| super::round_half_even(*v) as f32 - 1.0)
            .collect(),
        other => return Err(spacing_error(other)),
    })
}

pub(crate) fn check_steps(n: usize, t: usize) -> Result<()> {
    if n == 0 || n > t {
        return Err(Error::InvalidArgument(format!(
            "num_inference_steps {n} must be between 1 and the scheduler's num_train_timesteps {t}"
        )));
    }
    Ok(())
}

/// Which of karras / exponential / beta sigmas the config asks for (at most one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigmaKind {
    Plain,
    Karras,
    Exponential,
}

pub(crate) fn sigma_kind(c: &SchedulerConfig, class: &str) -> Result<SigmaKind> {
    let n = [c.use_karras_sigmas, c.use_exponential_sigmas, c.use_beta_sigmas]
        .iter()
        .filter(|b| **b)
        .count();
    if n > 1 {
        return Err(Error::InvalidModel(format!(
            "{class}: only one of `use_beta_sigmas`, `use_exponential_sigmas`, `use_karras_sigmas` can be used"
        )));
    }
    if c.use_beta_sigmas {
        return Err(Error::Unsupported(format!(
            "{class} with use_beta_sigmas (scipy's beta distribution) is not supported yet"
        )));
    }
    Ok(if c.use_karras_sigmas {
        SigmaKind::Karras
    } else if c.use_exponential_sigmas {
        SigmaKind::Exponential
    } else {
        SigmaKind::Plain
    })
}

/// Checks the options every VP-type sigma scheduler refuses.
pub(crate) fn refuse_flow(c: &SchedulerConfig, class: &str) -> Result<()> {
    if c.use_flow_sigmas {
        return Err(Error::Unsupported(format!(
            "{class} with use_flow_sigmas (flow-matching models) is not supported"
        )));
    }
    if c.thresholding {
        return Err(Error::Unsupported(format!(
            "{class} with thresholding (pixel-space models) is not supported"
        )));
    }
    Ok(())
}

/// The k-diffusion sigma schedule: `np.interp` of the training sigmas at `timesteps`, optionally
/// replaced by a Karras / exponential schedule between its ends (then the timesteps follow the sigmas
/// through `_sigma_to_t`, rounded when `round_t`). Returns float64 sigmas (without the final one) and
/// float64 timesteps.
pub(crate) fn kdiff_sigmas(
    kind: SigmaKind,
    timesteps: &[f32],
    train: &[f32],
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    round_t: bool,
) -> (Vec<f64>, Vec<f64>) {
    let n = timesteps.len();
    let sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t as f64, train)).collect();
    let lo = sigma_min.unwrap_or(sigmas[n - 1]);
    let hi = sigma_max.unwrap_or(sigmas[0]);
    let new = match kind {
        SigmaKind::Plain => return (sigmas, timesteps.iter().map(|&t| t as f64).collect()),
        SigmaKind::Karras => karras(lo, hi, n),
        SigmaKind::Exponential => exponential(lo, hi, n),
    };
    let logs = log_sigmas(train);
    let ts = new
        .iter()
        .map(|&s| {
            let t = sigma_to_t(s, &logs);
            if round_t {
                super::round_half_even(t)
            } else {
                t
            }
        })
        .collect();
    (new, ts)
}

/// diffusers' `index_for_timestep` for sigma schedulers: the position of `t` in the schedule, taking
/// the second match when it repeats (so an img2img start never skips a sigma).
pub(crate) fn index_for_timestep(timesteps: &[f64], t: f64) -> Option<usize> {
    let mut hits = timesteps
        .iter()
        .enumerate()
        .filter(|(_, &v)| v == t)
        .map(|(i, _)| i);
    let first = hits.next()?;
    Some(hits.next().unwrap_or(first))
}

/// `index_for_timestep` of the DPM-Solver family: the last index when `t` is not in the schedule.
pub(crate) fn dpm_index(timesteps: &[f64], t: f64) -> usize {
    index_for_timestep(timesteps, t).unwrap_or(timesteps.len().saturating_sub(1))
}

/// `_step_index` / `_begin_index` of diffusers' sigma schedulers.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepIndex {
    pub step: Option<usize>,
    pub begin: Option<usize>,
}

impl StepIndex {
    /// The current step index, initialised on first use from the begin index or the timestep.
    pub fn get(&mut self, timesteps: &[f64], t: f64) -> Result<usize> {
        if let Some(i) = self.step {
            return Ok(i);
        }
        let i = match self.begin {
            Some(b) => b,
            None => index_for_timestep(timesteps, t).ok_or_else(|| not_in_schedule(t))?,
        };
        self.step = Some(i);
        Ok(i)
    }

    /// [`Self::get`] for the DPM family (DPM-Solver, DEIS, UniPC), whose timestep lookup cannot fail
    /// (a timestep outside the schedule means its last step: [`dpm_index`]).
    pub fn get_dpm(&mut self, timesteps: &[f64], t: f64) -> usize {
        let begin = self.begin;
        *self
            .step
            .get_or_insert_with(|| begin.unwrap_or_else(|| dpm_index(timesteps, t)))
    }

    /// [`Self::for_add_noise`] for the DPM family (see [`Self::get_dpm`]).
    pub fn for_add_noise_dpm(&self, timesteps: &[f64], t: f64) -> usize {
        match (self.begin, self.step) {
            (None, _) => dpm_index(timesteps, t),
            (Some(_), Some(s)) => s,
            (Some(b), None) => b,
        }
    }

    /// The sigma index `add_noise` uses (diffusers: the timestep's index without a begin index; else
    /// the current step index, or the begin index before the first step).
    pub fn for_add_noise(&self, timesteps: &[f64], t: f64) -> Result<usize> {
        match (self.begin, self.step) {
            (None, _) => index_for_timestep(timesteps, t).ok_or_else(|| not_in_schedule(t)),
            (Some(_), Some(s)) => Ok(s),
            (Some(b), None) => Ok(b),
        }
    }

    pub fn advance(&mut self) {
        if let Some(i) = self.step.as_mut() {
            *i += 1;
        }
    }
}

fn not_in_schedule(t: f64) -> Error {
    Error::InvalidArgument(format!("timestep {t} is not in the scheduler's timesteps"))
}

/// `original + noise · sigma`.
pub(crate) fn add_noise_sigma(original: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    Ok((original + super::mul_s(noise, sigma)?)?)
}

/// `sample / (sigma² + 1) ** 0.5` (`scale_model_input` of the sigma schedulers).
pub(crate) fn scale_input(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    super::div_s(sample, (sigma * sigma + 1.0).sqrt())
}

/// x₀ from the model output at `sigma` (`epsilon`, `v_prediction`, `sample`), as the k-diffusion
/// schedulers compute it in float32.
pub(crate) fn pred_x0(
    prediction_type: &str,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    use super::{div_s, mul_s};
    Ok(match prediction_type {
        "epsilon" => (sample - mul_s(model_output, sigma)?)?,
        "v_prediction" => {
            let c = -sigma / (sigma * sigma + 1.0).sqrt();
            (mul_s(model_output, c)? + div_s(sample, sigma * sigma + 1.0)?)?
        }
        _ => model_output.clone(),
    })
}

/// Noise of `like`'s shape drawn from the run's generator (`randn_tensor(shape, generator)`).
pub(crate) fn randn_like(like: &Tensor, rng: &mut crate::rng::Generator) -> Result<Tensor> {
    Ok(
        Tensor::from_vec(rng.randn(like.elem_count())?, like.shape(), like.device())?
            .to_dtype(like.dtype())?,
    )
}

/// `_sigma_to_t` as KDPM2 calls it, on float32 torch tensors: every operation in float32.
pub(crate) fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f32 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let mut low_idx = 0usize;
    if count > 0 {
        let mut seen = 0;
        for (i, &l) in log_sigmas.iter().enumerate() {
            if log_sigma - l >= 0.0 {
                seen += 1;
                if seen == count {
                    low_idx = i;
                    break;
                }
            }
        }
    }
    let low_idx = low_idx.min(n - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f32 + w * high_idx as f32
}

/// torch's `start.lerp(end, 0.5)` (weight not "small": `end - (end - start) · 0.5`).
pub(crate) fn lerp_half(start: f32, end: f32) -> f32 {
    end - (end - start) * 0.5
}

/// `init_noise_sigma` of the k-diffusion schedulers: the largest sigma, or `sqrt(max² + 1)` under
/// "leading" spacing.
pub(crate) fn kdiff_init_noise_sigma(spacing: &str, sigmas: &[f32]) -> f64 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if matches!(spacing, "linspace" | "trailing") {
        max as f64
    } else {
        (max * max + 1.0).sqrt() as f64
    }
}

/// `[a0, a1, a1, a2, a2, …]`: every entry after the first twice (the second-order schedulers' lists,
/// `cat([v[:1], v[1:].repeat_interleave(2)])`).
pub(crate) fn interleave_tail<T: Copy>(v: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len() * 2);
    if let Some(first) = v.first() {
        out.push(*first);
    }
    for x in v.iter().skip(1) {
        out.push(*x);
        out.push(*x);
    }
    out
}

/// The float32 KDPM2 schedule pieces shared by KDPM2 and its ancestral variant: timesteps (f64 as
/// diffusers keeps them: float32 values, or float64 after Karras rounding) and sigmas with the final
/// zero.
pub(crate) fn kdpm2_base(
    c: &SchedulerConfig,
    kind: SigmaKind,
    train: &[f32],
    n: usize,
) -> Result<(Vec<f64>, Vec<f32>)> {
    let ts = kdiff_timesteps(c, n)?;
    let karras = kind == SigmaKind::Karras;
    let (s, ts64) = kdiff_sigmas(kind, &ts, train, None, None, karras);
    // float32 spaced timesteps, or the float64 ones that follow a Karras (rounded) or exponential schedule
    let ts = if kind == SigmaKind::Plain {
        ts.iter().map(|&t| t as f64).collect()
    } else {
        ts64
    };
    let mut s: Vec<f32> = s.iter().map(|&v| v as f32).collect();
    s.push(0.0);
    Ok((ts, s))
}

/// `_convert_to_beta` (Beta Sampling is All You Need, arXiv 2407.12173): sigmas at the quantiles
/// `scipy.stats.beta.ppf(1 − linspace(0, 1, n), alpha, beta)` between `sigma_min` and `sigma_max`,
/// float64.
pub(crate) fn beta_schedule(sigma_min: f64, sigma_max: f64, n: usize, alpha: f64, beta: f64) -> Vec<f64> {
    linspace_f64(0.0, 1.0, n)
        .iter()
        .map(|r| sigma_min + beta_ppf(1.0 - r, alpha, beta) * (sigma_max - sigma_min))
        .collect()
}

/// The inverse of the regularised incomplete beta function `I_x(a, b)` (scipy's `beta.ppf`), by
/// bisection: `I_x` is monotone in `x`, and halving [0, 1] until the midpoint stops moving pins the
/// quantile to the last bit of float64, far below the float32 the sigmas are kept in.
pub(crate) fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    loop {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            return mid;
        }
        if incomplete_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
}

/// The regularised incomplete beta function `I_x(a, b)` by its continued fraction (modified Lentz),
/// using the symmetry `I_x(a, b) = 1 − I_{1−x}(b, a)` where the fraction converges slowly.
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(1.0 - x, b, a);
    }
    let ln_front = a * x.ln() + b * (-x).ln_1p() - ln_beta(a, b);
    let tiny = 1e-300;
    let mut c = 1.0f64;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..10_000 {
        let m = m as f64;
        // even step
        let num = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 + num * d;
        d = if d.abs() < tiny { 1.0 / tiny } else { 1.0 / d };
        c = 1.0 + num / c;
        if c.abs() < tiny {
            c = tiny;
        }
        f *= d * c;
        // odd step
        let num = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 + num * d;
        d = if d.abs() < tiny { 1.0 / tiny } else { 1.0 / d };
        c = 1.0 + num / c;
        if c.abs() < tiny {
            c = tiny;
        }
        let delta = d * c;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    ln_front.exp() * f / a
}

/// `ln B(a, b)` through the Lanczos approximation of `ln Γ` (g = 7, 9 terms; ~1e-15 relative).
fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection: Γ(x)Γ(1−x) = π / sin(πx)
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut acc = COEF[0];
    for (i, c) in COEF.iter().enumerate().skip(1) {
        acc += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + acc.ln()
}

/// `_sigma_to_t` on a float32 numpy scalar (a user's custom sigma): numpy keeps the log, the
/// distances and the weight in float32, and only the final `(1 − w)·low + w·high` in float64 (float32
/// times the int64 indices).
pub(crate) fn sigma_to_t_np32(sigma: f32, log_sigmas: &[f32]) -> f64 {
    let log_sigma = super::numpy_log::log_f32(sigma.max(1e-10));
    let n = log_sigmas.len();
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) as f64 * low_idx as f64 + w as f64 * high_idx as f64
}
