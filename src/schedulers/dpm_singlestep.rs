//! diffusers `DPMSolverSinglestepScheduler`: DPM-Solver(++) singlestep ("DPM++ 2S"/"3S"), orders 1–3,
//! with its SDE variant and Karras / exponential sigmas.
//!
//! Unlike the multistep solver, a k-th order step here reaches back to the sample taken k-1 steps ago
//! (the start of the current block in the order list `[1, 2, 3, 1, 2, 3, …]`) and integrates from
//! there with the model outputs gathered since, so the intermediate steps are stages of one update.

use super::custom::{check_finite, to_int_timesteps, Accepts, TimestepRequest};
use super::dpm_common::{
    alpha_sigma, check_dpm_options, convert_model_output, dpm_add_noise, final_sigma, first_order_update,
    lambda, last_timestep, second_order_update,
};
use super::sigmas::{self, SigmaKind, StepIndex};
use super::{alphas_cumprod, div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

const CLASS: &str = "DPMSolverSinglestepScheduler";

/// DPM-Solver(++) singlestep.
pub struct DpmSolverSinglestepScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    train_sigmas: Vec<f32>,
    kind: SigmaKind,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    model_outputs: Vec<Option<Tensor>>,
    /// The sample at the start of the current singlestep block (set on every first-order step).
    sample: Option<Tensor>,
    order_list: Vec<usize>,
    index: StepIndex,
    ready: bool,
}

