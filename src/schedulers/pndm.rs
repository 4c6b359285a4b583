//! diffusers `PNDMScheduler` (PLMS steps; the Runge-Kutta warm-up only when `skip_prk_steps` is false).

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
    ets: Vec<Tensor>,
    counter: usize,
    cur_sample: Option<Tensor>,
}

impl PndmScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if !config.skip_prk_steps {
            // Runge-Kutta warm-up steps are only used by the original DDPM-era checkpoints; refuse
            // rather than silently run PLMS from the start.
            return Err(Error::Unsupported(
                "PNDMScheduler with skip_prk_steps=false (Runge-Kutta warm-up) is not supported yet".into(),
            ));
        }
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
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
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

impl super::Scheduler for PndmScheduler {
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
        if let Some(bad) = base.iter().find(|&&v| v >= t as i64) {
            return Err(Error::InvalidModel(format!(
                "scheduler config: steps_offset {} puts timestep {bad} beyond num_train_timesteps {t} for {n} steps",
                self.config.steps_offset
            )));
        }
        // PLMS: all but the last, the second-to-last again, then the last; reversed. Hence the repeat.
        let mut plms: Vec<i64> = base[..n - 1].to_vec();
        if n >= 2 {
            plms.push(base[n - 2]);
        }
        plms.push(base[n - 1]);
        plms.reverse();
        self.timesteps = plms.into_iter().map(|v| v as f64).collect();
        self.num_inference_steps = n;
        self.ets.clear();
        self.counter = 0;
        self.cur_sample = None;
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
