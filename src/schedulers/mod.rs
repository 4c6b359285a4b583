//! Noise schedulers built from `scheduler/scheduler_config.json`, faithful to diffusers 0.42 including its
//! float32 arithmetic (so trajectories match to float noise, not just in distribution).

mod classes;
mod common;
mod consistency;
mod custom;
mod ddim;
mod ddpm;
mod deis;
mod dpm_common;
mod dpm_multistep;
mod dpm_singlestep;
mod euler;
mod euler_ancestral;
mod flow;
mod flow_euler;
mod flow_heun;
mod heun;
mod kdpm2;
mod kdpm2_ancestral;
mod lcm;
mod lms;
mod numpy_log;
mod pndm;
mod select;
mod sigmas;
mod tcd;
mod unipc;

pub use classes::{ALIASES, SUPPORTED};
pub use custom::{retrieve_timesteps, Accepts, TimestepRequest};
pub use ddim::DdimScheduler;
pub use ddpm::DdpmScheduler;
pub use deis::DeisMultistepScheduler;
pub use dpm_multistep::DpmSolverMultistepScheduler;
pub use dpm_singlestep::DpmSolverSinglestepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;
pub use flow::calculate_shift;
pub use flow_euler::FlowMatchEulerDiscreteScheduler;
pub use flow_heun::FlowMatchHeunDiscreteScheduler;
pub use heun::HeunDiscreteScheduler;
pub use kdpm2::Kdpm2DiscreteScheduler;
pub use kdpm2_ancestral::Kdpm2AncestralDiscreteScheduler;
pub use lcm::LcmScheduler;
pub use lms::LmsDiscreteScheduler;
pub use pndm::PndmScheduler;
pub(crate) use select::caller_error;
pub use select::{aliases, class_keys, python_json, select};
pub use tcd::TcdScheduler;
pub use unipc::UniPcMultistepScheduler;

use crate::error::{Error, Result};
use crate::rng::Generator;
use candle_core::Tensor;
use serde::Deserialize;

/// Largest `num_train_timesteps` accepted (diffusers' schedulers use 1000).
const MAX_TRAIN_TIMESTEPS: usize = 1 << 20;

