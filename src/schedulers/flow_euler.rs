//! diffusers `FlowMatchEulerDiscreteScheduler` (SD3, FLUX and most flow-matching models): Euler steps
//! of the velocity field along `x_σ = (1 − σ)·x₀ + σ·noise`, with static or resolution-dependent
//! (`mu`) timestep shifting, custom sigmas / timesteps, and optional stochastic sampling.

use super::custom::{check_finite, Accepts, TimestepRequest};
use super::flow::{self, FlowSigmas, Schedule};
use super::sigmas::{self, randn_like, StepIndex};
use super::{lin2, linspace_f64, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

const CLASS: &str = "FlowMatchEulerDiscreteScheduler";

/// Flow-matching Euler.
pub struct FlowMatchEulerDiscreteScheduler {
    config: SchedulerConfig,
    kind: FlowSigmas,
    /// `sigma_min` / `sigma_max` of `__init__` (float32 values), the ends of the default schedule.
    sigma_min: f64,
    sigma_max: f64,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    index: StepIndex,
}

impl FlowMatchEulerDiscreteScheduler {
    /// Builds the scheduler from its config (diffusers `__init__`: checks the sigma options and computes
    /// the training sigmas whose ends bound the default schedule).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let kind = flow::flow_sigma_kind(config)?;
        let train = flow::train_sigmas(
            config.num_train_timesteps,
            config.shift,
            config.use_dynamic_shifting,
        );
        Ok(Self {
            config: config.clone(),
            kind,
            sigma_min: train[train.len() - 1] as f64,
            sigma_max: train[0] as f64,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            index: StepIndex::default(),
        })
    }

    /// diffusers' `scale_noise`, the flow-matching forward process for img2img and inpainting:
    /// `σ·noise + (1 − σ)·sample` at the sigma of `t` (or of the begin / current step, as
    /// [`super::Scheduler::add_noise`] picks it).
    pub fn scale_noise(&self, sample: &Tensor, t: f64, noise: &Tensor) -> Result<Tensor> {
        let i = self.index.for_add_noise(&self.timesteps, t)?;
        let sigma = self.sigmas[i];
        lin2(sigma, noise, 1.0 - sigma, sample)
    }
}

/// The length rules of diffusers' `set_timesteps`: custom lists must agree with each other and with
/// `num_inference_steps` when both are given; without it, their length is the step count.
fn step_count(req: &TimestepRequest) -> Result<usize> {
    if let (Some(s), Some(t)) = (req.sigmas, req.timesteps) {
        if s.len() != t.len() {
            return Err(Error::InvalidArgument(
                "`sigmas` and `timesteps` should have the same length".into(),
            ));
        }
    }
    let n = match req.num_inference_steps {
        Some(n) => {
            if req.sigmas.is_some_and(|s| s.len() != n) || req.timesteps.is_some_and(|t| t.len() != n) {
                return Err(Error::InvalidArgument(
                    "`sigmas` and `timesteps` should have the same length as num_inference_steps, if `num_inference_steps` is provided"
                        .into(),
                ));
            }
            n
        }
        None => match (req.sigmas, req.timesteps) {
            (Some(s), _) => s.len(),
            (None, Some(t)) => t.len(),
            (None, None) => {
                return Err(Error::InvalidArgument(format!(
                    "{CLASS}.set_timesteps needs num_inference_steps, sigmas or timesteps"
                )))
            }
        },
    };
    if n == 0 {
        return Err(Error::InvalidArgument(
            "num_inference_steps must be at least 1".into(),
        ));
    }
    Ok(n)
}

