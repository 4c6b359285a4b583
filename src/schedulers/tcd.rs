//! diffusers `TCDScheduler` (trajectory consistency distillation). The pipelines pass their `eta`
//! (0.0) as TCD's `gamma`, which makes every step deterministic: x₀ and ε re-noised to the next
//! timestep.

use super::consistency::{check_lcm, consistency_timesteps, x0_eps};
use super::custom::TimestepRequest;
use super::sigmas::{randn_like, StepIndex};
use super::{alphas_cumprod, mul_s, SchedulerConfig};
use crate::error::Result;
use crate::rng::Generator;
use candle_core::Tensor;

/// Strategic stochastic sampling of TCD.
pub struct TcdScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    /// diffusers' `num_inference_steps`: the last step (which adds no noise) is counted against it.
    num_inference_steps: usize,
    index: StepIndex,
    /// `gamma` (diffusers' `eta` argument of `step`); 0 in every diffusers pipeline call.
    pub eta: f32,
}

impl TcdScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        check_lcm(config, "TCDScheduler")?;
        Ok(Self {
            config: config.clone(),
            alphas_cumprod: alphas_cumprod(config)?,
            timesteps: Vec::new(),
            num_inference_steps: 0,
            index: StepIndex::default(),
            eta: 0.0,
        })
    }
}

impl super::Scheduler for TcdScheduler {
    fn class_name(&self) -> &'static str {
        "TCDScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.set_timesteps_with(&TimestepRequest::steps(n))
    }

    fn set_timesteps_with(&mut self, req: &TimestepRequest) -> Result<()> {
        (self.timesteps, self.num_inference_steps) =
            consistency_timesteps(&self.config, req, "TCDScheduler")?;
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
        let prev_t = self.timesteps.get(i + 1).map_or(0, |&p| p as i64);
        let s_t = ((1.0 - self.eta) * prev_t as f32).floor() as usize;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = self.alphas_cumprod[prev_t as usize];
        let a_s = self.alphas_cumprod[s_t];
        let (x0, eps) = x0_eps(&self.config.prediction_type, model_output, sample, a_t)?;
        let noised = (mul_s(&x0, a_s.sqrt())? + mul_s(&eps, (1.0 - a_s).sqrt())?)?;
        let prev = if self.eta > 0.0 && i + 1 != self.num_inference_steps {
            let noise = randn_like(model_output, rng)?;
            (mul_s(&noised, (a_prev / a_s).sqrt())? + mul_s(&noise, (1.0 - a_prev / a_s).sqrt())?)?
        } else {
            noised
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