fn default_train() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_schedule() -> String {
    "linear".into()
}
fn default_prediction() -> String {
    "epsilon".into()
}
fn default_spacing() -> String {
    "leading".into()
}
fn default_interp() -> String {
    "linear".into()
}
fn default_final_sigmas() -> String {
    "zero".into()
}
fn default_timestep_type() -> String {
    "discrete".into()
}
fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// Every key the supported schedulers read. [`SchedulerConfig::from_json`] fills absent keys with the
/// defaults of the config's own class (diffusers' `__init__` defaults, see `select.rs`); the serde
/// defaults below only matter for keys the class does not take, which it never reads.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    #[serde(default = "default_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_schedule")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    #[serde(default = "default_spacing")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    #[serde(default)]
    pub skip_prk_steps: bool,
    #[serde(default = "yes")]
    pub clip_sample: bool,
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default = "default_threshold_ratio")]
    pub dynamic_thresholding_ratio: f64,
    #[serde(default = "one")]
    pub sample_max_value: f64,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    #[serde(default = "default_interp")]
    pub interpolation_type: String,
    #[serde(default, deserialize_with = "select::bool_or_null")]
    pub use_karras_sigmas: bool,
    #[serde(default, deserialize_with = "select::bool_or_null")]
    pub use_exponential_sigmas: bool,
    #[serde(default, deserialize_with = "select::bool_or_null")]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub use_lu_lambdas: bool,
    #[serde(default)]
    pub use_flow_sigmas: bool,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default, deserialize_with = "select::number_or_null")]
    pub sigma_min: Option<f64>,
    #[serde(default, deserialize_with = "select::number_or_null")]
    pub sigma_max: Option<f64>,
    #[serde(default = "default_final_sigmas")]
    pub final_sigmas_type: String,
    #[serde(default = "default_timestep_type")]
    pub timestep_type: String,
    /// DDPM's `fixed_small` …, or DPM-Solver's `learned`/`learned_range` (null there by default).
    #[serde(default)]
    pub variance_type: Option<String>,
    #[serde(default = "two")]
    pub solver_order: usize,
    #[serde(default = "default_algorithm")]
    pub algorithm_type: String,
    #[serde(default = "default_solver_type")]
    pub solver_type: String,
    #[serde(default = "yes")]
    pub lower_order_final: bool,
    #[serde(default)]
    pub euler_at_final: bool,
    /// `-inf` by default; diffusers writes it as the bare JSON token `-Infinity`.
    #[serde(default = "neg_inf", deserialize_with = "select::float_or_special")]
    pub lambda_min_clipped: f64,
    #[serde(default = "yes")]
    pub predict_x0: bool,
    #[serde(default)]
    pub disable_corrector: Vec<usize>,
    #[serde(default = "fifty")]
    pub original_inference_steps: usize,
    #[serde(default = "ten")]
    pub timestep_scaling: f64,
    /// Flow matching: the static timestep shift `s·σ / (1 + (s − 1)·σ)` (SD3 uses 3.0).
    #[serde(default = "one")]
    pub shift: f64,
    /// Flow matching: `mu` of [`calculate_shift`] at the base sequence length (null allowed).
    #[serde(default, deserialize_with = "select::number_or_null")]
    pub base_shift: Option<f64>,
    /// Flow matching: `mu` of [`calculate_shift`] at the maximal sequence length (null allowed).
    #[serde(default, deserialize_with = "select::number_or_null")]
    pub max_shift: Option<f64>,
    /// Flow matching: the image sequence length at which `mu = base_shift`.
    #[serde(default = "default_base_seq")]
    pub base_image_seq_len: usize,
    /// Flow matching: the image sequence length at which `mu = max_shift`.
    #[serde(default = "default_max_seq")]
    pub max_image_seq_len: usize,
    /// Flow matching: run the model on `1 − σ` (Mochi).
    #[serde(default)]
    pub invert_sigmas: bool,
    /// Flow matching: stretch the shifted schedule so that it ends at this sigma (LTX-Video).
    #[serde(default, deserialize_with = "select::number_or_null")]
    pub shift_terminal: Option<f64>,
    /// Resolution-dependent shift under `use_dynamic_shifting`: "exponential" or "linear".
    #[serde(default = "default_time_shift")]
    pub time_shift_type: String,
    /// Flow matching: re-noise each step's x₀ estimate instead of an Euler step.
    #[serde(default)]
    pub stochastic_sampling: bool,
    /// The checkpoint file's own keys, kept so that another class can be built from it as diffusers'
    /// `from_config` does (see [`select`]).
    #[serde(skip)]
    pub raw: serde_json::Map<String, serde_json::Value>,
}

fn default_base_seq() -> usize {
    256
}
fn default_max_seq() -> usize {
    4096
}
fn default_time_shift() -> String {
    "exponential".into()
}
fn default_threshold_ratio() -> f64 {
    0.995
}
fn two() -> usize {
    2
}
fn fifty() -> usize {
    50
}
fn ten() -> f64 {
    10.0
}
fn neg_inf() -> f64 {
    f64::NEG_INFINITY
}
fn default_algorithm() -> String {
    "dpmsolver++".into()
}
fn default_solver_type() -> String {
    "midpoint".into()
}

