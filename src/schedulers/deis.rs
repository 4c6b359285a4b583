//! diffusers `DEISMultistepScheduler`: DEIS (Zhang & Chen, arXiv 2204.13902) with the log-rho
//! polynomial extrapolation of the noise prediction, orders 1–3.
//!
//! The state is ε (converted through x₀ as diffusers does, which is not the identity in float32); the
//! update integrates the Lagrange polynomial through the last outputs in `rho = sigma / alpha`.

use super::common::check_prediction;
use super::custom::TimestepRequest;
use super::dpm_common::{
    alpha_sigma, convert_model_output, dpm_add_noise, dpm_timesteps, first_order_update,
};
use super::numpy_log::log_f32 as np_log;
use super::sigmas::{self, SigmaKind, StepIndex};
use super::{alphas_cumprod, div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

const CLASS: &str = "DEISMultistepScheduler";

/// DEIS multistep.
pub struct DeisMultistepScheduler {
    config: SchedulerConfig,
    train_sigmas: Vec<f32>,
    kind: SigmaKind,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    index: StepIndex,
    ready: bool,
}

impl DeisMultistepScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let kind = sigmas::sigma_kind(config, CLASS)?;
        sigmas::refuse_flow(config, CLASS)?;
        check_prediction(config, CLASS)?;
        let mut config = config.clone();
        // diffusers' __init__ accepts the DPM-Solver / UniPC names and records its own instead.
        match config.algorithm_type.as_str() {
            "deis" => {}
            "dpmsolver" | "dpmsolver++" => config.algorithm_type = "deis".into(),
            other => {
                return Err(Error::InvalidModel(format!(
                    "{CLASS}: algorithm_type {other:?} is not implemented; use 'deis'"
                )))
            }
        }
        match config.solver_type.as_str() {
            "logrho" => {}
            "midpoint" | "heun" | "bh1" | "bh2" => config.solver_type = "logrho".into(),
            other => {
                return Err(Error::InvalidModel(format!(
                    "{CLASS}: solver_type {other:?} is not implemented; use 'logrho'"
                )))
            }
        }
        // Orders above 3 keep a longer history but run the third-order update, as diffusers' do.
        if config.solver_order == 0 {
            return Err(Error::InvalidModel(format!(
                "{CLASS}: solver_order must be 1, 2 or 3, not 0"
            )));
        }
        let ac = alphas_cumprod(&config)?;
        Ok(Self {
            train_sigmas: sigmas::train_sigmas(&ac),
            kind,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
            index: StepIndex::default(),
            ready: false,
            config,
        })
    }

    /// `rho = sigma_t / alpha_t` at sigma index `i`.
    fn rho(&self, i: usize) -> f32 {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        sigma / alpha
    }

    /// `multistep_deis_second_order_update`.
    fn second_order(&self, i: usize, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, _) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, _) = alpha_sigma(self.sigmas[i]);
        let (rho_t, rho_s0, rho_s1) = (self.rho(i + 1), self.rho(i), self.rho(i - 1));
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].as_ref().expect("current output");
        let m1 = self.model_outputs[k - 2].as_ref().expect("previous output");
        // ∫ of the linear Lagrange basis polynomial through (b, c), evaluated at t.
        let ind = |t: f32, b: f32, c: f32| t * (-np_log(c) + np_log(t) - 1.0) / (np_log(b) - np_log(c));
        let coef1 = ind(rho_t, rho_s0, rho_s1) - ind(rho_s0, rho_s0, rho_s1);
        let coef2 = ind(rho_t, rho_s1, rho_s0) - ind(rho_s0, rho_s1, rho_s0);
        let inner = ((div_s(sample, alpha_s0)? + mul_s(m0, coef1)?)? + mul_s(m1, coef2)?)?;
        mul_s(&inner, alpha_t)
    }

    /// `multistep_deis_third_order_update`.
    fn third_order(&self, i: usize, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, _) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, _) = alpha_sigma(self.sigmas[i]);
        let rho_t = self.rho(i + 1);
        let (rho_s0, rho_s1, rho_s2) = (self.rho(i), self.rho(i - 1), self.rho(i - 2));
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].as_ref().expect("current output");
        let m1 = self.model_outputs[k - 2].as_ref().expect("previous output");
        let m2 = self.model_outputs[k - 3].as_ref().expect("previous output");
        // ∫ of the quadratic Lagrange basis polynomial through (b, c, d), in log rho, evaluated at t.
        let ind = |t: f32, b: f32, c: f32, d: f32| {
            let (lt, lb, lc, ld) = (np_log(t), np_log(b), np_log(c), np_log(d));
            let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
            numerator / ((lb - lc) * (lb - ld))
        };
        let coef1 = ind(rho_t, rho_s0, rho_s1, rho_s2) - ind(rho_s0, rho_s0, rho_s1, rho_s2);
        let coef2 = ind(rho_t, rho_s1, rho_s2, rho_s0) - ind(rho_s0, rho_s1, rho_s2, rho_s0);
        let coef3 = ind(rho_t, rho_s2, rho_s0, rho_s1) - ind(rho_s0, rho_s2, rho_s0, rho_s1);
        let inner =
            (((div_s(sample, alpha_s0)? + mul_s(m0, coef1)?)? + mul_s(m1, coef2)?)? + mul_s(m2, coef3)?)?;
        mul_s(&inner, alpha_t)
    }
}

