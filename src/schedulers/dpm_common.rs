//! The VP / log-SNR math the DPM-Solver family shares (DPM-Solver multistep and singlestep, DEIS,
//! UniPC): alpha/sigma/lambda of a sigma, the family's timestep and sigma schedules, the first- and
//! second-order DPM-Solver(++) updates, model-output conversion, option checks and `add_noise`.

use super::common::check_prediction;
use super::sigmas::{self, SigmaKind};
use super::{div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// `(alpha_t, sigma_t)` of a VP schedule at `sigma` (`_sigma_to_alpha_sigma_t`), float32.
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `log(alpha_t) - log(sigma_t)`, float32.
pub(crate) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// The last usable training timestep under `lambda_min_clipped` (diffusers clips the cosine schedule's
/// tail): `num_train_timesteps - searchsorted(flip(lambda_t), lambda_min_clipped)`.
pub(crate) fn last_timestep(ac: &[f32], lambda_min_clipped: f64) -> usize {
    let flipped: Vec<f32> = ac
        .iter()
        .rev()
        .map(|a| a.sqrt().ln() - (1.0 - a).sqrt().ln())
        .collect();
    let clipped = flipped
        .iter()
        .filter(|&&l| (l as f64) < lambda_min_clipped)
        .count();
    ac.len() - clipped
}

/// Integer timesteps of the DPM-Solver family for `n` steps (`n + 1` points, the last dropped).
pub(crate) fn dpm_timesteps(c: &SchedulerConfig, n: usize, last: usize) -> Result<Vec<i64>> {
    let t = c.num_train_timesteps;
    sigmas::check_steps(n, t)?;
    let ts: Vec<i64> = match c.timestep_spacing.as_str() {
        "linspace" => {
            let mut v: Vec<i64> = super::linspace_f64(0.0, last as f64 - 1.0, n + 1)
                .iter()
                .map(|v| super::round_half_even(*v) as i64)
                .collect();
            v.reverse();
            v.pop();
            v
        }
        "leading" => {
            let ratio = last / (n + 1);
            if ratio == 0 {
                // Every timestep would be `steps_offset`: diffusers steps past its sigmas (IndexError).
                return Err(Error::InvalidArgument(format!(
                    "num_inference_steps {n} is too many for \"leading\" spacing over {last} timesteps (the step \
                     ratio {last} // {} is 0; diffusers fails there with an IndexError): use at most {} steps, or \
                     timestep_spacing \"trailing\"",
                    n + 1,
                    last.saturating_sub(1)
                )));
            }
            let mut v: Vec<i64> = (0..=n)
                .map(|i| (i * ratio) as i64 + c.steps_offset as i64)
                .collect();
            v.reverse();
            v.pop();
            v
        }
        "trailing" => super::arange_desc(last as f64, t as f64 / n as f64)
            .iter()
            .map(|v| super::round_half_even(*v) as i64 - 1)
            .collect(),
        other => return Err(super::spacing_error(other)),
    };
    // Timesteps past the training range (999 "leading" steps with steps_offset 1 start at 1000) are
    // run as diffusers runs them: their sigmas clamp to the last one (`np.interp`), and the model sees the
    // timestep as it is. Negative ones never arise from a valid config.
    if let Some(bad) = ts.iter().find(|&&v| v < 0) {
        return Err(Error::InvalidModel(format!(
            "scheduler config: timestep {bad} for {n} steps is negative (check steps_offset)"
        )));
    }
    Ok(ts)
}

/// Sigma schedule of the DPM-Solver family for integer `timesteps`: `(timesteps, sigmas without the
/// final one, as f64)`. Karras / exponential / Lu schedules span the whole training range.
pub(crate) fn dpm_sigmas(
    c: &SchedulerConfig,
    kind: SigmaKind,
    lu: bool,
    timesteps: Vec<i64>,
    train: &[f32],
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let logs = sigmas::log_sigmas(train);
    let (lo, hi) = (train[0] as f64, train[train.len() - 1] as f64);
    let round = c.beta_schedule != "squaredcos_cap_v2";
    let from_sigmas = |s: Vec<f64>, round: bool| {
        let ts = s
            .iter()
            .map(|&x| {
                let t = sigmas::sigma_to_t(x, &logs);
                if round {
                    super::round_half_even(t)
                } else {
                    t.trunc()
                }
            })
            .collect();
        (ts, s)
    };
    if kind == SigmaKind::Karras {
        return from_sigmas(sigmas::karras(lo, hi, n), round);
    }
    if lu {
        let (lmin, lmax) = (logs[0] as f64, logs[logs.len() - 1] as f64);
        let lambdas = super::linspace_f64(0.0, 1.0, n)
            .iter()
            .map(|r| (lmax + r * (lmin - lmax)).exp())
            .collect();
        return from_sigmas(lambdas, round);
    }
    if kind == SigmaKind::Exponential {
        // Not rounded: the float timesteps are cast to int64 (truncation).
        return from_sigmas(sigmas::exponential(lo, hi, n), false);
    }
    let s = timesteps
        .iter()
        .map(|&t| sigmas::interp(t as f64, train))
        .collect();
    (timesteps.iter().map(|&t| t as f64).collect(), s)
}

/// The second-order DPM-Solver(++) update from `sample` at `(alpha_s, sigma_s)` to `(alpha_t, sigma_t)`
/// over the log-SNR step `h`, given the first-order term `d0` and the scaled difference `d1`: the formula
/// diffusers writes out in both the multistep and the singlestep schedulers (they differ only in which
/// point is `s` and which outputs make `d0`, `d1`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn second_order_update(
    algorithm_type: &str,
    heun: bool,
    sample: &Tensor,
    (alpha_s, sigma_s): (f32, f32),
    (alpha_t, sigma_t): (f32, f32),
    h: f32,
    d0: &Tensor,
    d1: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    Ok(match (algorithm_type, noise) {
        ("dpmsolver++", _) => {
            let e = (-h).exp() - 1.0;
            let a = (mul_s(sample, sigma_t / sigma_s)? - mul_s(d0, alpha_t * e)?)?;
            if heun {
                (a + mul_s(d1, alpha_t * (e / h + 1.0))?)?
            } else {
                (a - mul_s(d1, 0.5 * (alpha_t * e))?)?
            }
        }
        ("dpmsolver", _) => {
            let e = h.exp() - 1.0;
            let a = (mul_s(sample, alpha_t / alpha_s)? - mul_s(d0, sigma_t * e)?)?;
            if heun {
                (a - mul_s(d1, sigma_t * (e / h - 1.0))?)?
            } else {
                (a - mul_s(d1, 0.5 * (sigma_t * e))?)?
            }
        }
        ("sde-dpmsolver++", Some(noise)) => {
            let e2 = 1.0 - (-2.0 * h).exp();
            let a = (mul_s(sample, sigma_t / sigma_s * (-h).exp())? + mul_s(d0, alpha_t * e2)?)?;
            let b = if heun {
                (a + mul_s(d1, alpha_t * (e2 / (-2.0 * h) + 1.0))?)?
            } else {
                (a + mul_s(d1, 0.5 * (alpha_t * e2))?)?
            };
            (b + mul_s(noise, sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())?)?
        }
        (_, Some(noise)) => {
            let e = h.exp() - 1.0;
            let a = (mul_s(sample, alpha_t / alpha_s)? - mul_s(d0, 2.0 * (sigma_t * e))?)?;
            let b = if heun {
                (a - mul_s(d1, 2.0 * (sigma_t * (e / h - 1.0)))?)?
            } else {
                (a - mul_s(d1, sigma_t * e)?)?
            };
            (b + mul_s(noise, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())?)?
        }
        _ => return Err(Error::Internal("SDE step without noise".into())),
    })
}

