//! Custom schedules: the keyword arguments of diffusers' `set_timesteps(num_inference_steps=None,
//! timesteps=None, sigmas=None, mu=None)` and the pipelines' `retrieve_timesteps` helper that hands a
//! user's `timesteps=` / `sigmas=` to the scheduler, with diffusers' messages when a class takes neither.

use super::{classes, Scheduler};
use crate::error::{Error, Result};

/// One `set_timesteps` call with diffusers' keyword arguments. Which combinations are valid depends on
/// the class (each validates as its diffusers `set_timesteps` does); [`TimestepRequest::steps`] is the
/// plain `set_timesteps(n)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimestepRequest<'a> {
    /// `num_inference_steps`.
    pub num_inference_steps: Option<usize>,
    /// Custom timesteps, descending (`timesteps=`).
    pub timesteps: Option<&'a [f64]>,
    /// Custom sigmas (`sigmas=`): for sigma schedulers such as Euler they include the final sigma, for
    /// the flow-matching ones they do not (diffusers' own conventions).
    pub sigmas: Option<&'a [f64]>,
    /// The resolution-dependent shift of flow-matching schedules (`mu=`, see [`super::calculate_shift`]).
    pub mu: Option<f64>,
    /// img2img strength applied by the scheduler itself (`strength=` of LCM and TCD, which the LCM
    /// img2img pipeline passes instead of truncating the schedule afterwards).
    pub strength: Option<f64>,
}

/// Which keyword arguments a class's diffusers `set_timesteps` takes besides `num_inference_steps`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepts {
    /// `timesteps=`
    pub timesteps: bool,
    /// `sigmas=`
    pub sigmas: bool,
    /// `mu=`
    pub mu: bool,
    /// `strength=`
    pub strength: bool,
}

impl<'a> TimestepRequest<'a> {
    /// `set_timesteps(n)`.
    pub fn steps(n: usize) -> Self {
        Self {
            num_inference_steps: Some(n),
            ..Self::default()
        }
    }

    /// Refuses the keyword arguments `class` does not take, as a pipeline meets them: custom timesteps or
    /// sigmas with `retrieve_timesteps`' message, `mu` with Python's for an unexpected keyword.
    pub(crate) fn check_accepted(&self, class: &str, accepts: Accepts) -> Result<()> {
        if self.timesteps.is_some() && !accepts.timesteps {
            return Err(unsupported_custom(class, "timestep"));
        }
        if self.sigmas.is_some() && !accepts.sigmas {
            return Err(unsupported_custom(class, "sigmas"));
        }
        if self.mu.is_some() && !accepts.mu {
            return Err(Error::InvalidArgument(format!(
                "{class}.set_timesteps() got an unexpected keyword argument 'mu'"
            )));
        }
        if self.strength.is_some() && !accepts.strength {
            return Err(Error::InvalidArgument(format!(
                "{class}.set_timesteps() got an unexpected keyword argument 'strength'"
            )));
        }
        Ok(())
    }

    /// For classes whose `set_timesteps` takes only `num_inference_steps` (and perhaps `mu`): the
    /// step count, after refusing everything else.
    pub(crate) fn plain_steps(&self, class: &str, accepts_mu: bool) -> Result<usize> {
        self.check_accepted(
            class,
            Accepts {
                mu: accepts_mu,
                ..Accepts::default()
            },
        )?;
        self.num_inference_steps
            .ok_or_else(|| Error::InvalidArgument(format!("{class}.set_timesteps needs num_inference_steps")))
    }

    /// diffusers' `mu` check of the DPM-Solver family (DPM-Solver multi/singlestep, DEIS): `mu` only
    /// with exponential dynamic shifting. It only moves `flow_shift`, which only flow sigmas use (refused
    /// at construction), so an accepted `mu` changes nothing here.
    pub(crate) fn check_dpm_mu(&self, class: &str, c: &super::SchedulerConfig) -> Result<()> {
        if self.mu.is_some() && !(c.use_dynamic_shifting && c.time_shift_type == "exponential") {
            return Err(Error::InvalidArgument(format!(
                "{class}: `mu` is only accepted with use_dynamic_shifting and time_shift_type 'exponential' \
                 (diffusers asserts this)"
            )));
        }
        Ok(())
    }
}

