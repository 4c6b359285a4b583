//! diffusers `HeunDiscreteScheduler`: Heun's second-order method in sigma space. Each step takes two
//! model calls, so its timestep list repeats every timestep but the first (`order() == 2`).

use super::common::check_prediction;
use super::custom::{check_finite, Accepts, TimestepRequest};
use super::sigmas::{self, interleave_tail, kdiff_init_noise_sigma, StepIndex};
use super::{alphas_cumprod, div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

const CLASS: &str = "HeunDiscreteScheduler";

/// Heun (improved Euler) steps.
pub struct HeunDiscreteScheduler {
    config: SchedulerConfig,
    train_sigmas: Vec<f32>,
    kind: sigmas::SigmaKind,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    index: StepIndex,
    /// First-order half of the step in progress: derivative, dt and the sample it started from.
    pending: Option<(Tensor, f32, Tensor)>,
}

impl HeunDiscreteScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let kind = sigmas::sigma_kind(config, "HeunDiscreteScheduler")?;
        check_prediction(config, "HeunDiscreteScheduler")?;
        let ac = alphas_cumprod(config)?;
        Ok(Self {
            config: config.clone(),
            train_sigmas: sigmas::train_sigmas(&ac),
            kind,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            index: StepIndex::default(),
            pending: None,
        })
    }
}

impl super::Scheduler for HeunDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        "HeunDiscreteScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.set_timesteps_with(&TimestepRequest::steps(n))
    }

    fn set_timesteps_with(&mut self, req: &TimestepRequest) -> Result<()> {
        req.check_accepted(
            CLASS,
            Accepts {
                timesteps: true,
                ..Accepts::default()
            },
        )?;
        let bad = |m: &str| Err(Error::InvalidArgument(m.into()));
        let ts = match (req.num_inference_steps, req.timesteps) {
            (None, None) => {
                return bad("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.")
            }
            (Some(_), Some(_)) => {
                return bad("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
            }
            (None, Some(custom)) => {
                match self.kind {
                    sigmas::SigmaKind::Karras => {
                        return bad("Cannot use `timesteps` with `config.use_karras_sigmas = True`")
                    }
                    sigmas::SigmaKind::Exponential => {
                        return bad("Cannot set `timesteps` with `config.use_exponential_sigmas = True`.")
                    }
                    sigmas::SigmaKind::Plain => {}
                }
                check_finite("timesteps", custom)?;
                custom.iter().map(|&t| t as f32).collect()
            }
            (Some(n), None) => sigmas::kdiff_timesteps(&self.config, n)?,
        };
        let (s, ts) = sigmas::kdiff_sigmas(self.kind, &ts, &self.train_sigmas, None, None, false);
        let mut s: Vec<f32> = s.iter().map(|&v| v as f32).collect();
        s.push(0.0);
        // sigmas: [s0, s1, s1, …, s(n-1), s(n-1), 0]; timesteps: [t0, t1, t1, …, t(n-1), t(n-1)].
        let mut sig = interleave_tail(&s[..s.len() - 1]);
        sig.push(0.0);
        let ts: Vec<f64> = interleave_tail(&ts.iter().map(|&t| t as f32).collect::<Vec<_>>())
            .into_iter()
            .map(|t| t as f64)
            .collect();
        self.timesteps = ts;
        self.sigmas = sig;
        self.index = StepIndex::default();
        self.pending = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn order(&self) -> usize {
        2
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
        if i + 1 >= self.sigmas.len() || (self.pending.is_some() && i == 0) {
            return Err(Error::Internal(
                "HeunDiscreteScheduler stepped past its schedule".into(),
            ));
        }
        let first = self.pending.is_none();
        let (sigma, sigma_next) = if first {
            (self.sigmas[i], self.sigmas[i + 1])
        } else {
            (self.sigmas[i - 1], self.sigmas[i])
        };
        let sigma_input = if first { sigma } else { sigma_next };
        let mut x0 = sigmas::pred_x0(&self.config.prediction_type, model_output, sample, sigma_input)?;
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0 = x0.clamp(-r, r)?;
        }
        let prev = if first {
            let derivative = div_s(&(sample - &x0)?, sigma)?;
            let dt = sigma_next - sigma;
            let prev = (sample + mul_s(&derivative, dt)?)?;
            self.pending = Some((derivative, dt, sample.clone()));
            prev
        } else {
            let (prev_derivative, dt, start) = self.pending.take().expect("second order");
            let derivative = div_s(&(sample - &x0)?, sigma_next)?;
            let derivative = div_s(&(prev_derivative + derivative)?, 2.0)?;
            (start + mul_s(&derivative, dt)?)?
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