impl SchedulerConfig {
    /// Parses a `scheduler_config.json` text; `origin` names the file in errors. Keys the file lacks take
    /// the defaults of its `_class_name` (as diffusers' `from_config`); keys that class does not take are
    /// ignored but kept in [`SchedulerConfig::raw`] for building another class from this config.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let text = select::python_json(text);
        // Type-check every key we know, with errors that name the key.
        let file: Self = crate::weights::load::parse_config(&text, origin)?;
        let raw: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| Error::InvalidModel(format!("{origin} is not a valid config: {e}")))?;
        let config = select::for_class(&file.class_name, &raw, &serde_json::Map::new())
            .map_err(|e| Error::InvalidModel(format!("{origin}: {e}")))?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Refuses values that would index past the schedule or allocate without bound.
    pub(crate) fn validate(&self, origin: &str) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidModel(format!("{origin}: {why}")));
        let n = self.num_train_timesteps;
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&n) {
            return bad(format!(
                "num_train_timesteps {n} must be between 2 and {MAX_TRAIN_TIMESTEPS}"
            ));
        }
        if self.steps_offset >= n {
            return bad(format!(
                "steps_offset {} must be smaller than num_train_timesteps {n}",
                self.steps_offset
            ));
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != n {
                return bad(format!(
                    "trained_betas has {} values but num_train_timesteps is {n}",
                    betas.len()
                ));
            }
            if betas.iter().any(|b| !(0.0..1.0).contains(b)) {
                return bad("trained_betas must lie in [0, 1)".into());
            }
        }
        for (key, v) in [
            ("beta_start", self.beta_start),
            ("beta_end", self.beta_end),
            ("clip_sample_range", self.clip_sample_range),
            ("shift", self.shift),
        ] {
            if !v.is_finite() {
                return bad(format!("{key} must be a finite number, not {v}"));
            }
        }
        Ok(())
    }
}

/// What the denoising loop needs from a scheduler. One instance serves one run: `step` keeps history
/// (PNDM's multistep buffer, Euler's step index), so runs never share an instance.
pub trait Scheduler: Send {
    /// diffusers' class name of this scheduler.
    fn class_name(&self) -> &'static str;
    /// Prepares `n` inference steps (diffusers `set_timesteps(n)`).
    fn set_timesteps(&mut self, n: usize) -> Result<()>;
    /// diffusers' `set_timesteps(num_inference_steps, timesteps=, sigmas=, mu=)` with that class's own
    /// validation (see [`retrieve_timesteps`] for the pipelines' way of calling it). The default, for
    /// classes whose `set_timesteps` takes only the step count, refuses custom timesteps / sigmas with
    /// `retrieve_timesteps`' message and `mu` as Python refuses an unexpected keyword.
    fn set_timesteps_with(&mut self, req: &TimestepRequest) -> Result<()> {
        let n = req.plain_steps(self.class_name(), false)?;
        self.set_timesteps(n)
    }
    /// The timesteps passed to the UNet, in order (PNDM repeats one).
    fn timesteps(&self) -> &[f64];
    /// How many timesteps the schedule holds (model calls, for second-order schedulers twice the steps
    /// but one): what a pipeline loops over after a custom schedule.
    fn num_timesteps(&self) -> usize {
        self.timesteps().len()
    }
    /// Model evaluations per step (2 for Heun-like schedulers); img2img truncation multiplies by it.
    fn order(&self) -> usize {
        1
    }
    /// Scale of the initial noise.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// Input scaling before the UNet (identity except for sigma-based schedulers).
    fn scale_model_input(&mut self, sample: &Tensor, _t: f64) -> Result<Tensor> {
        Ok(sample.clone())
    }
    /// One denoising step from `sample` at `t` given the model output; may draw noise from `rng`.
    fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor, rng: &mut Generator)
        -> Result<Tensor>;
    /// Noises clean `original` to timestep `t` (img2img start, 4-channel inpaint blending).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: f64) -> Result<Tensor>;
    /// Where an img2img run starts in the timestep list (diffusers `set_begin_index`).
    fn set_begin_index(&mut self, _index: usize) {}
    /// Sigmas after `set_timesteps`, for schedulers that have them (tests compare these).
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }
}

/// Builds the scheduler named by `config.class_name`.
pub fn build(config: &SchedulerConfig) -> Result<Box<dyn Scheduler>> {
    match classes::class(&config.class_name) {
        Some(class) => (class.build)(config),
        None => Err(Error::Unsupported(format!(
            "scheduler class {:?} is not supported yet; supported: {}",
            config.class_name,
            SUPPORTED.join(", ")
        ))),
    }
}

