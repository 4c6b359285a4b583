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
    /// (a timestep outside the schedule means its last step: [`super::dpm_multistep::dpm_index`]).
    pub fn get_dpm(&mut self, timesteps: &[f64], t: f64) -> usize {
        let begin = self.begin;
        *self
            .step
            .get_or_insert_with(|| begin.unwrap_or_else(|| super::dpm_multistep::dpm_index(timesteps, t)))
    }

    /// [`Self::for_add_noise`] for the DPM family (see [`Self::get_dpm`]).
    pub fn for_add_noise_dpm(&self, timesteps: &[f64], t: f64) -> usize {
        match (self.begin, self.step) {
            (None, _) => super::dpm_multistep::dpm_index(timesteps, t),
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
