//! diffusers `UniPCMultistepScheduler`: the UniPC predictor (UniP) with its corrector (UniC) applied
//! to the previous step once the new model output is known (`bh1` / `bh2`, orders 1–3).

use super::common::check_prediction;
use super::custom::{Accepts, TimestepRequest};
use super::dpm_common::{
    alpha_sigma, convert_model_output, dpm_add_noise, dpm_sigmas, dpm_timesteps, lambda,
};
use super::sigmas::{self, SigmaKind, StepIndex};
use super::{alphas_cumprod, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;

const CLASS: &str = "UniPCMultistepScheduler";

/// Unified predictor-corrector.
pub struct UniPcMultistepScheduler {
    config: SchedulerConfig,
    train_sigmas: Vec<f32>,
    kind: SigmaKind,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    this_order: usize,
    last_sample: Option<Tensor>,
    index: StepIndex,
    ready: bool,
}

impl UniPcMultistepScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let class = "UniPCMultistepScheduler";
        let kind = sigmas::sigma_kind(config, class)?;
        sigmas::refuse_flow(config, class)?;
        check_prediction(config, class)?;
        if !matches!(config.solver_type.as_str(), "bh1" | "bh2") {
            // diffusers maps the DPM-Solver names onto bh2.
            if !matches!(config.solver_type.as_str(), "midpoint" | "heun" | "logrho") {
                return Err(Error::InvalidModel(format!(
                    "{class}: solver_type {:?} must be 'bh1' or 'bh2'",
                    config.solver_type
                )));
            }
        }
        if !(1..=3).contains(&config.solver_order) {
            return Err(Error::InvalidModel(format!(
                "{class}: solver_order {} must be 1, 2 or 3",
                config.solver_order
            )));
        }
        if !matches!(config.final_sigmas_type.as_str(), "zero" | "sigma_min") {
            return Err(Error::InvalidModel(format!(
                "`final_sigmas_type` must be one of 'zero', or 'sigma_min', but got {}",
                config.final_sigmas_type
            )));
        }
        let ac = alphas_cumprod(config)?;
        Ok(Self {
            config: config.clone(),
            train_sigmas: sigmas::train_sigmas(&ac),
            kind,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
            this_order: 1,
            last_sample: None,
            index: StepIndex::default(),
            ready: false,
        })
    }

    /// `set_timesteps(n)` once the request is validated.
    fn set_steps(&mut self, n: usize) -> Result<()> {
        let t = self.config.num_train_timesteps;
        let ts = dpm_timesteps(&self.config, n, t)?;
        let (ts, s) = if self.kind == SigmaKind::Plain {
            dpm_sigmas(&self.config, self.kind, false, ts, &self.train_sigmas, n)
        } else {
            let lo = self.config.sigma_min.unwrap_or(self.train_sigmas[0] as f64);
            let hi = self.config.sigma_max.unwrap_or(self.train_sigmas[t - 1] as f64);
            let logs = sigmas::log_sigmas(&self.train_sigmas);
            let s = if self.kind == SigmaKind::Karras {
                sigmas::karras(lo, hi, n)
            } else {
                sigmas::exponential(lo, hi, n)
            };
            let ts = s
                .iter()
                .map(|&x| {
                    let t = sigmas::sigma_to_t(x, &logs);
                    if self.kind == SigmaKind::Karras {
                        super::round_half_even(t)
                    } else {
                        t.trunc()
                    }
                })
                .collect();
            (ts, s)
        };
        let last = match (self.config.final_sigmas_type.as_str(), self.kind) {
            ("zero", _) => 0.0,
            (_, SigmaKind::Plain) => self.train_sigmas[0],
            _ => s[s.len() - 1] as f32,
        };
        let mut sig: Vec<f32> = s.iter().map(|&v| v as f32).collect();
        sig.push(last);
        self.timesteps = ts;
        self.sigmas = sig;
        self.model_outputs = vec![None; self.config.solver_order];
        self.lower_order_nums = 0;
        self.last_sample = None;
        self.index = StepIndex::default();
        self.ready = true;
        Ok(())
    }

    fn bh1(&self) -> bool {
        self.config.solver_type == "bh1"
    }

    /// `(rks, b, h_phi_1, B_h, h)` of the UniPC update between sigma indices `s0` → `t`, with the earlier
    /// points `s0 - 1, s0 - 2, …` for `order - 1` history terms.
    fn coefficients(&self, t: usize, s0: usize, order: usize) -> (Vec<f32>, Vec<f32>, f32, f32) {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[t]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[s0]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let mut rks = Vec::new();
        for i in 1..order {
            let (a, s) = alpha_sigma(self.sigmas[s0 - i]);
            rks.push((lambda(a, s) - lambda_s0) / h);
        }
        rks.push(1.0);
        let hh = if self.config.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial: u64 = 1;
        let b_h = if self.bh1() { hh } else { hh.exp_m1() };
        let mut b = Vec::new();
        for i in 1..=order {
            b.push(h_phi_k * factorial as f32 / b_h);
            factorial *= i as u64 + 1;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        (rks, b, h_phi_1, b_h)
    }

    /// `x_t_` of both updates: `σ_t/σ_s0·x − α_t·hφ₁·m0` (data) or `α_t/α_s0·x − σ_t·hφ₁·m0` (noise).
    fn base(&self, t: usize, s0: usize, x: &Tensor, m0: &Tensor, h_phi_1: f32) -> Result<(Tensor, f32)> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[t]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[s0]);
        Ok(if self.config.predict_x0 {
            (
                (mul_s(x, sigma_t / sigma_s0)? - mul_s(m0, alpha_t * h_phi_1)?)?,
                alpha_t,
            )
        } else {
            (
                (mul_s(x, alpha_t / alpha_s0)? - mul_s(m0, sigma_t * h_phi_1)?)?,
                sigma_t,
            )
        })
    }

    fn predictor(&self, sample: &Tensor, order: usize) -> Result<Tensor> {
        let i0 = self.index.step.expect("step index");
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].as_ref().expect("output");
        let (rks, b, h_phi_1, b_h) = self.coefficients(i0 + 1, i0, order);
        let d1s: Vec<Tensor> = (1..order)
            .map(|i| {
                let mi = self.model_outputs[k - 1 - i].as_ref().expect("history");
                super::div_s(&(mi - m0)?, rks[i - 1])
            })
            .collect::<Result<_>>()?;
        let (x_t, scale) = self.base(i0 + 1, i0, sample, m0, h_phi_1)?;
        if d1s.is_empty() {
            // `x_t_ - alpha_t * B_h * 0`: NaN when B_h is infinite (bh1 at a zero final sigma), as in diffusers.
            let c = Tensor::new(scale * b_h * 0.0, x_t.device())?;
            return Ok(x_t.broadcast_sub(&c)?);
        }
        let rhos: Vec<f32> = if order == 2 {
            vec![0.5]
        } else {
            let r = r_matrix(&rks, order - 1);
            solve(r, b[..order - 1].to_vec())
        };
        let pred_res = weighted_sum(&rhos, &d1s)?;
        Ok((x_t - mul_s(&pred_res, scale * b_h)?)?)
    }

    fn corrector(&self, model_t: &Tensor, last_sample: &Tensor, order: usize) -> Result<Tensor> {
        let i0 = self.index.step.expect("step index");
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].as_ref().expect("output");
        let (rks, b, h_phi_1, b_h) = self.coefficients(i0, i0 - 1, order);
        let d1s: Vec<Tensor> = (1..order)
            .map(|i| {
                let mi = self.model_outputs[k - 1 - i].as_ref().expect("history");
                super::div_s(&(mi - m0)?, rks[i - 1])
            })
            .collect::<Result<_>>()?;
        let rhos: Vec<f32> = if order == 1 {
            vec![0.5]
        } else {
            solve(r_matrix(&rks, order), b)
        };
        let (x_t, scale) = self.base(i0, i0 - 1, last_sample, m0, h_phi_1)?;
        let d1_t = (model_t - m0)?;
        let last = mul_s(&d1_t, rhos[rhos.len() - 1])?;
        let inner = if d1s.is_empty() {
            last
        } else {
            (weighted_sum(&rhos[..rhos.len() - 1], &d1s)? + last)?
        };
        Ok((x_t - mul_s(&inner, scale * b_h)?)?)
    }
}

