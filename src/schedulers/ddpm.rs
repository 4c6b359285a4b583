//! diffusers `DDPMScheduler`: ancestral sampling of the original DDPM paper, over any subset of the
//! training timesteps, with its fixed variance choices.

use super::custom::{check_descending_train, to_int_timesteps, Accepts, TimestepRequest};
use super::sigmas::randn_like;
use super::{alphas_cumprod, div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

/// Denoising diffusion probabilistic models.
pub struct DdpmScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    variance_type: String,
    timesteps: Vec<f64>,
}

impl DdpmScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if !matches!(
            config.prediction_type.as_str(),
            "epsilon" | "v_prediction" | "sample"
        ) {
            return Err(Error::InvalidModel(format!(
                "DDPMScheduler prediction_type {:?} must be 'epsilon', 'sample' or 'v_prediction'",
                config.prediction_type
            )));
        }
        let variance_type = config
            .variance_type
            .clone()
            .unwrap_or_else(|| "fixed_small".into());
        if !matches!(
            variance_type.as_str(),
            "fixed_small" | "fixed_small_log" | "fixed_large" | "fixed_large_log"
        ) {
            return Err(Error::Unsupported(format!(
                "DDPMScheduler variance_type {variance_type:?} is not supported (learned variances need a \
                 UNet that predicts them)"
            )));
        }
        if config.thresholding {
            return Err(Error::Unsupported(
                "DDPMScheduler thresholding (pixel-space models) is not supported".into(),
            ));
        }
        Ok(Self {
            config: config.clone(),
            alphas_cumprod: alphas_cumprod(config)?,
            variance_type,
            timesteps: Vec::new(),
        })
    }

    /// The timestep after `t` in the schedule (-1 after the last).
    fn previous_timestep(&self, t: f64) -> i64 {
        match self.timesteps.iter().position(|&v| v == t) {
            Some(i) if i + 1 < self.timesteps.len() => self.timesteps[i + 1] as i64,
            Some(_) => -1,
            None => t as i64 - 1,
        }
    }

    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            1.0
        }
    }
}

impl super::Scheduler for DdpmScheduler {
    fn class_name(&self) -> &'static str {
        "DDPMScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.set_timesteps_with(&TimestepRequest::steps(n))
    }

    fn set_timesteps_with(&mut self, req: &TimestepRequest) -> Result<()> {
        req.check_accepted(
            "DDPMScheduler",
            Accepts {
                timesteps: true,
                ..Accepts::default()
            },
        )?;
        let ts = match (req.num_inference_steps, req.timesteps) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidArgument(
                    "Can only pass one of `num_inference_steps` or `custom_timesteps`.".into(),
                ))
            }
            (None, Some(ts)) => {
                check_descending_train(ts, self.config.num_train_timesteps)?;
                to_int_timesteps(ts)?
            }
            (Some(n), None) => super::discrete_timesteps(&self.config, n)?,
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "Must pass exactly one of `num_inference_steps` or `custom_timesteps`.".into(),
                ))
            }
        };
        self.timesteps = ts.into_iter().map(|v| v as f64).collect();
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
        let ti = t as i64;
        let a_t = self.alpha(ti);
        let a_prev = self.alpha(self.previous_timestep(t));
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let mut x0 = match self.config.prediction_type.as_str() {
            "epsilon" => div_s(&(sample - mul_s(model_output, b_t.sqrt())?)?, a_t.sqrt())?,
            "sample" => model_output.clone(),
            _ => (mul_s(sample, a_t.sqrt())? - mul_s(model_output, b_t.sqrt())?)?,
        };
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0 = x0.clamp(-r, r)?;
        }
        let x0_coeff = (a_prev.sqrt() * cur_beta) / b_t;
        let cur_coeff = cur_alpha.sqrt() * b_prev / b_t;
        let mut prev = (mul_s(&x0, x0_coeff)? + mul_s(sample, cur_coeff)?)?;
        if ti > 0 {
            let noise = randn_like(model_output, rng)?;
            let variance = (b_prev / b_t * cur_beta).max(1e-20);
            let scale = match self.variance_type.as_str() {
                "fixed_small" => variance.sqrt(),
                "fixed_small_log" => (0.5 * variance.ln()).exp(),
                "fixed_large" => cur_beta.sqrt(),
                // diffusers' "fixed_large_log" takes the square root of log(beta).
                _ => cur_beta.ln().sqrt(),
            };
            prev = (prev + mul_s(&noise, scale)?)?;
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        super::add_noise_alpha(&self.alphas_cumprod, original, noise, t)
    }
}