impl super::Scheduler for FlowMatchEulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.set_timesteps_with(&TimestepRequest::steps(n))
    }

    fn set_timesteps_with(&mut self, req: &TimestepRequest) -> Result<()> {
        req.check_accepted(
            CLASS,
            Accepts {
                timesteps: true,
                sigmas: true,
                mu: true,
                strength: false,
            },
        )?;
        let c = &self.config;
        if c.use_dynamic_shifting && req.mu.is_none() {
            return Err(Error::InvalidArgument(
                "`mu` must be passed when `use_dynamic_shifting` is set to be `True`".into(),
            ));
        }
        let n = step_count(req)?;
        if let Some(s) = req.sigmas {
            check_finite("sigmas", s)?;
        }
        if let Some(t) = req.timesteps {
            check_finite("timesteps", t)?;
        }
        if let Some(mu) = req.mu {
            if !mu.is_finite() {
                return Err(Error::InvalidArgument(format!("`mu` must be finite, not {mu}")));
            }
        }
        let n_train = c.num_train_timesteps as f64;
        // 1. The unshifted schedule: the user's (float32) or a linspace between the training ends.
        let given_ts: Option<Vec<f32>> = req.timesteps.map(|t| t.iter().map(|&v| v as f32).collect());
        let schedule = match (req.sigmas, &given_ts) {
            (Some(s), _) => Schedule::F32(s.iter().map(|&v| v as f32).collect()),
            (None, Some(t)) => Schedule::F32(t.iter().map(|&v| v / n_train as f32).collect()),
            (None, None) => Schedule::F64(
                linspace_f64(self.sigma_max * n_train, self.sigma_min * n_train, n)
                    .into_iter()
                    .map(|t| t / n_train)
                    .collect(),
            ),
        };
        // 2. Shift: resolution-dependent under dynamic shifting, else the static one. (The static
        //    shift was applied to the training sigmas already, so the default schedule is shifted
        //    twice, as in diffusers.)
        let schedule = match req.mu {
            Some(mu) if c.use_dynamic_shifting => schedule.time_shift(&c.time_shift_type, mu),
            _ => schedule.static_shift(c.shift),
        };
        // 3. Python's `if shift_terminal:` (0 and None both skip it).
        let schedule = match c.shift_terminal {
            Some(st) if st != 0.0 => schedule.stretch_to_terminal(st),
            _ => schedule,
        };
        // 4. A Karras / exponential / beta schedule between the shifted ends.
        let (lo, hi) = schedule.ends();
        let schedule = match self.kind {
            FlowSigmas::Shifted => schedule,
            FlowSigmas::Karras => Schedule::F64(sigmas::karras(lo, hi, n)),
            FlowSigmas::Exponential => Schedule::F64(sigmas::exponential(lo, hi, n)),
            FlowSigmas::Beta => Schedule::F64(sigmas::beta_schedule(lo, hi, n, 0.6, 0.6)),
        };
        let mut sig = schedule.into_f32();
        let n_f32 = c.num_train_timesteps as f32;
        let mut ts: Vec<f32> = match given_ts {
            Some(t) => t,
            None => sig.iter().map(|&s| s * n_f32).collect(),
        };
        // 5. Mochi's inverted sigmas end at 1; the timesteps follow the inverted sigmas.
        if c.invert_sigmas {
            sig.iter_mut().for_each(|s| *s = 1.0 - *s);
            ts = sig.iter().map(|&s| s * n_f32).collect();
            sig.push(1.0);
        } else {
            sig.push(0.0);
        }
        self.timesteps = ts.into_iter().map(f64::from).collect();
        self.sigmas = sig;
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
        if i + 1 >= self.sigmas.len() {
            return Err(Error::Internal(format!("{CLASS} stepped past its schedule")));
        }
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let prev = if self.config.stochastic_sampling {
            // x₀ re-noised to the next sigma with fresh noise: `randn_tensor(sample.shape, generator)`.
            let x0 = (sample - mul_s(model_output, sigma)?)?;
            let noise = randn_like(sample, rng)?;
            lin2(1.0 - next, &x0, next, &noise)?
        } else {
            (sample + mul_s(model_output, next - sigma)?)?
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
