//! diffusers `FlowMatchHeunDiscreteScheduler`: Heun's method on the flow-matching velocity field, two
//! model calls per step (timesteps after the first repeat, `order() == 2`); static shift only, no
//! custom schedules (its diffusers `set_timesteps` takes just the step count).

use super::flow;
use super::sigmas::{index_for_timestep, interleave_tail, StepIndex};
use super::{div_s, lin2, linspace_f64, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

const CLASS: &str = "FlowMatchHeunDiscreteScheduler";

/// Flow-matching Heun.
pub struct FlowMatchHeunDiscreteScheduler {
    config: SchedulerConfig,
    sigma_min: f64,
    sigma_max: f64,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    index: StepIndex,
    /// First-order half of the step in progress: derivative, dt and the sample it started from.
    pending: Option<(Tensor, f32, Tensor)>,
}

impl FlowMatchHeunDiscreteScheduler {
    /// Builds the scheduler from its config (only `num_train_timesteps` and `shift` matter).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        // Its __init__ takes only num_train_timesteps and shift: always the static shift.
        let train = flow::train_sigmas(config.num_train_timesteps, config.shift, false);
        Ok(Self {
            config: config.clone(),
            sigma_min: train[train.len() - 1] as f64,
            sigma_max: train[0] as f64,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            index: StepIndex::default(),
            pending: None,
        })
    }

    /// diffusers' `scale_noise`: `σ·noise + (1 − σ)·sample` at the current step's sigma, which, before
    /// the first step, is the begin index or `t`'s position. (diffusers also stores that position as
    /// the step index; every pipeline sets a begin index first, which the first step uses anyway.)
    pub fn scale_noise(&self, sample: &Tensor, t: f64, noise: &Tensor) -> Result<Tensor> {
        let i = match (self.index.step, self.index.begin) {
            (Some(s), _) => s,
            (None, Some(b)) => b,
            (None, None) => index_for_timestep(&self.timesteps, t).ok_or_else(|| {
                Error::InvalidArgument(format!("timestep {t} is not in the scheduler's timesteps"))
            })?,
        };
        let sigma = *self
            .sigmas
            .get(i)
            .ok_or_else(|| Error::InvalidArgument(format!("step index {i} is past the schedule")))?;
        lin2(sigma, noise, 1.0 - sigma, sample)
    }
}

impl super::Scheduler for FlowMatchHeunDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::InvalidArgument(
                "num_inference_steps must be at least 1".into(),
            ));
        }
        let n_train = self.config.num_train_timesteps as f64;
        let shift = self.config.shift;
        let s: Vec<f32> = linspace_f64(self.sigma_max * n_train, self.sigma_min * n_train, n)
            .into_iter()
            .map(|t| {
                let s = t / n_train;
                (shift * s / (1.0 + (shift - 1.0) * s)) as f32
            })
            .collect();
        let n_f32 = self.config.num_train_timesteps as f32;
        let ts: Vec<f32> = s.iter().map(|&v| v * n_f32).collect();
        // sigmas [s0, s1, s1, …, s(n-1), s(n-1), 0]; timesteps [t0, t1, t1, …, t(n-1), t(n-1)].
        let mut sig = interleave_tail(&s);
        sig.push(0.0);
        self.timesteps = interleave_tail(&ts).into_iter().map(f64::from).collect();
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

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        _rng: &mut Generator,
    ) -> Result<Tensor> {
        let i = self.index.get(&self.timesteps, t)?;
        if i + 1 >= self.sigmas.len() || (self.pending.is_some() && i == 0) {
            return Err(Error::Internal(format!("{CLASS} stepped past its schedule")));
        }
        // The pipelines' s_churn is 0, so gamma = 0: no churn noise and sigma_hat = sigma.
        let prev = match self.pending.take() {
            None => {
                let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
                let denoised = (sample - mul_s(model_output, sigma)?)?;
                let derivative = div_s(&(sample - denoised)?, sigma)?;
                let dt = next - sigma;
                let prev = (sample + mul_s(&derivative, dt)?)?;
                self.pending = Some((derivative, dt, sample.clone()));
                prev
            }
            Some((prev_derivative, dt, start)) => {
                let next = self.sigmas[i];
                let denoised = (sample - mul_s(model_output, next)?)?;
                let derivative = div_s(&(sample - denoised)?, next)?;
                let derivative = mul_s(&(prev_derivative + derivative)?, 0.5)?;
                (start + mul_s(&derivative, dt)?)?
            }
        };
        self.index.advance();
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        self.scale_noise(original, t, noise)
    }

    fn set_begin_index(&mut self, index: usize) {
        self.index.begin = Some(index);
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