/// `alphas_cumprod` (float32, as diffusers stores it) for the config's beta schedule.
pub(crate) fn alphas_cumprod(c: &SchedulerConfig) -> Result<Vec<f32>> {
    let n = c.num_train_timesteps;
    if n < 2 {
        return Err(Error::InvalidModel(format!(
            "num_train_timesteps {n} must be at least 2"
        )));
    }
    let betas: Vec<f32> = if let Some(b) = &c.trained_betas {
        b.iter().map(|&v| v as f32).collect()
    } else {
        match c.beta_schedule.as_str() {
            "linear" => linspace_f32(c.beta_start as f32, c.beta_end as f32, n),
            "scaled_linear" => linspace_f32(c.beta_start.sqrt() as f32, c.beta_end.sqrt() as f32, n)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            "squaredcos_cap_v2" => {
                let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
            // Schedules some diffusers schedulers have that we do not implement yet; any other
            // value is a mistake in the config (diffusers raises NotImplementedError for both).
            other @ ("sigmoid" | "exp" | "laplace") => {
                return Err(Error::Unsupported(format!(
                    "beta_schedule {other:?} is not supported yet; use linear, scaled_linear or squaredcos_cap_v2"
                )))
            }
            other => {
                return Err(Error::InvalidModel(format!(
                    "beta_schedule {other:?} is not a beta schedule; use linear, scaled_linear or squaredcos_cap_v2"
                )))
            }
        }
    };
    let betas = if c.rescale_betas_zero_snr {
        rescale_zero_terminal_snr(&betas)
    } else {
        betas
    };
    // torch.cumprod on CPU accumulates in double and rounds each prefix to float.
    // torch's CPU cumprod accumulates in double (its acc_type for float) and rounds each prefix.
    // torch's vectorised linspace rounds a few betas differently, so a few sigmas differ by one ulp.
    let mut acc = 1.0f64;
    let mut out: Vec<f32> = betas
        .iter()
        .map(|b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect();
    let clamps_last = matches!(
        c.class_name.as_str(),
        "EulerDiscreteScheduler"
            | "EulerAncestralDiscreteScheduler"
            | "DPMSolverMultistepScheduler"
            | "UniPCMultistepScheduler"
    );
    if c.rescale_betas_zero_snr && clamps_last {
        // The sigma schedulers keep the last alpha_cumprod just above zero so sigmas stay finite
        // (DDIM, DDPM, LCM and TCD keep the exact zero).
        if let Some(last) = out.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    Ok(out)
}

/// `torch.linspace(start, end, n, dtype=float32)`: float arithmetic, second half counted from the end.
pub(crate) fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - i - 1) as f32
            }
        })
        .collect()
}

/// diffusers `rescale_zero_terminal_snr` (arXiv 2305.08891, algorithm 1), in float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    let mut sqrt_ac: Vec<f32> = betas
        .iter()
        .map(|b| {
            acc *= (1.0f32 - b) as f64;
            (acc as f32).sqrt()
        })
        .collect();
    let first = sqrt_ac[0];
    let last = *sqrt_ac.last().expect("at least two betas");
    for v in sqrt_ac.iter_mut() {
        *v = (*v - last) * first / (first - last);
    }
    let ac: Vec<f32> = sqrt_ac.iter().map(|v| v * v).collect();
    let mut alphas = Vec::with_capacity(ac.len());
    alphas.push(ac[0]);
    for i in 1..ac.len() {
        alphas.push(ac[i] / ac[i - 1]);
    }
    alphas.iter().map(|a| 1.0 - a).collect()
}