/// `retrieve_timesteps`' refusal; diffusers prints the class object, so we name it as Python does.
fn unsupported_custom(class: &str, what: &str) -> Error {
    let module = classes::module_of(class).unwrap_or("scheduling_utils");
    Error::InvalidArgument(format!(
        "The current scheduler class <class 'diffusers.schedulers.{module}.{class}'>'s `set_timesteps` does not \
         support custom {what} schedules. Please check whether you are using the correct scheduler."
    ))
}

/// diffusers' `retrieve_timesteps(scheduler, num_inference_steps, timesteps=, sigmas=, mu=)` as every
/// pipeline calls it: custom timesteps or sigmas (never both) replace `num_inference_steps`, `mu` goes
/// along with each. Returns the `num_inference_steps` diffusers continues with: the request's for a
/// plain call, `len(scheduler.timesteps)` for a custom one (for second-order schedulers that counts
/// every model call, as diffusers does).
pub fn retrieve_timesteps(
    scheduler: &mut dyn Scheduler,
    num_inference_steps: Option<usize>,
    timesteps: Option<&[f64]>,
    sigmas: Option<&[f64]>,
    mu: Option<f64>,
) -> Result<usize> {
    if timesteps.is_some() && sigmas.is_some() {
        return Err(Error::InvalidArgument(
            "Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values"
                .into(),
        ));
    }
    let custom = timesteps.is_some() || sigmas.is_some();
    let req = TimestepRequest {
        num_inference_steps: if custom { None } else { num_inference_steps },
        timesteps,
        sigmas,
        mu,
        strength: None,
    };
    scheduler.set_timesteps_with(&req)?;
    if custom {
        Ok(scheduler.num_timesteps())
    } else {
        num_inference_steps.ok_or_else(|| {
            Error::InvalidArgument("num_inference_steps is needed without custom timesteps or sigmas".into())
        })
    }
}

/// diffusers' checks on a custom integer timestep list (DDPM, LCM, TCD): strictly descending and
/// starting inside the training range. Negative entries, which diffusers would use as indices from
/// the end of its tables, are refused too.
pub(crate) fn check_descending_train(ts: &[f64], num_train_timesteps: usize) -> Result<()> {
    let first = *ts
        .first()
        .ok_or_else(|| Error::InvalidArgument("`timesteps` must not be empty".into()))?;
    if ts.windows(2).any(|w| w[1] >= w[0]) {
        return Err(Error::InvalidArgument(
            "`custom_timesteps` must be in descending order.".into(),
        ));
    }
    if first >= num_train_timesteps as f64 {
        return Err(Error::InvalidArgument(format!(
            "`timesteps` must start before `self.config.train_timesteps`: {num_train_timesteps}."
        )));
    }
    if ts.iter().any(|t| !t.is_finite() || *t < 0.0) {
        return Err(Error::InvalidArgument(
            "`timesteps` must be finite and not negative".into(),
        ));
    }
    Ok(())
}

/// `np.array(timesteps).astype(np.int64)`: truncation toward zero (refusing what has no integer).
pub(crate) fn to_int_timesteps(ts: &[f64]) -> Result<Vec<i64>> {
    ts.iter()
        .map(|&t| {
            if t.is_finite() && t.abs() < 9.0e15 {
                Ok(t.trunc() as i64)
            } else {
                Err(Error::InvalidArgument(format!(
                    "timestep {t} is not a usable integer"
                )))
            }
        })
        .collect()
}

/// Refuses an empty custom list or one with NaN / infinite entries (diffusers would fail later, less
/// clearly).
pub(crate) fn check_finite(what: &str, v: &[f64]) -> Result<()> {
    if v.is_empty() {
        return Err(Error::InvalidArgument(format!("`{what}` must not be empty")));
    }
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "`{what}` must be finite numbers, found {bad}"
        )));
    }
    Ok(())
}
