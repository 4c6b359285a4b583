//! diffusers `EulerAncestralDiscreteScheduler` (A1111 "Euler a"): an Euler step to `sigma_down`, then
//! fresh noise of size `sigma_up` from the run's generator.

use super::sigmas::{self, kdiff_init_noise_sigma, SigmaKind, StepIndex};
use super::{alphas_cumprod, div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

/// Ancestral sampling with Euler steps.
pub struct EulerAncestralDiscreteScheduler {
    config: SchedulerConfig,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    index: StepIndex,
}

impl EulerAncestralDiscreteScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if !matches!(config.prediction_type.as_str(), "epsilon" | "v_prediction") {
            return Err(Error::InvalidModel(format!(
                "EulerAncestralDiscreteScheduler prediction_type {:?} must be 'epsilon' or 'v_prediction'",
                config.prediction_type
            )));
        }
        let ac = alphas_cumprod(config)?;
        Ok(Self {
            config: config.clone(),
            train_sigmas: sigmas::train_sigmas(&ac),
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            index: StepIndex::default(),
        })
    }
}

impl super::Scheduler for EulerAncestralDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        "EulerAncestralDiscreteScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let ts = sigmas::kdiff_timesteps(&self.config, n)?;
        let (s, ts) = sigmas::kdiff_sigmas(SigmaKind::Plain, &ts, &self.train_sigmas, None, None, false);
        let mut sig: Vec<f32> = s.iter().map(|&v| v as f32).collect();
        sig.push(0.0);
        self.timesteps = ts;
        self.sigmas = sig;
        self.index = StepIndex::default();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        kdiff_init_noise_sigma(&self.config.timestep_spacing, &self.sigmas)
    }

    fn scale_model_input(&mut self, sample: &Tensor, t: f64) -> Result<Tensor> {
        let i = self.index.get(&self.timesteps, t)?;
        sigmas::scale_input(sample, self.sigmas[i])
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        rng: &mut Generator,
    ) -> Result<Tensor> {
        let i = self.index.get(&self.timesteps, t)?;
        let sigma = self.sigmas[i];
        let x0 = sigmas::pred_x0(&self.config.prediction_type, model_output, sample, sigma)?;
        let (from, to) = (sigma, self.sigmas[i + 1]);
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let derivative = div_s(&(sample - x0)?, sigma)?;
        let prev = (sample + mul_s(&derivative, sigma_down - sigma)?)?;
        let noise = sigmas::randn_like(model_output, rng)?;
        self.index.advance();
        Ok((prev + mul_s(&noise, sigma_up)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        let i = self.index.for_add_noise(&self.timesteps, t)?;
        sigmas::add_noise_sigma(original, noise, self.sigmas[i])
    }

    fn set_begin_index(&mut self, index: usize) {
        self.index.begin = Some(index);
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