/// Integer timesteps for `n` steps, descending, under the config's `timestep_spacing` (DDIM/PNDM rules).
pub(crate) fn discrete_timesteps(c: &SchedulerConfig, n: usize) -> Result<Vec<i64>> {
    let t = c.num_train_timesteps;
    if n == 0 || n > t {
        return Err(Error::InvalidArgument(format!(
            "num_inference_steps {n} must be between 1 and the scheduler's num_train_timesteps {t}"
        )));
    }
    let mut ts: Vec<i64> = match c.timestep_spacing.as_str() {
        "linspace" => linspace_f64(0.0, (t - 1) as f64, n)
            .iter()
            .map(|v| round_half_even(*v) as i64)
            .collect(),
        "leading" => {
            let ratio = t / n;
            (0..n)
                .map(|i| (i * ratio) as i64 + c.steps_offset as i64)
                .collect()
        }
        "trailing" => {
            let ratio = t as f64 / n as f64;
            arange_desc(t as f64, ratio)
                .iter()
                .map(|v| round_half_even(*v) as i64 - 1)
                .collect()
        }
        other => return Err(spacing_error(other)),
    };
    if c.timestep_spacing != "trailing" {
        ts.reverse();
    }
    // `steps_offset` can push "leading" timesteps past the schedule (diffusers then fails with an
    // IndexError); refuse it here rather than index out of range later.
    if let Some(&bad) = ts.iter().find(|&&v| v >= t as i64) {
        return Err(past_schedule(c, n, bad));
    }
    Ok(ts)
}

/// The refusal of a "leading" schedule whose `steps_offset` pushes its last timestep past the training
/// range: SD's own PNDM config (`steps_offset` 1) at 1000 steps gives timestep 1000, and diffusers fails
/// there with an IndexError. The config is fine for fewer steps, so the caller's step count is what to
/// change: the message names the most that fit.
pub(crate) fn past_schedule(c: &SchedulerConfig, n: usize, bad: i64) -> Error {
    let t = c.num_train_timesteps;
    let fits = |k: usize| (k - 1) * (t / k) + c.steps_offset < t;
    let most = (1..n).rev().find(|&k| fits(k)).unwrap_or(0);
    Error::InvalidArgument(format!(
        "num_inference_steps {n} with this scheduler's steps_offset {} and \"leading\" spacing puts timestep \
         {bad} past num_train_timesteps {t} (diffusers fails there with an IndexError): use at most {most} \
         steps, or a scheduler config with timestep_spacing \"trailing\"",
        c.steps_offset
    ))
}

pub(crate) fn spacing_error(other: &str) -> Error {
    Error::InvalidModel(format!(
        "timestep_spacing {other:?} is not supported; choose one of 'leading', 'linspace' or 'trailing'"
    ))
}

/// `np.linspace(start, end, n)` in float64.
pub(crate) fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = end;
    v
}

/// `np.arange(start, 0, -step)` in float64 (descending, exclusive of 0).
pub(crate) fn arange_desc(start: f64, step: f64) -> Vec<f64> {
    let len = (start / step).ceil() as usize;
    (0..len).map(|i| start - i as f64 * step).collect()
}

/// numpy's `round`: halves go to the even neighbour.
pub(crate) fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 {
        2.0 * (v / 2.0).round()
    } else {
        r
    }
}

/// `tensor * s` as torch computes it with a float32 scalar.
pub fn mul_s(t: &Tensor, s: f32) -> Result<Tensor> {
    Ok(t.broadcast_mul(&Tensor::new(s, t.device())?.to_dtype(t.dtype())?)?)
}

/// `tensor / s` as a true division (not multiplication by the reciprocal).
pub fn div_s(t: &Tensor, s: f32) -> Result<Tensor> {
    Ok(t.broadcast_div(&Tensor::new(s, t.device())?.to_dtype(t.dtype())?)?)
}

/// `s * t1 + u * t2`, the shape of most update rules.
pub(crate) fn lin2(s: f32, t1: &Tensor, u: f32, t2: &Tensor) -> Result<Tensor> {
    Ok((mul_s(t1, s)? + mul_s(t2, u)?)?)
}

/// `sqrt(ᾱ_t)·x + sqrt(1-ᾱ_t)·noise` with diffusers' float32 rounding (DDPM-style `add_noise`).
pub(crate) fn add_noise_alpha(
    alphas_cumprod: &[f32],
    original: &Tensor,
    noise: &Tensor,
    t: f64,
) -> Result<Tensor> {
    let idx = t as usize;
    let a = *alphas_cumprod.get(idx).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "timestep {t} is outside the scheduler's {} train steps",
            alphas_cumprod.len()
        ))
    })?;
    lin2(a.sqrt(), original, (1.0 - a).sqrt(), noise)
}

