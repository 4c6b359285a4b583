//! diffusers `PNDMScheduler`: PLMS steps, after a Runge-Kutta warm-up of 12 model calls when
//! `skip_prk_steps` is false.

use super::{alphas_cumprod, div_s, mul_s, spacing_error, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

/// Pseudo numerical methods for diffusion models (SD 1.x's default scheduler).
pub struct PndmScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    /// The Runge-Kutta warm-up's timesteps (empty with `skip_prk_steps`).
    prk_timesteps: Vec<i64>,
    ets: Vec<Tensor>,
    counter: usize,
    cur_sample: Option<Tensor>,
    /// The Runge-Kutta step's weighted sum of model outputs so far.
    cur_model_output: Option<Tensor>,
}

/// PNDM's method order: the Runge-Kutta warm-up covers the last four base timesteps.
const PNDM_ORDER: usize = 4;

impl PndmScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if config.prediction_type != "epsilon" && config.prediction_type != "v_prediction" {
            return Err(Error::InvalidModel(format!(
                "PNDMScheduler prediction_type {:?} must be 'epsilon' or 'v_prediction'",
                config.prediction_type
            )));
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
            prk_timesteps: Vec::new(),
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
            cur_model_output: None,
        })
    }

    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// Formula (9) of the PNDM paper, with diffusers' float32 coefficient arithmetic.
    fn prev_sample(&self, sample: &Tensor, t: i64, prev_t: i64, model_output: &Tensor) -> Result<Tensor> {
        let a_t = self.alpha(t);
        let a_prev = self.alpha(prev_t);
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let model_output = if self.config.prediction_type == "v_prediction" {
            (mul_s(model_output, a_t.sqrt())? + mul_s(sample, b_t.sqrt())?)?
        } else {
            model_output.clone()
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let direction = div_s(&mul_s(&model_output, a_prev - a_t)?, denom)?;
        Ok((mul_s(sample, sample_coeff)? - direction)?)
    }
}

