//! diffusers `KDPM2AncestralDiscreteScheduler` (A1111 "DPM2 a"): DPM-Solver-2 to `sigma_down`, then
//! fresh noise of size `sigma_up` after the second model call. `order() == 2`.

use super::common::check_kdpm2_prediction;
use super::sigmas::{self, interleave_tail, kdiff_init_noise_sigma, kdpm2_base, StepIndex};
use super::{alphas_cumprod, div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

/// Ancestral DPM-Solver-2.
pub struct Kdpm2AncestralDiscreteScheduler {
    config: SchedulerConfig,
    train_sigmas: Vec<f32>,
    kind: sigmas::SigmaKind,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    index: StepIndex,
    sample: Option<Tensor>,
}

impl Kdpm2AncestralDiscreteScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let kind = sigmas::sigma_kind(config, "KDPM2AncestralDiscreteScheduler")?;
        check_kdpm2_prediction(config, "KDPM2AncestralDiscreteScheduler")?;
        let ac = alphas_cumprod(config)?;
        Ok(Self {
            config: config.clone(),
            train_sigmas: sigmas::train_sigmas(&ac),
            kind,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            sigmas_interpol: Vec::new(),
            sigmas_up: Vec::new(),
            sigmas_down: Vec::new(),
            index: StepIndex::default(),
            sample: None,
        })
    }
}

fn interleaved(v: &[f32]) -> Vec<f32> {
    let mut out = interleave_tail(v);
    out.push(v[v.len() - 1]);
    out
}

impl super::Scheduler for Kdpm2AncestralDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        "KDPM2AncestralDiscreteScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let (ts, s) = kdpm2_base(&self.config, self.kind, &self.train_sigmas, n)?;
        let logs = sigmas::log_sigmas(&self.train_sigmas);
        let m = s.len();
        let next: Vec<f32> = (0..m).map(|i| if i + 1 < m { s[i + 1] } else { 0.0 }).collect();
        let up: Vec<f32> = (0..m)
            .map(|i| (next[i] * next[i] * (s[i] * s[i] - next[i] * next[i]) / (s[i] * s[i])).sqrt())
            .collect();
        let mut down: Vec<f32> = (0..m)
            .map(|i| (next[i] * next[i] - up[i] * up[i]).sqrt())
            .collect();
        down[m - 1] = 0.0;
        let mut interpol: Vec<f32> = (0..m)
            .map(|i| sigmas::lerp_half(s[i].ln(), down[i].ln()).exp())
            .collect();
        interpol[m - 2] = 0.0;
        interpol[m - 1] = 0.0;
        let ti: Vec<f64> = interpol
            .iter()
            .map(|&x| sigmas::sigma_to_t_f32(x, &logs) as f64)
            .collect();
        let mut timesteps = vec![ts[0]];
        for k in 1..ts.len() {
            timesteps.push(ti[k - 1]);
            timesteps.push(ts[k]);
        }
        self.timesteps = timesteps;
        self.sigmas = interleaved(&s);
        self.sigmas_interpol = interleaved(&interpol);
        self.sigmas_up = interleaved(&up);
        self.sigmas_down = interleaved(&down);
        self.index = StepIndex::default();
        self.sample = None;
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
        let sigma = if self.sample.is_none() {
            self.sigmas[i]
        } else {
            self.sigmas_interpol[i.saturating_sub(1)]
        };
        sigmas::scale_input(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        rng: &mut Generator,
    ) -> Result<Tensor> {
        let i = self.index.get(&self.timesteps, t)?;
        if i + 1 >= self.sigmas.len() || (self.sample.is_some() && i == 0) {
            return Err(Error::Internal(
                "KDPM2AncestralDiscreteScheduler stepped past its schedule".into(),
            ));
        }
        let first = self.sample.is_none();
        // diffusers reads `sigmas_down[step_index - 1]` in both halves (index -1 is the last entry).
        let down_i = if i == 0 { self.sigmas_down.len() - 1 } else { i - 1 };
        let (sigma, sigma_interpol, sigma_up, sigma_down) = if first {
            (
                self.sigmas[i],
                self.sigmas_interpol[i],
                self.sigmas_up[i],
                self.sigmas_down[down_i],
            )
        } else {
            (
                self.sigmas[i - 1],
                self.sigmas_interpol[i - 1],
                self.sigmas_up[i - 1],
                self.sigmas_down[down_i],
            )
        };
        let sigma_input = if first { sigma } else { sigma_interpol };
        let x0 = sigmas::pred_x0(&self.config.prediction_type, model_output, sample, sigma_input)?;
        let prev = if first {
            let derivative = div_s(&(sample - &x0)?, sigma)?;
            self.sample = Some(sample.clone());
            (sample + mul_s(&derivative, sigma_interpol - sigma)?)?
        } else {
            let derivative = div_s(&(sample - &x0)?, sigma_interpol)?;
            let start = self.sample.take().expect("second order");
            let prev = (start + mul_s(&derivative, sigma_down - sigma)?)?;
            let noise = sigmas::randn_like(model_output, rng)?;
            (prev + mul_s(&noise, sigma_up)?)?
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
