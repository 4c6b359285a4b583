//! diffusers `KDPM2DiscreteScheduler` (k-diffusion's DPM-Solver-2, A1111 "DPM2"): a midpoint step in
//! log-sigma, two model calls per step (the second at an interpolated timestep), `order() == 2`.

use super::common::check_kdpm2_prediction;
use super::sigmas::{self, interleave_tail, kdiff_init_noise_sigma, kdpm2_base, StepIndex};
use super::{alphas_cumprod, div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

/// DPM-Solver-2 in sigma space.
pub struct Kdpm2DiscreteScheduler {
    config: SchedulerConfig,
    train_sigmas: Vec<f32>,
    kind: sigmas::SigmaKind,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    index: StepIndex,
    sample: Option<Tensor>,
}

impl Kdpm2DiscreteScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let kind = sigmas::sigma_kind(config, "KDPM2DiscreteScheduler")?;
        check_kdpm2_prediction(config, "KDPM2DiscreteScheduler")?;
        let ac = alphas_cumprod(config)?;
        Ok(Self {
            config: config.clone(),
            train_sigmas: sigmas::train_sigmas(&ac),
            kind,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            sigmas_interpol: Vec::new(),
            index: StepIndex::default(),
            sample: None,
        })
    }
}

impl super::Scheduler for Kdpm2DiscreteScheduler {
    fn class_name(&self) -> &'static str {
        "KDPM2DiscreteScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let (ts, s) = kdpm2_base(&self.config, self.kind, &self.train_sigmas, n)?;
        let logs = sigmas::log_sigmas(&self.train_sigmas);
        let m = s.len();
        // sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()
        let interpol: Vec<f32> = (0..m)
            .map(|i| sigmas::lerp_half(s[i].ln(), s[(i + m - 1) % m].ln()).exp())
            .collect();
        let mut sig = interleave_tail(&s);
        sig.push(s[m - 1]);
        let mut sip = interleave_tail(&interpol);
        sip.push(interpol[m - 1]);
        let ti: Vec<f64> = interpol
            .iter()
            .map(|&x| sigmas::sigma_to_t_f32(x, &logs) as f64)
            .map(|t| {
                if self.kind == sigmas::SigmaKind::Plain {
                    t as f32 as f64
                } else {
                    t
                }
            })
            .collect();
        let mut timesteps = vec![ts[0]];
        for k in 1..ts.len() {
            timesteps.push(ti[k]);
            timesteps.push(ts[k]);
        }
        self.timesteps = timesteps;
        self.sigmas = sig;
        self.sigmas_interpol = sip;
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
            self.sigmas_interpol[i]
        };
        sigmas::scale_input(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        _rng: &mut Generator,
    ) -> Result<Tensor> {
        let i = self.index.get(&self.timesteps, t)?;
        if i + 1 >= self.sigmas.len() || (self.sample.is_some() && i == 0) {
            return Err(Error::Internal(
                "KDPM2DiscreteScheduler stepped past its schedule".into(),
            ));
        }
        let first = self.sample.is_none();
        let (sigma, sigma_interpol, sigma_next) = if first {
            (self.sigmas[i], self.sigmas_interpol[i + 1], self.sigmas[i + 1])
        } else {
            (self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i])
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
            (start + mul_s(&derivative, sigma_next - sigma)?)?
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