/// diffusers `get_timesteps` for img2img/inpaint: how many leading entries of the timestep list a run
/// with `strength` skips (`t_start · order`), and how many steps remain.
pub fn strength_start(num_inference_steps: usize, strength: f64, order: usize) -> (usize, usize) {
    let init = ((num_inference_steps as f64 * strength) as usize).min(num_inference_steps);
    let t_start = num_inference_steps - init;
    (t_start * order, num_inference_steps - t_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_rounding_goes_to_even() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-0.5), -0.0);
        assert_eq!(round_half_even(1.4), 1.0);
    }

    #[test]
    fn leading_schedules_past_the_training_range_are_the_callers_step_count() {
        // SD 1.5's own scheduler configs at the documented maximum of 1000 steps: timestep 1000.
        for class in ["PNDMScheduler", "DDIMScheduler"] {
            let cfg = SchedulerConfig::from_json(
                &format!(
                    r#"{{"_class_name": "{class}", "steps_offset": 1, "timestep_spacing": "leading",
                        "skip_prk_steps": true}}"#
                ),
                "test",
            )
            .unwrap();
            let mut s = build(&cfg).unwrap();
            let err = s.set_timesteps(1000).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{class}: {err:?}");
            assert!(
                err.to_string().contains("use at most 999 steps"),
                "{class}: {err}"
            );
            s.set_timesteps(999).unwrap();
            assert_eq!(s.timesteps()[0], 999.0, "{class}");
        }
    }

    #[test]
    fn linspace_hits_both_ends() {
        let v = linspace_f32(0.1, 0.9, 5);
        assert_eq!(v[0], 0.1);
        assert_eq!(v[4], 0.9);
    }
}
#[cfg(test)]
mod step_count_limits {
    /// diffusers (0.42.1, SD 1.5's scheduler config switched to each class) runs 999 "leading" steps
    /// with a first timestep of 1000, its sigma clamped to the last training sigma by `np.interp`, and
    /// fails at 1000 steps (the step ratio is 0: IndexError). The same here: 999 run to the end, 1000
    /// is the caller's argument error.
    #[test]
    fn dpm_family_at_the_step_limit_behaves_as_diffusers() {
        let cfg = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/checkpoints/sd15-tiny/scheduler/scheduler_config.json"
        ))
        .unwrap();
        let base = super::SchedulerConfig::from_json(&cfg, "test").unwrap();
        let cpu = candle_core::Device::Cpu;
        for class in [
            "DPMSolverMultistepScheduler",
            "DEISMultistepScheduler",
            "UniPCMultistepScheduler",
        ] {
            let c = super::select(&base, Some(class), None).unwrap();
            let mut s = super::build(&c).unwrap();
            s.set_timesteps(999).unwrap();
            let ts = s.timesteps().to_vec();
            assert_eq!(
                (ts.len(), ts[0], ts[1], ts[998]),
                (999, 1000.0, 999.0, 2.0),
                "{class}"
            );
            if let Some(sig) = s.sigmas() {
                assert_eq!(sig[0], sig[1], "{class}: timestep 1000 clamps to the last sigma");
            }
            let x = candle_core::Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &cpu).unwrap();
            let mut rng =
                crate::rng::Generator::new(crate::rng::RngKind::Cpu, 0, &cpu, candle_core::DType::F32);
            let mut y = x.clone();
            for &t in &ts {
                y = s.step(&x, t, &y, &mut rng).unwrap();
            }
            let err = s.set_timesteps(1000).unwrap_err();
            assert!(
                matches!(err, super::Error::InvalidArgument(_)),
                "{class}: {err:?}"
            );
            assert!(
                err.to_string().contains("use at most 999 steps"),
                "{class}: {err}"
            );
        }
    }
}
