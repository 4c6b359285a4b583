//! diffusers `EulerDiscreteScheduler` (SDXL's default): sigma-space Euler steps.

use super::custom::{check_finite, Accepts, TimestepRequest};
use super::sigmas::SigmaKind;
use super::{alphas_cumprod, div_s, mul_s, spacing_error, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

const CLASS: &str = "EulerDiscreteScheduler";

/// Euler's method over the sigmas `sqrt((1-ᾱ)/ᾱ)`.
pub struct EulerDiscreteScheduler {
    config: SchedulerConfig,
    /// Training sigmas in ascending timestep order (float32 like diffusers).
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl EulerDiscreteScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if !matches!(
            config.prediction_type.as_str(),
            "epsilon" | "v_prediction" | "sample" | "original_sample"
        ) {
            return Err(Error::InvalidModel(format!(
                "EulerDiscreteScheduler prediction_type {:?} must be 'epsilon', 'v_prediction' or 'sample'",
                config.prediction_type
            )));
        }
        super::sigmas::sigma_kind(config, "EulerDiscreteScheduler")?;
        if config.interpolation_type != "linear" {
            return Err(Error::Unsupported(format!(
                "EulerDiscreteScheduler interpolation_type {:?} is not supported yet",
                config.interpolation_type
            )));
        }
        if config.timestep_type != "discrete" {
            return Err(Error::Unsupported(
                "EulerDiscreteScheduler continuous timesteps are not supported yet".into(),
            ));
        }
        let ac = alphas_cumprod(config)?;
        let train_sigmas = ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        Ok(Self {
            config: config.clone(),
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: None,
            begin_index: None,
        })
    }

    /// The timesteps of `timestep_spacing` for `n` steps, float32 descending.
    fn spaced_timesteps(&self, n: usize) -> Result<Vec<f32>> {
        let t = self.config.num_train_timesteps;
        if n == 0 || n > t {
            return Err(Error::InvalidArgument(format!(
                "num_inference_steps {n} must be between 1 and {t}"
            )));
        }
        Ok(match self.config.timestep_spacing.as_str() {
            "linspace" => {
                let mut v: Vec<f32> = super::linspace_f64(0.0, (t - 1) as f64, n)
                    .iter()
                    .map(|v| *v as f32)
                    .collect();
                v.reverse();
                v
            }
            "leading" => (0..n)
                .rev()
                .map(|i| (i * (t / n)) as f32 + self.config.steps_offset as f32)
                .collect(),
            "trailing" => super::arange_desc(t as f64, t as f64 / n as f64)
                .iter()
                .map(|v| super::round_half_even(*v) as f32 - 1.0)
                .collect(),
            other => return Err(spacing_error(other)),
        })
    }

    fn index_for_timestep(&self, t: f64) -> usize {
        // diffusers takes the second match when a timestep repeats, so img2img never skips a sigma.
        let hits: Vec<usize> = (0..self.timesteps.len())
            .filter(|&i| self.timesteps[i] == t)
            .collect();
        match hits.len() {
            0 => 0,
            1 => hits[0],
            _ => hits[1],
        }
    }

    fn ensure_step_index(&mut self, t: f64) -> usize {
        if let Some(i) = self.step_index {
            return i;
        }
        let i = self.begin_index.unwrap_or_else(|| self.index_for_timestep(t));
        self.step_index = Some(i);
        i
    }
}