/// `dpm_solver_first_order_update` from sigma `s` to sigma `t` (DPM-Solver multistep and singlestep;
/// DEIS's first-order step is the `dpmsolver` one). `m` is x₀ for the `++` algorithms, else ε.
pub(crate) fn first_order_update(
    algorithm_type: &str,
    sigma_t: f32,
    sigma_s: f32,
    m: &Tensor,
    sample: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let (alpha_t, sigma_t) = alpha_sigma(sigma_t);
    let (alpha_s, sigma_s) = alpha_sigma(sigma_s);
    let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
    Ok(match (algorithm_type, noise) {
        ("dpmsolver++", _) => (mul_s(sample, sigma_t / sigma_s)? - mul_s(m, alpha_t * ((-h).exp() - 1.0))?)?,
        ("dpmsolver", _) => (mul_s(sample, alpha_t / alpha_s)? - mul_s(m, sigma_t * (h.exp() - 1.0))?)?,
        ("sde-dpmsolver++", Some(noise)) => {
            let a = (mul_s(sample, sigma_t / sigma_s * (-h).exp())?
                + mul_s(m, alpha_t * (1.0 - (-2.0 * h).exp()))?)?;
            (a + mul_s(noise, sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())?)?
        }
        (_, Some(noise)) => {
            let a = (mul_s(sample, alpha_t / alpha_s)? - mul_s(m, 2.0 * (sigma_t * (h.exp() - 1.0)))?)?;
            (a + mul_s(noise, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())?)?
        }
        _ => return Err(Error::Internal("SDE step without noise".into())),
    })
}