impl super::Scheduler for DeisMultistepScheduler {
    fn class_name(&self) -> &'static str {
        "DEISMultistepScheduler"
    }

    fn set_timesteps_with(&mut self, req: &TimestepRequest) -> Result<()> {
        let n = req.plain_steps(CLASS, true)?;
        req.check_dpm_mu(CLASS, &self.config)?;
        self.set_timesteps(n)
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let t = self.config.num_train_timesteps;
        let ts = dpm_timesteps(&self.config, n, t)?;
        let train = &self.train_sigmas;
        let (ts, sig) = if self.kind == SigmaKind::Plain {
            let mut sig: Vec<f32> = ts
                .iter()
                .map(|&v| sigmas::interp(v as f64, train) as f32)
                .collect();
            sig.push(train[0]);
            (ts.iter().map(|&v| v as f64).collect(), sig)
        } else {
            let (lo, hi) = (train[0] as f64, train[t - 1] as f64);
            let logs = sigmas::log_sigmas(train);
            let karras = self.kind == SigmaKind::Karras;
            let s = if karras {
                sigmas::karras(lo, hi, n)
            } else {
                sigmas::exponential(lo, hi, n)
            };
            // Karras timesteps are rounded; exponential ones are cast to int64 (truncated).
            let ts = s
                .iter()
                .map(|&x| {
                    let v = sigmas::sigma_to_t(x, &logs);
                    if karras {
                        super::round_half_even(v)
                    } else {
                        v.trunc()
                    }
                })
                .collect();
            // These schedules end on their own smallest sigma, repeated, not on zero.
            let mut sig: Vec<f32> = s.iter().map(|&v| v as f32).collect();
            sig.push(sig[sig.len() - 1]);
            (ts, sig)
        };
        self.timesteps = ts;
        self.sigmas = sig;
        self.model_outputs = vec![None; self.config.solver_order];
        self.lower_order_nums = 0;
        self.index = StepIndex::default();
        self.ready = true;
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
        if !self.ready {
            return Err(Error::Internal(format!("{CLASS}.step before set_timesteps")));
        }
        let i = self.index.get_dpm(&self.timesteps, t);
        let len = self.timesteps.len();
        if i >= len {
            return Err(Error::Internal(format!("{CLASS} stepped past its schedule")));
        }
        let c = &self.config;
        let lower_order_final = i == len - 1 && c.lower_order_final && len < 15;
        let lower_order_second = i + 2 == len && c.lower_order_final && len < 15;
        // ε through x₀, as diffusers converts it.
        let x0 = convert_model_output(&c.prediction_type, true, model_output, sample, self.sigmas[i])?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        let eps = div_s(&(sample - mul_s(&x0, alpha_t)?)?, sigma_t)?;
        self.model_outputs.rotate_left(1);
        let k = self.model_outputs.len();
        self.model_outputs[k - 1] = Some(eps.clone());
        let prev = if c.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            first_order_update(
                "dpmsolver",
                self.sigmas[i + 1],
                self.sigmas[i],
                &eps,
                sample,
                None,
            )?
        } else if c.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(i, sample)?
        } else {
            self.third_order(i, sample)?
        };
        if self.lower_order_nums < self.config.solver_order {
            self.lower_order_nums += 1;
        }
        self.index.advance();
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor> {
        dpm_add_noise(
            self.sigmas[self.index.for_add_noise_dpm(&self.timesteps, t)],
            original,
            noise,
        )
    }

    fn set_begin_index(&mut self, index: usize) {
        self.index.begin = Some(index);
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }
}