/// `R[i][j] = rks[j] ** i`, the leading `n × n` block.
fn r_matrix(rks: &[f32], n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| match i {
                    0 => 1.0,
                    1 => rks[j],
                    _ => rks[j].powi(i as i32),
                })
                .collect()
        })
        .collect()
}

/// `torch.linalg.solve` for the tiny float32 systems UniPC builds: LU with partial pivoting (LAPACK
/// `sgesv`'s algorithm, scaling by the pivot's reciprocal), then the two triangular solves.
pub(crate) fn solve(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Vec<f32> {
    let n = b.len();
    for k in 0..n {
        let p = (k..n)
            .max_by(|&i, &j| {
                a[i][k]
                    .abs()
                    .partial_cmp(&a[j][k].abs())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .unwrap_or(k);
        a.swap(k, p);
        b.swap(k, p);
        let inv = 1.0 / a[k][k];
        for i in k + 1..n {
            a[i][k] *= inv;
            for j in k + 1..n {
                a[i][j] -= a[i][k] * a[k][j];
            }
        }
    }
    for i in 0..n {
        for j in 0..i {
            b[i] -= a[i][j] * b[j];
        }
    }
    for i in (0..n).rev() {
        b[i] /= a[i][i];
        for j in 0..i {
            let v = b[i];
            b[j] -= v * a[j][i];
        }
    }
    b
}

/// `einsum("k,bkc...->bc...", w, stack(ts, 1))`.
fn weighted_sum(w: &[f32], ts: &[Tensor]) -> Result<Tensor> {
    let mut acc = mul_s(&ts[0], w[0])?;
    for (wk, t) in w.iter().zip(ts).skip(1) {
        acc = (acc + mul_s(t, *wk)?)?;
    }
    Ok(acc)
}

impl super::Scheduler for UniPcMultistepScheduler {
    fn class_name(&self) -> &'static str {
        "UniPCMultistepScheduler"
    }

    fn set_timesteps_with(&mut self, req: &TimestepRequest) -> Result<()> {
        req.check_accepted(
            CLASS,
            Accepts {
                timesteps: false,
                sigmas: true,
                mu: true,
                strength: false,
            },
        )?;
        if self.config.use_dynamic_shifting && req.mu.is_none() {
            return Err(Error::InvalidArgument(
                "`mu` must be passed when `use_dynamic_shifting` is set to be `True`".into(),
            ));
        }
        // Custom sigmas are only for flow sigmas, which this build refuses at construction; `mu` only
        // moves flow sigmas, so it changes nothing here.
        if req.sigmas.is_some() {
            return Err(Error::InvalidArgument(
                "Passing `sigmas` is only supported when `use_flow_sigmas=True`. Please set `use_flow_sigmas=True` during scheduler initialization.".into(),
            ));
        }
        let n = req.num_inference_steps.ok_or_else(|| {
            Error::InvalidArgument(format!("{CLASS}.set_timesteps needs num_inference_steps"))
        })?;
        self.set_steps(n)
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.set_timesteps_with(&TimestepRequest::steps(n))
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
            return Err(Error::Internal(
                "UniPCMultistepScheduler.step before set_timesteps".into(),
            ));
        }
        let i = self.index.get_dpm(&self.timesteps, t);
        if i >= self.timesteps.len() {
            return Err(Error::Internal(
                "UniPCMultistepScheduler stepped past its schedule".into(),
            ));
        }
        let use_corrector =
            i > 0 && !self.config.disable_corrector.contains(&(i - 1)) && self.last_sample.is_some();
        let converted = convert_model_output(
            &self.config.prediction_type,
            self.config.predict_x0,
            model_output,
            sample,
            self.sigmas[i],
        )?;
        let sample = if use_corrector {
            let last = self.last_sample.clone().expect("checked");
            self.corrector(&converted, &last, self.this_order)?
        } else {
            sample.clone()
        };
        self.model_outputs.rotate_left(1);
        let k = self.model_outputs.len();
        self.model_outputs[k - 1] = Some(converted);
        let order = if self.config.lower_order_final {
            self.config.solver_order.min(self.timesteps.len() - i)
        } else {
            self.config.solver_order
        };
        self.this_order = order.min(self.lower_order_nums + 1);
        self.last_sample = Some(sample.clone());
        let prev = self.predictor(&sample, self.this_order)?;
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
