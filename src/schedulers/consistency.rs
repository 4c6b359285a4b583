//! What LCM and TCD share: the consistency models' "skipping" timesteps, x₀/ε from the model output
//! with ᾱ_t in float32, and their config checks.

use super::common::check_prediction;
use super::custom::{check_descending_train, to_int_timesteps, Accepts, TimestepRequest};
use super::{div_s, mul_s, SchedulerConfig};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// The LCM/TCD timesteps: `n` of the first `int(original_inference_steps · strength)` "skipping"
/// timesteps `k·i − 1`, evenly spaced by index from the top.
pub(crate) fn lcm_timesteps(c: &SchedulerConfig, n: usize, strength: f64, class: &str) -> Result<Vec<f64>> {
    let t = c.num_train_timesteps;
    let original = c.original_inference_steps;
    if original == 0 || original > t {
        return Err(Error::InvalidModel(format!(
            "{class}: original_inference_steps {original} must be between 1 and num_train_timesteps {t}"
        )));
    }
    let k = t / original;
    // Python's `int(original_steps * strength)`.
    let kept = (original as f64 * strength) as usize;
    let origin: Vec<i64> = (1..=kept).map(|i| (i * k) as i64 - 1).collect();
    if n == 0 || n > t {
        return Err(Error::InvalidArgument(format!(
            "num_inference_steps {n} must be between 1 and the scheduler's num_train_timesteps {t}"
        )));
    }
    if origin.len() / n < 1 {
        return Err(Error::InvalidArgument(format!(
            "The combination of `original_steps x strength`: {original} x {strength} is smaller than \
             `num_inference_steps`: {n}. Make sure to either reduce `num_inference_steps` to a value smaller \
             than {kept} or increase `strength` to a value higher than {}.",
            py_float(n as f64 / original as f64)
        )));
    }
    if n > original {
        return Err(Error::InvalidArgument(format!(
            "{class}: num_inference_steps {n} cannot exceed original_inference_steps {original}"
        )));
    }
    let rev: Vec<i64> = origin.into_iter().rev().collect();
    let step = rev.len() as f64 / n as f64;
    Ok((0..n)
        .map(|i| rev[(i as f64 * step).floor() as usize] as f64)
        .collect())
}

/// `x₀` from the model output (`epsilon`, `sample`, `v_prediction`) with ᾱ_t in float32.
pub(crate) fn x0_eps(
    prediction_type: &str,
    model_output: &Tensor,
    sample: &Tensor,
    a_t: f32,
) -> Result<(Tensor, Tensor)> {
    let b_t = 1.0 - a_t;
    Ok(match prediction_type {
        "epsilon" => (
            div_s(&(sample - mul_s(model_output, b_t.sqrt())?)?, a_t.sqrt())?,
            model_output.clone(),
        ),
        "sample" => (
            model_output.clone(),
            div_s(&(sample - mul_s(model_output, a_t.sqrt())?)?, b_t.sqrt())?,
        ),
        _ => (
            (mul_s(sample, a_t.sqrt())? - mul_s(model_output, b_t.sqrt())?)?,
            (mul_s(model_output, a_t.sqrt())? + mul_s(sample, b_t.sqrt())?)?,
        ),
    })
}

pub(crate) fn check_lcm(c: &SchedulerConfig, class: &str) -> Result<()> {
    check_prediction(c, class)?;
    if c.thresholding {
        return Err(Error::Unsupported(format!(
            "{class} thresholding (pixel-space models) is not supported"
        )));
    }
    Ok(())
}

/// `set_timesteps` of LCM and TCD (the pipelines' `strength` stays 1): the spaced timesteps for
/// `num_inference_steps`, or the user's integer timesteps after diffusers' checks. (diffusers only
/// warns when custom timesteps leave the distillation schedule.)
/// Returns the timesteps and diffusers' `num_inference_steps` (the full custom list's length when
/// strength shortened it: the steps' "last step" test counts against it).
pub(crate) fn consistency_timesteps(
    c: &SchedulerConfig,
    req: &TimestepRequest,
    class: &str,
) -> Result<(Vec<f64>, usize)> {
    req.check_accepted(
        class,
        Accepts {
            timesteps: true,
            strength: true,
            ..Accepts::default()
        },
    )?;
    let strength = req.strength.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::InvalidArgument(format!(
            "The value of strength should in [0.0, 1.0] but is {strength}"
        )));
    }
    match (req.num_inference_steps, req.timesteps) {
        (None, None) => Err(Error::InvalidArgument(
            "Must pass exactly one of `num_inference_steps` or `custom_timesteps`.".into(),
        )),
        (Some(_), Some(_)) => Err(Error::InvalidArgument(
            "Can only pass one of `num_inference_steps` or `custom_timesteps`.".into(),
        )),
        (Some(n), None) => Ok((lcm_timesteps(c, n, strength, class)?, n)),
        (None, Some(ts)) => {
            check_descending_train(ts, c.num_train_timesteps)?;
            let ts: Vec<f64> = to_int_timesteps(ts)?.into_iter().map(|t| t as f64).collect();
            // Strength as img2img's `get_timesteps` applies it, on the custom list.
            let n = ts.len();
            let init = ((n as f64 * strength) as usize).min(n);
            Ok((ts[n - init..].to_vec(), n))
        }
    }
}

/// Python's `str(float)` for the values these messages print (shortest round-trip, always a `.`).
fn py_float(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}