impl DpmSolverSinglestepScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let kind = sigmas::sigma_kind(config, CLASS)?;
        sigmas::refuse_flow(config, CLASS)?;
        let mut config = config.clone();
        // diffusers' __init__ maps the names of sibling solvers onto its own (so a DEIS or UniPC
        // checkpoint config can be switched to this class) and records the change in the config.
        if config.algorithm_type == "deis" {
            config.algorithm_type = "dpmsolver++".into();
        }
        if matches!(config.solver_type.as_str(), "logrho" | "bh1" | "bh2") {
            config.solver_type = "midpoint".into();
        }
        check_dpm_options(&config, CLASS, &["dpmsolver", "dpmsolver++", "sde-dpmsolver++"])?;
        if config.algorithm_type == "dpmsolver" && config.final_sigmas_type == "zero" {
            return Err(Error::InvalidModel(format!(
                "`final_sigmas_type` zero is not supported for `algorithm_type` {}. Please choose `sigma_min` instead.",
                config.algorithm_type
            )));
        }
        let ac = alphas_cumprod(&config)?;
        Ok(Self {
            train_sigmas: sigmas::train_sigmas(&ac),
            alphas_cumprod: ac,
            kind,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; config.solver_order],
            sample: None,
            order_list: Vec::new(),
            index: StepIndex::default(),
            ready: false,
            config,
        })
    }

    fn plus_plus(&self) -> bool {
        self.config.algorithm_type.ends_with("++")
    }

    /// `get_order_list`: the solver order of each step. Blocks of `1, 2[, 3]`; with
    /// `lower_order_final` the tail is shortened so the last block ends on the last step.
    fn order_list(&self, steps: usize) -> Vec<usize> {
        let order = self.config.solver_order;
        let mut orders: Vec<usize> = match (self.config.lower_order_final, order) {
            (_, 1) => vec![1; steps],
            (true, 2) if steps.is_multiple_of(2) => {
                let mut v = [1, 2].repeat(steps / 2 - 1);
                v.extend([1, 1]);
                v
            }
            (true, 2) => {
                let mut v = [1, 2].repeat(steps / 2);
                v.push(1);
                v
            }
            (true, _) => match steps % 3 {
                0 => {
                    let mut v = [1, 2, 3].repeat(steps / 3 - 1);
                    v.extend([1, 2, 1]);
                    v
                }
                1 => {
                    let mut v = [1, 2, 3].repeat(steps / 3);
                    v.push(1);
                    v
                }
                _ => {
                    let mut v = [1, 2, 3].repeat(steps / 3);
                    v.extend([1, 2]);
                    v
                }
            },
            (false, 2) => [1, 2].repeat(steps / 2),
            (false, _) => [1, 2, 3].repeat(steps / 3),
        };
        if self.config.final_sigmas_type == "zero" {
            if let Some(last) = orders.last_mut() {
                *last = 1;
            }
        }
        orders
    }

    /// `singlestep_dpm_solver_second_order_update`: from the block's start `s1 = i - 1` to `i + 1`.
    fn second_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].as_ref().expect("current output");
        let m1 = self.model_outputs[k - 2].as_ref().expect("checked by the caller");
        let (h, h_0) = (lambda_t - lambda_s1, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d0 = m1;
        let d1 = mul_s(&(m0 - m1)?, 1.0 / r0)?;
        second_order_update(
            &self.config.algorithm_type,
            self.config.solver_type == "heun",
            sample,
            (alpha_s1, sigma_s1),
            (alpha_t, sigma_t),
            h,
            d0,
            &d1,
            noise,
        )
    }

    /// `singlestep_dpm_solver_third_order_update`: from the block's start `s2 = i - 2` to `i + 1`.
    fn third_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas[i - 2]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let lambda_s2 = lambda(alpha_s2, sigma_s2);
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].as_ref().expect("current output");
        let m1 = self.model_outputs[k - 2].as_ref().expect("checked by the caller");
        let m2 = self.model_outputs[k - 3].as_ref().expect("checked by the caller");
        let (h, h_0, h_1) = (lambda_t - lambda_s2, lambda_s0 - lambda_s2, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m2;
        let d1_0 = mul_s(&(m1 - m2)?, 1.0 / r1)?;
        let d1_1 = mul_s(&(m0 - m2)?, 1.0 / r0)?;
        let heun = self.config.solver_type == "heun";
        // D1 and D2 only enter the heun variant; midpoint uses D1_1 alone.
        let (d1, d2) = if heun {
            let d1 = div_s(&(mul_s(&d1_0, r0)? - mul_s(&d1_1, r1)?)?, r0 - r1)?;
            let d2 = div_s(&mul_s(&(&d1_1 - &d1_0)?, 2.0)?, r0 - r1)?;
            (d1, d2)
        } else {
            (d1_1.clone(), d1_1.clone())
        };
        Ok(match (self.config.algorithm_type.as_str(), noise) {
            ("dpmsolver++", _) => {
                let e = (-h).exp() - 1.0;
                let a = (mul_s(sample, sigma_t / sigma_s2)? - mul_s(d0, alpha_t * e)?)?;
                let b = (a + mul_s(&d1, alpha_t * (e / h + 1.0))?)?;
                if heun {
                    (b - mul_s(&d2, alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5))?)?
                } else {
                    b
                }
            }
            ("dpmsolver", _) => {
                let e = h.exp() - 1.0;
                let a = (mul_s(sample, alpha_t / alpha_s2)? - mul_s(d0, sigma_t * e)?)?;
                let b = (a - mul_s(&d1, sigma_t * (e / h - 1.0))?)?;
                if heun {
                    (b - mul_s(&d2, sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5))?)?
                } else {
                    b
                }
            }
            ("sde-dpmsolver++", Some(noise)) => {
                let e2 = 1.0 - (-2.0 * h).exp();
                let a = (mul_s(sample, sigma_t / sigma_s2 * (-h).exp())? + mul_s(d0, alpha_t * e2)?)?;
                let b = (a + mul_s(&d1, alpha_t * (e2 / (-2.0 * h) + 1.0))?)?;
                let c = if heun {
                    let m2h = -2.0 * h;
                    (b + mul_s(
                        &d2,
                        alpha_t * ((1.0 - (-2.0 * h).exp() + m2h) / (m2h * m2h) - 0.5),
                    )?)?
                } else {
                    b
                };
                (c + mul_s(noise, sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())?)?
            }
            _ => return Err(Error::Internal("SDE step without noise".into())),
        })
    }
}

