//! diffusers `LMSDiscreteScheduler`: linear multistep (up to 4th order) over sigma-space derivatives.

use super::common::check_prediction;
use super::sigmas::{self, kdiff_init_noise_sigma, StepIndex};
use super::{alphas_cumprod, div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

/// The order diffusers' pipelines step LMS with (`step(..., order=4)`).
const ORDER: usize = 4;

/// Linear multistep.
pub struct LmsDiscreteScheduler {
    config: SchedulerConfig,
    train_sigmas: Vec<f32>,
    kind: sigmas::SigmaKind,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    derivatives: Vec<Tensor>,
    index: StepIndex,
}

impl LmsDiscreteScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let kind = sigmas::sigma_kind(config, "LMSDiscreteScheduler")?;
        check_prediction(config, "LMSDiscreteScheduler")?;
        let ac = alphas_cumprod(config)?;
        Ok(Self {
            config: config.clone(),
            train_sigmas: sigmas::train_sigmas(&ac),
            kind,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            derivatives: Vec::new(),
            index: StepIndex::default(),
        })
    }

    /// `∫_{σ_t}^{σ_{t+1}} Π_{k≠j} (τ − σ_{t−k}) / (σ_{t−j} − σ_{t−k}) dτ` (diffusers integrates it with
    /// `scipy.integrate.quad`; the integrand is a polynomial of degree < 4, which 3-point Gauss-Legendre
    /// integrates exactly). The integrand is evaluated in float32 as diffusers' tensors do.
    fn coefficient(&self, order: usize, t: usize, j: usize) -> f64 {
        let s = &self.sigmas;
        let f = |tau: f64| -> f64 {
            let mut prod = 1.0f64;
            for k in 0..order {
                if k == j {
                    continue;
                }
                let num = tau as f32 - s[t - k];
                let den = s[t - j] - s[t - k];
                prod *= (num / den) as f64;
            }
            prod
        };
        let (a, b) = (s[t] as f64, s[t + 1] as f64);
        let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
        let x = (3.0f64 / 5.0).sqrt();
        half * (5.0 / 9.0 * f(mid - half * x) + 8.0 / 9.0 * f(mid) + 5.0 / 9.0 * f(mid + half * x))
    }
}

impl super::Scheduler for LmsDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        "LMSDiscreteScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let ts = sigmas::kdiff_timesteps(&self.config, n)?;
        let (s, ts) = sigmas::kdiff_sigmas(self.kind, &ts, &self.train_sigmas, None, None, false);
        let mut sig: Vec<f32> = s.iter().map(|&v| v as f32).collect();
        sig.push(0.0);
        self.timesteps = ts.iter().map(|&t| t as f32 as f64).collect();
        self.sigmas = sig;
        self.derivatives.clear();
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
        _rng: &mut Generator,
    ) -> Result<Tensor> {
        let i = self.index.get(&self.timesteps, t)?;
        if i + 1 >= self.sigmas.len() {
            return Err(Error::Internal(
                "LMSDiscreteScheduler stepped past its schedule".into(),
            ));
        }
        let sigma = self.sigmas[i];
        let x0 = sigmas::pred_x0(&self.config.prediction_type, model_output, sample, sigma)?;
        let derivative = div_s(&(sample - x0)?, sigma)?;
        self.derivatives.push(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(ORDER);
        // sum(coeff * derivative for coeff, derivative in zip(coeffs, reversed(derivatives)))
        let mut acc: Option<Tensor> = None;
        for (j, d) in (0..order).zip(self.derivatives.iter().rev()) {
            let term = mul_s(d, self.coefficient(order, i, j) as f32)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        let prev = match acc {
            Some(a) => (sample + a)?,
            None => sample.clone(),
        };
        self.index.advance();
        Ok(prev)
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
