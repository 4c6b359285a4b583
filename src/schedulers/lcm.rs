//! diffusers `LCMScheduler` (latent consistency models): each step predicts the clean latent through
//! the consistency boundary scalings and re-noises it to the next timestep with fresh noise.

use super::consistency::{check_lcm, consistency_timesteps, x0_eps};
use super::custom::TimestepRequest;
use super::sigmas::{randn_like, StepIndex};
use super::{alphas_cumprod, mul_s, SchedulerConfig};
use crate::error::Result;
use crate::rng::Generator;
use candle_core::Tensor;

/// Latent consistency sampling.
pub struct LcmScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    /// diffusers' `num_inference_steps`: the last step (which adds no noise) is counted against it.
    num_inference_steps: usize,
    index: StepIndex,
}

impl LcmScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        check_lcm(config, "LCMScheduler")?;
        Ok(Self {
            config: config.clone(),
            alphas_cumprod: alphas_cumprod(config)?,
            timesteps: Vec::new(),
            num_inference_steps: 0,
            index: StepIndex::default(),
        })
    }
}

impl super::Scheduler for LcmScheduler {
    fn class_name(&self) -> &'static str {
        "LCMScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.set_timesteps_with(&TimestepRequest::steps(n))
    }

    fn set_timesteps_with(&mut self, req: &TimestepRequest) -> Result<()> {
        (self.timesteps, self.num_inference_steps) =
            consistency_timesteps(&self.config, req, "LCMScheduler")?;
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
        let prev = if i + 1 != self.num_inference_steps {
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
