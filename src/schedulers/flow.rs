//! The flow-matching schedule math the FlowMatch schedulers share: the training sigmas of their
//! `__init__`, the static and resolution-dependent timestep shifts, the terminal stretch, and the
//! pipelines' `calculate_shift` (FLUX, SD3 with dynamic shifting).
//!
//! diffusers shifts a schedule computed from `num_inference_steps` in float64 (numpy), but a user's
//! `sigmas=` / `timesteps=` arrive as float32 arrays, which numpy keeps in float32 through arithmetic
//! with Python scalars; [`Schedule`] carries that split so both paths round as diffusers does.

use super::SchedulerConfig;
use crate::error::{Error, Result};

/// diffusers' `calculate_shift`: the `mu` of a FLUX-style resolution-dependent shift, linear in the
/// image's token count between (`base_seq_len`, `base_shift`) and (`max_seq_len`, `max_shift`).
/// The pipelines' defaults are 256, 4096, 0.5 and 1.15.
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: usize,
    max_seq_len: usize,
    base_shift: f64,
    max_shift: f64,
) -> f64 {
    // Python subtracts the integer lengths before the float division.
    let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

impl SchedulerConfig {
    /// [`calculate_shift`] with this config's `base_image_seq_len`, `max_image_seq_len`, `base_shift`
    /// and `max_shift`, as the FLUX pipelines read them (`config.get(key, default)`; a null shift
    /// takes the default too).
    pub fn flow_mu(&self, image_seq_len: usize) -> f64 {
        calculate_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            self.base_shift.unwrap_or(0.5),
            self.max_shift.unwrap_or(1.15),
        )
    }
}

/// The sigmas of a flow-matching `__init__`, descending: `linspace(1, N, N)[::-1] / N` in float32,
/// statically shifted (float32, the shift rounded to float32) unless `dynamic`.
pub(crate) fn train_sigmas(n_train: usize, shift: f64, dynamic: bool) -> Vec<f32> {
    let n = n_train as f32;
    (1..=n_train)
        .rev()
        .map(|k| {
            let s = k as f32 / n;
            if dynamic {
                s
            } else {
                shift as f32 * s / (1.0 + (shift - 1.0) as f32 * s)
            }
        })
        .collect()
}

/// A sigma schedule inside `set_timesteps`: float64 (from `num_inference_steps`) or float32 (from
/// the user's values).
#[derive(Debug, Clone)]
pub(crate) enum Schedule {
    F64(Vec<f64>),
    F32(Vec<f32>),
}

impl Schedule {
    fn map(self, f64_op: impl Fn(f64) -> f64, f32_op: impl Fn(f32) -> f32) -> Self {
        match self {
            Self::F64(v) => Self::F64(v.into_iter().map(f64_op).collect()),
            Self::F32(v) => Self::F32(v.into_iter().map(f32_op).collect()),
        }
    }

    /// `shift·σ / (1 + (shift − 1)·σ)`.
    pub fn static_shift(self, shift: f64) -> Self {
        let (a, b) = (shift as f32, (shift - 1.0) as f32);
        self.map(
            |s| shift * s / (1.0 + (shift - 1.0) * s),
            |s| a * s / (1.0 + b * s),
        )
    }

    /// `time_shift(mu, 1.0, σ)`: `e^mu / (e^mu + (1/σ − 1))` ("exponential") or
    /// `mu / (mu + (1/σ − 1))` ("linear"); the `** 1.0` of diffusers is exact.
    pub fn time_shift(self, kind: &str, mu: f64) -> Self {
        let m = if kind == "linear" { mu } else { mu.exp() };
        let m32 = m as f32;
        self.map(|s| m / (m + (1.0 / s - 1.0)), |s| m32 / (m32 + (1.0 / s - 1.0)))
    }

    /// `stretch_shift_to_terminal`: rescales `1 − σ` so that the last sigma becomes `terminal`.
    pub fn stretch_to_terminal(self, terminal: f64) -> Self {
        match self {
            Self::F64(v) => {
                let scale = (1.0 - v[v.len() - 1]) / (1.0 - terminal);
                Self::F64(v.into_iter().map(|s| 1.0 - (1.0 - s) / scale).collect())
            }
            Self::F32(v) => {
                let scale = (1.0 - v[v.len() - 1]) / (1.0 - terminal) as f32;
                Self::F32(v.into_iter().map(|s| 1.0 - (1.0 - s) / scale).collect())
            }
        }
    }

    /// `(in_sigmas[-1].item(), in_sigmas[0].item())`.
    pub fn ends(&self) -> (f64, f64) {
        match self {
            Self::F64(v) => (v[v.len() - 1], v[0]),
            Self::F32(v) => (v[v.len() - 1] as f64, v[0] as f64),
        }
    }

    /// `torch.from_numpy(sigmas).to(float32)`.
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            Self::F64(v) => v.into_iter().map(|s| s as f32).collect(),
            Self::F32(v) => v,
        }
    }
}

/// Which schedule replaces the shifted sigmas (at most one of the three flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowSigmas {
    Shifted,
    Karras,
    Exponential,
    Beta,
}

/// The flow-matching config checks of diffusers' `__init__`.
pub(crate) fn flow_sigma_kind(c: &SchedulerConfig) -> Result<FlowSigmas> {
    let n = [c.use_karras_sigmas, c.use_exponential_sigmas, c.use_beta_sigmas]
        .iter()
        .filter(|b| **b)
        .count();
    if n > 1 {
        return Err(Error::InvalidModel(
            "Only one of `config.use_beta_sigmas`, `config.use_exponential_sigmas`, `config.use_karras_sigmas` can be used."
                .into(),
        ));
    }
    if !matches!(c.time_shift_type.as_str(), "exponential" | "linear") {
        return Err(Error::InvalidModel(
            "`time_shift_type` must either be 'exponential' or 'linear'.".into(),
        ));
    }
    Ok(if c.use_karras_sigmas {
        FlowSigmas::Karras
    } else if c.use_exponential_sigmas {
        FlowSigmas::Exponential
    } else if c.use_beta_sigmas {
        FlowSigmas::Beta
    } else {
        FlowSigmas::Shifted
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calculate_shift_matches_the_flux_pipeline() {
        // Values diffusers' own calculate_shift prints: 1024² FLUX has 64·64 = 4096 tokens → 1.15.
        assert_eq!(calculate_shift(256, 256, 4096, 0.5, 1.15), 0.5);
        assert_eq!(calculate_shift(4096, 256, 4096, 0.5, 1.15), 1.15);
        assert_eq!(calculate_shift(1024, 256, 4096, 0.5, 1.15), 0.63);
        assert_eq!(calculate_shift(3600, 256, 4096, 0.5, 1.15), 1.0660416666666666);
    }

    #[test]
    fn init_sigmas_end_at_one_over_n() {
        let s = train_sigmas(1000, 1.0, false);
        assert_eq!((s[0], s[999]), (1.0, 0.001));
        let shifted = train_sigmas(1000, 3.0, false);
        assert_eq!(shifted[0], 1.0);
        assert!(shifted[999] > 0.002 && shifted[999] < 0.0031);
    }
}
