//! diffusers `LCMScheduler` (latent consistency models): each step predicts the clean latent through
//! the consistency boundary scalings and re-noises it to the next timestep with fresh noise.

use super::sigmas::{randn_like, StepIndex};
use super::{alphas_cumprod, div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

/// Latent consistency sampling.
pub struct LcmScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    index: StepIndex,
}

/// The LCM/TCD timesteps: `n` of the `original_inference_steps` "skipping" timesteps `k·i − 1`.
pub(crate) fn lcm_timesteps(c: &SchedulerConfig, n: usize, class: &str) -> Result<Vec<f64>> {
    let t = c.num_train_timesteps;
    let original = c.original_inference_steps;
    if original == 0 || original > t {
        return Err(Error::InvalidModel(format!(
            "{class}: original_inference_steps {original} must be between 1 and num_train_timesteps {t}"
        )));
    }
    let k = t / original;
    let origin: Vec<i64> = (1..=original).map(|i| (i * k) as i64 - 1).collect();
    if n == 0 || n > t {
        return Err(Error::InvalidArgument(format!(
            "num_inference_steps {n} must be between 1 and the scheduler's num_train_timesteps {t}"
        )));
    }
    if n > original || origin.len() / n < 1 {
        return Err(Error::InvalidArgument(format!(
            "{class}: num_inference_steps {n} cannot exceed original_inference_steps {original}"
        )));
    }
    let rev: Vec<i64> = origin.into_iter().rev().collect();
    let step = rev.len() as f64 / n as f64;
    Ok((0..n)
        .map(|i| rev[(i as f64 * step).floor() as usize] as f64)
        .collect())
}

/// `x₀` from the model output (`epsilon`, `sample`, `v_prediction`) with ᾱ_t in float32.
pub(crate) fn x0_eps(
    prediction_type: &str,
    model_output: &Tensor,
    sample: &Tensor,
    a_t: f32,
) -> Result<(Tensor, Tensor)> {
    let b_t = 1.0 - a_t;
    Ok(match prediction_type {
        "epsilon" => (
            div_s(&(sample - mul_s(model_output, b_t.sqrt())?)?, a_t.sqrt())?,
            model_output.clone(),
        ),
        "sample" => (
            model_output.clone(),
            div_s(&(sample - mul_s(model_output, a_t.sqrt())?)?, b_t.sqrt())?,
        ),
        _ => (
            (mul_s(sample, a_t.sqrt())? - mul_s(model_output, b_t.sqrt())?)?,
            (mul_s(model_output, a_t.sqrt())? + mul_s(sample, b_t.sqrt())?)?,
        ),
    })
}

pub(crate) fn check_lcm(c: &SchedulerConfig, class: &str) -> Result<()> {
    super::dpm_multistep::check_prediction(c, class)?;
    if c.thresholding {
        return Err(Error::Unsupported(format!(
            "{class} thresholding (pixel-space models) is not supported"
        )));
    }
    Ok(())
}

impl LcmScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        check_lcm(config, "LCMScheduler")?;
        Ok(Self {
            config: config.clone(),
            alphas_cumprod: alphas_cumprod(config)?,
            timesteps: Vec::new(),
            index: StepIndex::default(),
        })
    }
}

impl super::Scheduler for LcmScheduler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.timesteps = lcm_timesteps(&self.config, n, "LCMScheduler")?;
        self.index = StepIndex::default();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        rng: &mut Generator,
    ) -> Result<Tensor> {
        let i = self.index.get(&self.timesteps, t)?;
        let ti = t as usize;
        let prev_t = self.timesteps.get(i + 1).map_or(ti, |&p| p as usize);
        let a_t = self.alphas_cumprod[ti];
        let a_prev = self.alphas_cumprod[prev_t];
        // Consistency boundary scalings (sigma_data 0.5), float32 as on the int64 timestep tensor.
        let scaled = ti as f32 * self.config.timestep_scaling as f32;
        let c_skip = 0.25 * (1.0 / (scaled * scaled + 0.25));
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        let (mut x0, _) = x0_eps(&self.config.prediction_type, model_output, sample, a_t)?;
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0 = x0.clamp(-r, r)?;
        }
        let denoised = (mul_s(&x0, c_out)? + mul_s(sample, c_skip)?)?;
        let prev = if i + 1 != self.timesteps.len() {
            let noise = randn_like(model_output, rng)?;
            (mul_s(&denoised, a_prev.sqrt())? + mul_s(&noise, (1.0 - a_prev).sqrt())?)?
        } else {
            denoised
        };
        self.index.advance();
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        super::add_noise_alpha(&self.alphas_cumprod, original, noise, t)
    }

    fn set_begin_index(&mut self, index: usize) {
        self.index.begin = Some(index);
    }
}