impl super::Scheduler for DpmSolverSinglestepScheduler {
    fn class_name(&self) -> &'static str {
        "DPMSolverSinglestepScheduler"
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.set_timesteps_with(&TimestepRequest::steps(n))
    }

    fn set_timesteps_with(&mut self, req: &TimestepRequest) -> Result<()> {
        req.check_accepted(
            CLASS,
            Accepts {
                timesteps: true,
                sigmas: false,
                mu: true,
                strength: false,
            },
        )?;
        req.check_dpm_mu(CLASS, &self.config)?;
        let bad = |m: &str| Err(Error::InvalidArgument(m.into()));
        let t = self.config.num_train_timesteps;
        let (mut ts, n) = match (req.num_inference_steps, req.timesteps) {
            (None, None) | (Some(_), Some(_)) => {
                return bad("Must pass exactly one of  `num_inference_steps` or `timesteps`.")
            }
            (None, Some(custom)) => {
                match self.kind {
                    SigmaKind::Karras => {
                        return bad("Cannot use `timesteps` when `config.use_karras_sigmas=True`.")
                    }
                    SigmaKind::Exponential => {
                        return bad("Cannot set `timesteps` with `config.use_exponential_sigmas = True`.")
                    }
                    SigmaKind::Plain => {}
                }
                check_finite("timesteps", custom)?;
                let ts: Vec<f64> = to_int_timesteps(custom)?.into_iter().map(|v| v as f64).collect();
                (ts, custom.len())
            }
            (Some(n), None) => {
                sigmas::check_steps(n, t)?;
                // No `timestep_spacing` here: always linspace over the unclipped range.
                let last = last_timestep(&self.alphas_cumprod, self.config.lambda_min_clipped);
                let mut ts: Vec<f64> = super::linspace_f64(0.0, last as f64 - 1.0, n + 1)
                    .iter()
                    .rev()
                    .map(|v| super::round_half_even(*v))
                    .collect();
                ts.pop();
                (ts, n)
            }
        };
        let train = &self.train_sigmas;
        let s: Vec<f64> = if self.kind == SigmaKind::Plain {
            ts.iter().map(|&v| sigmas::interp(v, train)).collect()
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
            ts = s
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
            s
        };
        let mut sig: Vec<f32> = s.iter().map(|&v| v as f32).collect();
        sig.push(final_sigma(&self.config, train));
        // diffusers switches `lower_order_final` on (in the scheduler's config, so it stays on for later
        // calls) when the step count does not fill whole blocks or the last sigma is zero.
        if !self.config.lower_order_final
            && (!n.is_multiple_of(self.config.solver_order) || self.config.final_sigmas_type == "zero")
        {
            self.config.lower_order_final = true;
        }
        self.order_list = self.order_list(n);
        self.timesteps = ts;
        self.sigmas = sig;
        self.model_outputs = vec![None; self.config.solver_order];
        self.sample = None;
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
        rng: &mut Generator,
    ) -> Result<Tensor> {
        if !self.ready {
            return Err(Error::Internal(format!("{CLASS}.step before set_timesteps")));
        }
        let i = self.index.get_dpm(&self.timesteps, t);
        if i >= self.timesteps.len() {
            return Err(Error::Internal(format!("{CLASS} stepped past its schedule")));
        }
        let m = convert_model_output(
            &self.config.prediction_type,
            self.plus_plus(),
            model_output,
            sample,
            self.sigmas[i],
        )?;
        self.model_outputs.rotate_left(1);
        let k = self.model_outputs.len();
        self.model_outputs[k - 1] = Some(m);
        // Drawn on every step (before the order is known), as diffusers does.
        let noise = if self.config.algorithm_type == "sde-dpmsolver++" {
            Some(sigmas::randn_like(model_output, rng)?)
        } else {
            None
        };
        // An img2img start mid-block has no earlier outputs: fall back to the orders it has.
        let mut order = self.order_list.get(i).copied().unwrap_or(1);
        while order > 1 && self.model_outputs[k - order].is_none() {
            order -= 1;
        }
        if order == 1 {
            self.sample = Some(sample.clone());
        }
        let start = self
            .sample
            .as_ref()
            .ok_or_else(|| Error::Internal(format!("{CLASS}: no block start sample")))?;
        let prev = match order {
            1 => first_order_update(
                &self.config.algorithm_type,
                self.sigmas[i + 1],
                self.sigmas[i],
                self.model_outputs[k - 1].as_ref().expect("set above"),
                start,
                noise.as_ref(),
            )?,
            2 => self.second_order(i, start, noise.as_ref())?,
            _ => self.third_order(i, start, noise.as_ref())?,
        };
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
