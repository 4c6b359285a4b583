//! diffusers `DPMSolverMultistepScheduler`: DPM-Solver++ 2M (the A1111 "DPM++ 2M"), its SDE variant,
//! orders 1–3, Karras / exponential / Lu sigmas.

use super::custom::{check_finite, to_int_timesteps, Accepts, TimestepRequest};
use super::dpm_common::{
    alpha_sigma, check_dpm_options, convert_model_output, dpm_add_noise, dpm_sigmas, dpm_timesteps,
    final_sigma, first_order_update, lambda, last_timestep, second_order_update,
};
use super::sigmas::{self, SigmaKind, StepIndex};
use super::{alphas_cumprod, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

const CLASS: &str = "DPMSolverMultistepScheduler";

/// DPM-Solver(++) multistep.
pub struct DpmSolverMultistepScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    train_sigmas: Vec<f32>,
    kind: SigmaKind,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    index: StepIndex,
    ready: bool,
}

impl DpmSolverMultistepScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let class = "DPMSolverMultistepScheduler";
        let kind = sigmas::sigma_kind(config, class)?;
        sigmas::refuse_flow(config, class)?;
        check_dpm_options(
            config,
            class,
            &["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"],
        )?;
        if !matches!(config.algorithm_type.as_str(), "dpmsolver++" | "sde-dpmsolver++")
            && config.final_sigmas_type == "zero"
        {
            return Err(Error::InvalidModel(format!(
                "`final_sigmas_type` zero is not supported for `algorithm_type` {}. Please choose `sigma_min` instead.",
                config.algorithm_type
            )));
        }
        let ac = alphas_cumprod(config)?;
        Ok(Self {
            config: config.clone(),
            train_sigmas: sigmas::train_sigmas(&ac),
            alphas_cumprod: ac,
            kind,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
            index: StepIndex::default(),
            ready: false,
        })
    }

    fn is_sde(&self) -> bool {
        self.config.algorithm_type.starts_with("sde-")
    }

    fn plus_plus(&self) -> bool {
        self.config.algorithm_type.ends_with("++")
    }

    /// `convert_model_output`: x₀ for DPM-Solver++, ε for DPM-Solver.
    fn convert(&self, model_output: &Tensor, sample: &Tensor, i: usize) -> Result<Tensor> {
        convert_model_output(
            &self.config.prediction_type,
            self.plus_plus(),
            model_output,
            sample,
            self.sigmas[i],
        )
    }

    fn first_order(&self, i: usize, m: &Tensor, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        first_order_update(
            &self.config.algorithm_type,
            self.sigmas[i + 1],
            self.sigmas[i],
            m,
            sample,
            noise,
        )
    }

    fn second_order(&self, i: usize, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].as_ref().expect("current output");
        let m1 = self.model_outputs[k - 2].as_ref().expect("previous output");
        let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
        let r0 = h_0 / h;
        let d0 = m0;
        let d1 = mul_s(&(m0 - m1)?, 1.0 / r0)?;
        second_order_update(
            &self.config.algorithm_type,
            self.config.solver_type == "heun",
            sample,
            (alpha_s0, sigma_s0),
            (alpha_t, sigma_t),
            h,
            d0,
            &d1,
            noise,
        )
    }

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
        let m0 = self.model_outputs[k - 1].as_ref().expect("output");
        let m1 = self.model_outputs[k - 2].as_ref().expect("output");
        let m2 = self.model_outputs[k - 3].as_ref().expect("output");
        let (h, h_0, h_1) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d0 = m0;
        let d1_0 = mul_s(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = mul_s(&(m1 - m2)?, 1.0 / r1)?;
        let diff = (&d1_0 - &d1_1)?;
        let d1 = (&d1_0 + mul_s(&diff, r0 / (r0 + r1))?)?;
        let d2 = mul_s(&diff, 1.0 / (r0 + r1))?;
        Ok(match (self.config.algorithm_type.as_str(), noise) {
            ("dpmsolver++", _) => {
                let e = (-h).exp() - 1.0;
                let a = (mul_s(sample, sigma_t / sigma_s0)? - mul_s(d0, alpha_t * e)?)?;
                let b = (a + mul_s(&d1, alpha_t * (e / h + 1.0))?)?;
                (b - mul_s(&d2, alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5))?)?
            }
            ("dpmsolver", _) => {
                let e = h.exp() - 1.0;
                let a = (mul_s(sample, alpha_t / alpha_s0)? - mul_s(d0, sigma_t * e)?)?;
                let b = (a - mul_s(&d1, sigma_t * (e / h - 1.0))?)?;
                (b - mul_s(&d2, sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5))?)?
            }
            ("sde-dpmsolver++", Some(noise)) => {
                let e2 = 1.0 - (-2.0 * h).exp();
                let a = (mul_s(sample, sigma_t / sigma_s0 * (-h).exp())? + mul_s(d0, alpha_t * e2)?)?;
                let b = (a + mul_s(&d1, alpha_t * (e2 / (-2.0 * h) + 1.0))?)?;
                let two_h = 2.0 * h;
                let c = (b + mul_s(
                    &d2,
                    alpha_t * ((1.0 - (-2.0 * h).exp() - 2.0 * h) / (two_h * two_h) - 0.5),
                )?)?;
                (c + mul_s(noise, sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())?)?
            }
            // diffusers has no third-order sde-dpmsolver update (it returns None there).
            _ => {
                return Err(Error::Unsupported(
                    "DPMSolverMultistepScheduler: third-order sde-dpmsolver is not defined by diffusers"
                        .into(),
                ))
            }
        })
    }
}

