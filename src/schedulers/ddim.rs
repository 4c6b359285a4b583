//! diffusers `DDIMScheduler` (deterministic at `eta = 0`, the pipelines' default).

use super::{alphas_cumprod, discrete_timesteps, div_s, lin2, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

/// Denoising diffusion implicit models.
pub struct DdimScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    /// Stochasticity; 0 in every diffusers pipeline unless the caller passes `eta`.
    pub eta: f32,
}

impl DdimScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if !matches!(
            config.prediction_type.as_str(),
            "epsilon" | "v_prediction" | "sample"
        ) {
            return Err(Error::InvalidModel(format!(
                "DDIMScheduler prediction_type {:?} must be 'epsilon', 'v_prediction' or 'sample'",
                config.prediction_type
            )));
        }
        if config.thresholding {
            return Err(Error::Unsupported(
                "DDIMScheduler thresholding is not supported yet".into(),
            ));
        }
        let alphas_cumprod = alphas_cumprod(config)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            config: config.clone(),
            alphas_cumprod,
            final_alpha_cumprod,
            num_inference_steps: 0,
            timesteps: Vec::new(),
            eta: 0.0,
        })
    }

    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }
}

impl super::Scheduler for DdimScheduler {
    fn class_name(&self) -> &'static str {
        "DDIMScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.timesteps = discrete_timesteps(&self.config, n)?
            .into_iter()
            .map(|v| v as f64)
            .collect();
        self.num_inference_steps = n;
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
        if self.num_inference_steps == 0 {
            return Err(Error::Internal("DDIMScheduler.step before set_timesteps".into()));
        }
        let timestep = t as i64;
        let prev_t = timestep - (self.config.num_train_timesteps / self.num_inference_steps) as i64;
        let a_t = self.alpha(timestep);
        let a_prev = self.alpha(prev_t);
        let b_t = 1.0 - a_t;
        let (mut x0, eps) = match self.config.prediction_type.as_str() {
            "epsilon" => {
                let x0 = div_s(&(sample - mul_s(model_output, b_t.sqrt())?)?, a_t.sqrt())?;
                (x0, model_output.clone())
            }
            "sample" => {
                let eps = div_s(&(sample - mul_s(model_output, a_t.sqrt())?)?, b_t.sqrt())?;
                (model_output.clone(), eps)
            }
            _ => {
                let x0 = (mul_s(sample, a_t.sqrt())? - mul_s(model_output, b_t.sqrt())?)?;
                let eps = lin2(a_t.sqrt(), model_output, b_t.sqrt(), sample)?;
                (x0, eps)
            }
        };
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0 = x0.clamp(-r, r)?;
        }
        let b_prev = 1.0 - a_prev;
        let variance = (b_prev / b_t) * (1.0 - a_t / a_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction = mul_s(&eps, (1.0 - a_prev - std_dev * std_dev).sqrt())?;
        let mut prev = (mul_s(&x0, a_prev.sqrt())? + direction)?;
        if self.eta > 0.0 {
            let noise = Tensor::from_vec(
                rng.randn(model_output.elem_count())?,
                model_output.shape(),
                model_output.device(),
            )?
            .to_dtype(model_output.dtype())?;
            prev = (prev + mul_s(&noise, std_dev)?)?;
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        super::add_noise_alpha(&self.alphas_cumprod, original, noise, t)
    }
}