impl super::Scheduler for EulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        "EulerDiscreteScheduler"
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
                mu: false,
                strength: false,
            },
        )?;
        let bad = |m: &str| Err(Error::InvalidArgument(m.into()));
        if req.timesteps.is_some() && req.sigmas.is_some() {
            return bad("Only one of `timesteps` or `sigmas` should be set.");
        }
        let custom = req.timesteps.is_some() || req.sigmas.is_some();
        match req.num_inference_steps {
            None if !custom => {
                return bad("Must pass exactly one of `num_inference_steps` or `timesteps` or `sigmas.")
            }
            Some(_) if custom => {
                return bad("Can only pass one of `num_inference_steps` or `timesteps` or `sigmas`.")
            }
            _ => {}
        }
        let kind = super::sigmas::sigma_kind(&self.config, CLASS)?;
        if req.timesteps.is_some() {
            match kind {
                SigmaKind::Karras => {
                    return bad("Cannot set `timesteps` with `config.use_karras_sigmas = True`.")
                }
                SigmaKind::Exponential => {
                    return bad("Cannot set `timesteps` with `config.use_exponential_sigmas = True`.")
                }
                SigmaKind::Plain => {}
            }
        }
        if let Some(custom_sigmas) = req.sigmas {
            // The user's sigmas are used as given, final sigma included; the timesteps follow them
            // through `_sigma_to_t`, in float32 as numpy computes it on float32 values.
            check_finite("sigmas", custom_sigmas)?;
            if custom_sigmas.len() < 2 {
                return bad("`sigmas` needs at least two values: one per step and the final sigma");
            }
            let sigmas: Vec<f32> = custom_sigmas.iter().map(|&s| s as f32).collect();
            let logs = super::sigmas::log_sigmas(&self.train_sigmas);
            self.timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| super::sigmas::sigma_to_t_np32(s, &logs) as f32 as f64)
                .collect();
            self.sigmas = sigmas;
            self.step_index = None;
            self.begin_index = None;
            return Ok(());
        }
        let ts: Vec<f32> = match (req.timesteps, req.num_inference_steps) {
            (Some(ts), _) => {
                check_finite("timesteps", ts)?;
                ts.iter().map(|&t| t as f32).collect()
            }
            (None, Some(n)) => self.spaced_timesteps(n)?,
            (None, None) => unreachable!("checked above"),
        };
        let (sigmas, ts) = super::sigmas::kdiff_sigmas(
            kind,
            &ts,
            &self.train_sigmas,
            self.config.sigma_min,
            self.config.sigma_max,
            false,
        );
        let mut sigmas: Vec<f32> = sigmas.iter().map(|&v| v as f32).collect();
        let last = match self.config.final_sigmas_type.as_str() {
            "zero" => 0.0,
            "sigma_min" => self.train_sigmas[0],
            other => {
                return Err(Error::InvalidModel(format!(
                    "final_sigmas_type {other:?} must be 'zero' or 'sigma_min'"
                )))
            }
        };
        sigmas.push(last);
        self.timesteps = ts.iter().map(|&v| v as f32 as f64).collect();
        self.sigmas = sigmas;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().copied().fold(0f32, f32::max);
        if matches!(self.config.timestep_spacing.as_str(), "linspace" | "trailing") {
            max as f64
        } else {
            (max * max + 1.0).sqrt() as f64
        }
    }

    fn scale_model_input(&mut self, sample: &Tensor, t: f64) -> Result<Tensor> {
        let i = self.ensure_step_index(t);
        let sigma = self.sigmas[i];
        div_s(sample, (sigma * sigma + 1.0).sqrt())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        _rng: &mut Generator,
    ) -> Result<Tensor> {
        let i = self.ensure_step_index(t);
        let sigma = self.sigmas[i];
        // s_churn is 0 in every pipeline call, so gamma = 0: no extra noise and sigma_hat = sigma.
        let sigma_hat = sigma;
        let x0 = match self.config.prediction_type.as_str() {
            "epsilon" => (sample - mul_s(model_output, sigma_hat)?)?,
            "v_prediction" => {
                let a = mul_s(model_output, -sigma / (sigma * sigma + 1.0).sqrt())?;
                (a + div_s(sample, sigma * sigma + 1.0)?)?
            }
            _ => model_output.clone(),
        };
        let derivative = div_s(&(sample - x0)?, sigma_hat)?;
        let dt = self.sigmas[i + 1] - sigma_hat;
        self.step_index = Some(i + 1);
        Ok((sample + mul_s(&derivative, dt)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        let i = match (self.begin_index, self.step_index) {
            (None, _) => self.index_for_timestep(t),
            (Some(_), Some(s)) => s,
            (Some(b), None) => b,
        };
        Ok((original + mul_s(noise, self.sigmas[i])?)?)
    }

    fn set_begin_index(&mut self, index: usize) {
        self.begin_index = Some(index);
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