impl super::Scheduler for DpmSolverMultistepScheduler {
    fn class_name(&self) -> &'static str {
        "DPMSolverMultistepScheduler"
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
        let (ts, n) = match (req.num_inference_steps, req.timesteps) {
            (None, None) => return bad("Must pass exactly one of `num_inference_steps` or `timesteps`."),
            (Some(_), Some(_)) => {
                return bad("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
            }
            (None, Some(ts)) => {
                if self.kind == SigmaKind::Karras {
                    return bad("Cannot use `timesteps` with `config.use_karras_sigmas = True`");
                }
                if self.config.use_lu_lambdas {
                    return bad("Cannot use `timesteps` with `config.use_lu_lambdas = True`");
                }
                if self.kind == SigmaKind::Exponential {
                    return bad("Cannot set `timesteps` with `config.use_exponential_sigmas = True`.");
                }
                check_finite("timesteps", ts)?;
                (to_int_timesteps(ts)?, ts.len())
            }
            (Some(n), None) => {
                let last = last_timestep(&self.alphas_cumprod, self.config.lambda_min_clipped);
                (dpm_timesteps(&self.config, n, last)?, n)
            }
        };
        let (ts, s) = dpm_sigmas(
            &self.config,
            self.kind,
            self.config.use_lu_lambdas,
            ts,
            &self.train_sigmas,
            n,
        );
        let mut sig: Vec<f32> = s.iter().map(|&v| v as f32).collect();
        sig.push(final_sigma(&self.config, &self.train_sigmas));
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
        rng: &mut Generator,
    ) -> Result<Tensor> {
        if !self.ready {
            return Err(Error::Internal(
                "DPMSolverMultistepScheduler.step before set_timesteps".into(),
            ));
        }
        let i = self.index.get_dpm(&self.timesteps, t);
        let len = self.timesteps.len();
        if i >= len {
            return Err(Error::Internal(
                "DPMSolverMultistepScheduler stepped past its schedule".into(),
            ));
        }
        let c = &self.config;
        let lower_order_final = i == len - 1
            && (c.euler_at_final || (c.lower_order_final && len < 15) || c.final_sigmas_type == "zero");
        let lower_order_second = i + 2 == len && c.lower_order_final && len < 15;
        let m = self.convert(model_output, sample, i)?;
        self.model_outputs.rotate_left(1);
        let k = self.model_outputs.len();
        self.model_outputs[k - 1] = Some(m.clone());
        let noise = if self.is_sde() {
            Some(sigmas::randn_like(model_output, rng)?)
        } else {
            None
        };
        let prev = if c.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(i, &m, sample, noise.as_ref())?
        } else if c.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(i, sample, noise.as_ref())?
        } else {
            self.third_order(i, sample, noise.as_ref())?
        };
        if self.lower_order_nums < c.solver_order {
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