/// Options shared by the DPM-Solver classes.
pub(crate) fn check_dpm_options(c: &SchedulerConfig, class: &str, algorithms: &[&str]) -> Result<()> {
    if !algorithms.contains(&c.algorithm_type.as_str()) {
        return Err(Error::InvalidModel(format!(
            "{class}: algorithm_type {:?} is not implemented; choose one of {}",
            c.algorithm_type,
            algorithms.join(", ")
        )));
    }
    if !matches!(c.solver_type.as_str(), "midpoint" | "heun") {
        return Err(Error::InvalidModel(format!(
            "{class}: solver_type {:?} must be 'midpoint' or 'heun'",
            c.solver_type
        )));
    }
    if !(1..=3).contains(&c.solver_order) {
        return Err(Error::InvalidModel(format!(
            "{class}: solver_order {} must be 1, 2 or 3",
            c.solver_order
        )));
    }
    if c.variance_type.is_some() {
        return Err(Error::Unsupported(format!(
            "{class} with variance_type {:?} (learned variance) is not supported",
            c.variance_type
        )));
    }
    check_prediction(c, class)?;
    if !matches!(c.final_sigmas_type.as_str(), "zero" | "sigma_min") {
        return Err(Error::InvalidModel(format!(
            "`final_sigmas_type` must be one of 'zero', or 'sigma_min', but got {}",
            c.final_sigmas_type
        )));
    }
    Ok(())
}

/// `convert_model_output` of the DPM-Solver family at `sigma`: x₀ (`data`) or ε.
pub(crate) fn convert_model_output(
    prediction_type: &str,
    data: bool,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    let (alpha_t, sigma_t) = alpha_sigma(sigma);
    Ok(match (data, prediction_type) {
        (true, "epsilon") => div_s(&(sample - mul_s(model_output, sigma_t)?)?, alpha_t)?,
        (true, "v_prediction") => (mul_s(sample, alpha_t)? - mul_s(model_output, sigma_t)?)?,
        (true, _) => model_output.clone(),
        (false, "epsilon") => model_output.clone(),
        (false, "v_prediction") => (mul_s(model_output, alpha_t)? + mul_s(sample, sigma_t)?)?,
        (false, _) => div_s(&(sample - mul_s(model_output, alpha_t)?)?, sigma_t)?,
    })
}

/// Final sigma: 0, or the first training sigma.
pub(crate) fn final_sigma(c: &SchedulerConfig, train: &[f32]) -> f32 {
    if c.final_sigmas_type == "sigma_min" {
        train[0]
    } else {
        0.0
    }
}

/// `add_noise` of the DPM family (DPM-Solver multistep and singlestep, DEIS, UniPC) at `sigma`:
/// `alpha · original + sigma_t · noise` in the VP parametrisation.
pub(crate) fn dpm_add_noise(sigma: f32, original: &Tensor, noise: &Tensor) -> Result<Tensor> {
    let (alpha_t, sigma_t) = alpha_sigma(sigma);
    Ok((mul_s(original, alpha_t)? + mul_s(noise, sigma_t)?)?)
}