impl PndmScheduler {
    /// One step of the Runge-Kutta warm-up (diffusers `step_prk`): four model calls per step, at t,
    /// t - ratio/2 (twice) and t - ratio, combined with weights 1/6, 1/3, 1/3, 1/6.
    fn step_prk(&mut self, model_output: &Tensor, timestep: i64, sample: &Tensor) -> Result<Tensor> {
        let half = (self.config.num_train_timesteps / self.num_inference_steps / 2) as i64;
        let diff_to_prev = if self.counter % 2 == 1 { 0 } else { half };
        let prev_t = timestep - diff_to_prev;
        let timestep = self.prk_timesteps[self.counter / 4 * 4];
        let add = |acc: Option<Tensor>, x: Tensor| -> Result<Tensor> {
            Ok(match acc {
                Some(a) => (a + x)?,
                None => x,
            })
        };
        let mut model_output = model_output.clone();
        match self.counter % 4 {
            0 => {
                let acc = self.cur_model_output.take();
                self.cur_model_output = Some(add(acc, mul_s(&model_output, (1.0f64 / 6.0) as f32)?)?);
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
            }
            1 | 2 => {
                let acc = self.cur_model_output.take();
                self.cur_model_output = Some(add(acc, mul_s(&model_output, (1.0f64 / 3.0) as f32)?)?);
            }
            _ => {
                let acc = self.cur_model_output.take();
                model_output = add(acc, mul_s(&model_output, (1.0f64 / 6.0) as f32)?)?;
            }
        }
        let cur_sample = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        let prev = self.prev_sample(&cur_sample, timestep, prev_t, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }
}

impl super::Scheduler for PndmScheduler {
    fn class_name(&self) -> &'static str {
        "PNDMScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let t = self.config.num_train_timesteps;
        if n == 0 || n > t {
            return Err(Error::InvalidArgument(format!(
                "num_inference_steps {n} must be between 1 and {t}"
            )));
        }
        // Ascending base timesteps, as diffusers builds `_timesteps`.
        let base: Vec<i64> = match self.config.timestep_spacing.as_str() {
            "linspace" => super::linspace_f64(0.0, (t - 1) as f64, n)
                .iter()
                .map(|v| super::round_half_even(*v) as i64)
                .collect(),
            "leading" => (0..n)
                .map(|i| (i * (t / n)) as i64 + self.config.steps_offset as i64)
                .collect(),
            "trailing" => {
                let mut v: Vec<i64> = super::arange_desc(t as f64, t as f64 / n as f64)
                    .iter()
                    .map(|v| super::round_half_even(*v) as i64 - 1)
                    .collect();
                v.reverse();
                v
            }
            other => return Err(spacing_error(other)),
        };
        if let Some(&bad) = base.iter().find(|&&v| v >= t as i64) {
            return Err(super::past_schedule(&self.config, n, bad));
        }
        let plms: Vec<i64> = if self.config.skip_prk_steps {
            // PLMS alone: all but the last, the second-to-last again, then the last; reversed.
            self.prk_timesteps.clear();
            let mut v: Vec<i64> = base[..n - 1].to_vec();
            if n >= 2 {
                v.push(base[n - 2]);
            }
            v.push(base[n - 1]);
            v.reverse();
            v
        } else {
            if n < PNDM_ORDER {
                // numpy cannot even broadcast diffusers' arrays for fewer steps.
                return Err(Error::InvalidArgument(format!(
                    "PNDMScheduler with skip_prk_steps=false needs at least {PNDM_ORDER} steps, not {n}"
                )));
            }
            // Runge-Kutta warm-up over the last four base timesteps, each with its half-step: the pairs
            // (t, t + ratio/2) without the final half-step, every value twice, first and last dropped,
            // reversed (12 timesteps); then PLMS over all but the last three, reversed.
            let half = (t / n / 2) as i64;
            let pairs: Vec<i64> = base[n - PNDM_ORDER..]
                .iter()
                .flat_map(|&v| [v, v + half])
                .collect();
            let doubled: Vec<i64> = pairs[..pairs.len() - 1].iter().flat_map(|&v| [v, v]).collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            self.prk_timesteps = prk;
            base[..n - 3].iter().rev().copied().collect()
        };
        self.timesteps = self
            .prk_timesteps
            .iter()
            .chain(&plms)
            .map(|&v| v as f64)
            .collect();
        self.num_inference_steps = n;
        self.ets.clear();
        self.counter = 0;
        self.cur_sample = None;
        self.cur_model_output = None;
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
        _rng: &mut Generator,
    ) -> Result<Tensor> {
        if self.num_inference_steps == 0 {
            return Err(Error::Internal("PNDMScheduler.step before set_timesteps".into()));
        }
        if self.counter < self.prk_timesteps.len() && !self.config.skip_prk_steps {
            return self.step_prk(model_output, t as i64, sample);
        }
        if !self.config.skip_prk_steps && self.ets.len() < 3 {
            return Err(Error::Internal(
                "PNDMScheduler: PLMS steps before the 12 Runge-Kutta warm-up steps".into(),
            ));
        }
        let ratio = (self.config.num_train_timesteps / self.num_inference_steps) as i64;
        let mut timestep = t as i64;
        let mut prev_t = timestep - ratio;
        if self.counter != 1 {
            // Keep only the last four outputs: the 4th-order formula never looks further back.
            if self.ets.len() == 4 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        } else {
            prev_t = timestep;
            timestep += ratio;
        }
        let e = &self.ets;
        let n = e.len();
        let mut sample = sample.clone();
        let combined = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output.clone()
        } else if n == 1 && self.counter == 1 {
            sample = self.cur_sample.take().unwrap_or(sample);
            div_s(&(model_output + &e[n - 1])?, 2.0)?
        } else if n == 2 {
            div_s(&(mul_s(&e[n - 1], 3.0)? - &e[n - 2])?, 2.0)?
        } else if n == 3 {
            let s = ((mul_s(&e[n - 1], 23.0)? - mul_s(&e[n - 2], 16.0)?)? + mul_s(&e[n - 3], 5.0)?)?;
            div_s(&s, 12.0)?
        } else {
            let s = (((mul_s(&e[n - 1], 55.0)? - mul_s(&e[n - 2], 59.0)?)? + mul_s(&e[n - 3], 37.0)?)?
                - mul_s(&e[n - 4], 9.0)?)?;
            mul_s(&s, 1.0 / 24.0)?
        };
        let prev = self.prev_sample(&sample, timestep, prev_t, &combined)?;
        self.counter += 1;
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        super::add_noise_alpha(&self.alphas_cumprod, original, noise, t)
    }
}
