//! Choosing a scheduler at run time, as diffusers' `Cls.from_config(pipe.scheduler.config, **overrides)`:
//! each class's config keys and defaults, the merge rules, and the short names users know.

use super::classes::{self, ALIASES, SUPPORTED};
use super::{build, SchedulerConfig};
use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Keys shared by every class below, with diffusers' defaults (a few classes change a default; their
/// own entry then overrides it).
const COMMON: &[(&str, &str)] = &[
    ("num_train_timesteps", "1000"),
    ("beta_start", "0.0001"),
    ("beta_end", "0.02"),
    ("beta_schedule", "\"linear\""),
    ("trained_betas", "null"),
    ("prediction_type", "\"epsilon\""),
    ("steps_offset", "0"),
];

const THRESHOLDING: &[(&str, &str)] = &[
    ("thresholding", "false"),
    ("dynamic_thresholding_ratio", "0.995"),
    ("sample_max_value", "1.0"),
];

const SIGMA_KINDS: &[(&str, &str)] = &[
    ("use_karras_sigmas", "false"),
    ("use_exponential_sigmas", "false"),
    ("use_beta_sigmas", "false"),
];

/// The `__init__` keys of each class beyond [`COMMON`], with their defaults as JSON (diffusers 0.42).
fn own_keys(class: &str) -> Option<Vec<(&'static str, &'static str)>> {
    let mut v: Vec<(&str, &str)> = Vec::new();
    match class {
        "DDPMScheduler" => {
            v.extend([
                ("variance_type", "\"fixed_small\""),
                ("clip_sample", "true"),
                ("clip_sample_range", "1.0"),
                ("timestep_spacing", "\"leading\""),
                ("rescale_betas_zero_snr", "false"),
            ]);
            v.extend(THRESHOLDING);
        }
        "DDIMScheduler" => {
            v.extend([
                ("clip_sample", "true"),
                ("set_alpha_to_one", "true"),
                ("clip_sample_range", "1.0"),
                ("timestep_spacing", "\"leading\""),
                ("rescale_betas_zero_snr", "false"),
            ]);
            v.extend(THRESHOLDING);
        }
        "PNDMScheduler" => v.extend([
            ("skip_prk_steps", "false"),
            ("set_alpha_to_one", "false"),
            ("timestep_spacing", "\"leading\""),
        ]),
        "EulerDiscreteScheduler" => {
            v.extend([
                ("interpolation_type", "\"linear\""),
                ("sigma_min", "null"),
                ("sigma_max", "null"),
                ("timestep_spacing", "\"linspace\""),
                ("timestep_type", "\"discrete\""),
                ("rescale_betas_zero_snr", "false"),
                ("final_sigmas_type", "\"zero\""),
            ]);
            v.extend(SIGMA_KINDS);
        }
        "EulerAncestralDiscreteScheduler" => v.extend([
            ("timestep_spacing", "\"linspace\""),
            ("rescale_betas_zero_snr", "false"),
        ]),
        "DPMSolverMultistepScheduler" => {
            v.extend([
                ("solver_order", "2"),
                ("algorithm_type", "\"dpmsolver++\""),
                ("solver_type", "\"midpoint\""),
                ("lower_order_final", "true"),
                ("euler_at_final", "false"),
                ("use_lu_lambdas", "false"),
                ("use_flow_sigmas", "false"),
                ("flow_shift", "1.0"),
                ("final_sigmas_type", "\"zero\""),
                ("lambda_min_clipped", "\"-Infinity\""),
                ("variance_type", "null"),
                ("timestep_spacing", "\"linspace\""),
                ("rescale_betas_zero_snr", "false"),
                ("use_dynamic_shifting", "false"),
                ("time_shift_type", "\"exponential\""),
            ]);
            v.extend(THRESHOLDING);
            v.extend(SIGMA_KINDS);
        }
        "DPMSolverSinglestepScheduler" => {
            v.extend([
                ("solver_order", "2"),
                ("algorithm_type", "\"dpmsolver++\""),
                ("solver_type", "\"midpoint\""),
                ("lower_order_final", "false"),
                ("use_flow_sigmas", "false"),
                ("flow_shift", "1.0"),
                ("final_sigmas_type", "\"zero\""),
                ("lambda_min_clipped", "\"-Infinity\""),
                ("variance_type", "null"),
                ("use_dynamic_shifting", "false"),
                ("time_shift_type", "\"exponential\""),
            ]);
            v.extend(THRESHOLDING);
            v.extend(SIGMA_KINDS);
        }
        "LMSDiscreteScheduler" => {
            v.push(("timestep_spacing", "\"linspace\""));
            v.extend(SIGMA_KINDS);
        }
        "HeunDiscreteScheduler" => {
            v.extend([
                ("beta_start", "0.00085"),
                ("beta_end", "0.012"),
                ("clip_sample", "false"),
                ("clip_sample_range", "1.0"),
                ("timestep_spacing", "\"linspace\""),
            ]);
            v.extend(SIGMA_KINDS);
        }
        "KDPM2DiscreteScheduler" | "KDPM2AncestralDiscreteScheduler" => {
            v.extend([
                ("beta_start", "0.00085"),
                ("beta_end", "0.012"),
                ("timestep_spacing", "\"linspace\""),
            ]);
            v.extend(SIGMA_KINDS);
        }
        "UniPCMultistepScheduler" => {
            v.extend([
                ("solver_order", "2"),
                ("predict_x0", "true"),
                ("solver_type", "\"bh2\""),
                ("lower_order_final", "true"),
                ("disable_corrector", "[]"),
                ("solver_p", "null"),
                ("use_flow_sigmas", "false"),
                ("flow_shift", "1.0"),
                ("timestep_spacing", "\"linspace\""),
                ("final_sigmas_type", "\"zero\""),
                ("rescale_betas_zero_snr", "false"),
                ("use_dynamic_shifting", "false"),
                ("time_shift_type", "\"exponential\""),
                ("sigma_min", "null"),
                ("sigma_max", "null"),
                ("shift_terminal", "null"),
            ]);
            v.extend(THRESHOLDING);
            v.extend(SIGMA_KINDS);
        }
        "LCMScheduler" | "TCDScheduler" => {
            v.extend([
                ("beta_start", "0.00085"),
                ("beta_end", "0.012"),
                ("beta_schedule", "\"scaled_linear\""),
                ("original_inference_steps", "50"),
                ("clip_sample", "false"),
                ("clip_sample_range", "1.0"),
                ("set_alpha_to_one", "true"),
                ("timestep_spacing", "\"leading\""),
                ("timestep_scaling", "10.0"),
                ("rescale_betas_zero_snr", "false"),
            ]);
            v.extend(THRESHOLDING);
        }
        "FlowMatchEulerDiscreteScheduler" => {
            v.extend([
                ("shift", "1.0"),
                ("use_dynamic_shifting", "false"),
                ("base_shift", "0.5"),
                ("max_shift", "1.15"),
                ("base_image_seq_len", "256"),
                ("max_image_seq_len", "4096"),
                ("invert_sigmas", "false"),
                ("shift_terminal", "null"),
                ("time_shift_type", "\"exponential\""),
                ("stochastic_sampling", "false"),
            ]);
            v.extend(SIGMA_KINDS);
        }
        "FlowMatchHeunDiscreteScheduler" => v.push(("shift", "1.0")),
        "DEISMultistepScheduler" => {
            v.extend([
                ("solver_order", "2"),
                ("algorithm_type", "\"deis\""),
                ("solver_type", "\"logrho\""),
                ("lower_order_final", "true"),
                ("use_flow_sigmas", "false"),
                ("flow_shift", "1.0"),
                ("timestep_spacing", "\"linspace\""),
                ("use_dynamic_shifting", "false"),
                ("time_shift_type", "\"exponential\""),
            ]);
            v.extend(THRESHOLDING);
            v.extend(SIGMA_KINDS);
        }
        _ => return None,
    }
    Some(v)
}

/// The config keys `class` takes (its `__init__` arguments) with diffusers' defaults, sorted by key;
/// `None` for classes this build does not know.
pub fn class_keys(class: &str) -> Option<Vec<(&'static str, Value)>> {
    let own = own_keys(class)?;
    let mut out: Vec<(&'static str, Value)> = Vec::new();
    // DPMSolverSinglestepScheduler has no timestep spacing options at all; the flow-matching classes
    // have no beta schedule, so they take only num_train_timesteps of the common keys.
    let flow = classes::class(class).is_some_and(|c| c.flow);
    let common = COMMON.iter().filter(|(k, _)| {
        !(class == "DPMSolverSinglestepScheduler" && *k == "steps_offset")
            && (!flow || *k == "num_train_timesteps")
    });
    for (k, v) in common.chain(own.iter()) {
        let v: Value = serde_json::from_str(v).expect("defaults are valid JSON");
        match out.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    Some(out)
}

/// The config `class` gets from `from_config(raw, **overrides)`: its defaults, then the keys of `raw`
/// it takes (private `_keys` never), then `overrides`. An override key the class does not take is an
/// error (diffusers would silently ignore it; a typo should not pass unnoticed).
pub(crate) fn for_class(
    class: &str,
    raw: &Map<String, Value>,
    overrides: &Map<String, Value>,
) -> Result<SchedulerConfig> {
    let mut merged = Map::new();
    match class_keys(class) {
        Some(keys) => {
            for (k, v) in &keys {
                let v = match (overrides.get(*k), raw.get(*k)) {
                    (Some(o), _) => o.clone(),
                    (None, Some(r)) => r.clone(),
                    (None, None) => v.clone(),
                };
                merged.insert(k.to_string(), v);
            }
            if let Some(bad) = overrides.keys().find(|k| !keys.iter().any(|(key, _)| key == k)) {
                return Err(Error::InvalidArgument(format!(
                    "{class} has no config key {bad:?}; its keys are: {}",
                    keys.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        // A class we cannot build: keep what the file says, `build` names the problem.
        None => {
            merged = raw.clone();
            merged.extend(overrides.clone());
        }
    }
    merged.insert("_class_name".into(), Value::String(class.to_string()));
    let mut config: SchedulerConfig = match serde_json::from_value(Value::Object(merged.clone())) {
        Ok(c) => c,
        Err(e) => {
            // Name the key: try each override alone (the file's own keys were checked when it was read).
            let bad = overrides.iter().find_map(|(k, v)| {
                let mut one = Map::new();
                one.insert(k.clone(), v.clone());
                serde_json::from_value::<SchedulerConfig>(Value::Object(one))
                    .err()
                    .map(|e| format!("config key {k:?}: {e}"))
            });
            return Err(Error::InvalidArgument(bad.unwrap_or_else(|| e.to_string())));
        }
    };
    config.raw = raw.clone();
    Ok(config)
}

/// The accepted aliases, for messages and help texts.
pub fn aliases() -> Vec<&'static str> {
    ALIASES.iter().map(|a| a.0).collect()
}

/// Resolves a user's scheduler name (a diffusers class name, or an alias; case and `-`/space vs `_`
/// do not matter for aliases) to the class and the alias's own overrides.
fn resolve_name(name: &str) -> Result<(&'static str, Map<String, Value>)> {
    let trimmed = name.trim();
    if let Some(class) = SUPPORTED.iter().find(|c| c.eq_ignore_ascii_case(trimmed)) {
        return Ok((class, Map::new()));
    }
    let norm: String = trimmed
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '-' { '_' } else { c })
        .collect();
    let norm = norm.replace("dpmpp", "dpm++").replace("dpm++_", "dpm++");
    if let Some((_, class, json)) = ALIASES.iter().find(|a| a.0 == norm) {
        let Value::Object(map) = serde_json::from_str(json).expect("alias overrides are valid JSON") else {
            unreachable!("alias overrides are objects")
        };
        return Ok((class, map));
    }
    Err(Error::InvalidArgument(format!(
        "unknown scheduler {name:?}; use a class name ({}) or an alias ({})",
        SUPPORTED.join(", "),
        aliases().join(", ")
    )))
}

/// The scheduler config of one run: the checkpoint's `base` config, switched to the class `name` names
/// (if any) and updated with `overrides` (a JSON object), as
/// `Cls.from_config(pipe.scheduler.config, **overrides)` does. Errors are `InvalidArgument`, except
/// `Unsupported` for options this build does not implement.
pub fn select(
    base: &SchedulerConfig,
    name: Option<&str>,
    overrides: Option<&Value>,
) -> Result<SchedulerConfig> {
    let mut extra = match overrides {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "scheduler_config must be a JSON object such as {{\"use_karras_sigmas\": true}}, not {other}"
            )))
        }
    };
    if name.is_none() && extra.is_empty() {
        return Ok(base.clone());
    }
    let (class, mut alias) = match name {
        Some(n) => resolve_name(n)?,
        None => match SUPPORTED.iter().find(|c| **c == base.class_name) {
            Some(c) => (*c, Map::new()),
            None => {
                return Err(Error::Unsupported(format!(
                    "the checkpoint's scheduler {:?} is not supported; name one with `scheduler`",
                    base.class_name
                )))
            }
        },
    };
    refuse_flow_switch(&base.class_name, class)?;
    if let Some(bad) = extra.keys().find(|k| k.starts_with('_')) {
        return Err(Error::InvalidArgument(format!(
            "scheduler_config key {bad:?}: private keys cannot be set"
        )));
    }
    alias.append(&mut extra);
    // The checkpoint's file as read (not its class's filled-in defaults): diffusers drops the keys a
    // loaded config only had by default (`_use_default_values`), so the new class's defaults apply.
    let raw = if base.raw.is_empty() {
        base_as_map(base)
    } else {
        base.raw.clone()
    };
    let config = for_class(class, &raw, &alias)?;
    config.validate("scheduler_config").map_err(to_argument)?;
    build(&config).map_err(to_argument)?;
    Ok(config)
}

/// A flow-matching model (velocity prediction) cannot be sampled by a diffusion scheduler, nor a
/// noise- or v-predicting UNet by a flow-matching one; diffusers would let the switch through and
/// produce noise. The checkpoint's own scheduler class tells which kind of model it is. (The family
/// checks the result too, `FamilyPipeline::check_scheduler`: that also catches a checkpoint whose own
/// scheduler config names a class its family cannot use.)
fn refuse_flow_switch(base: &str, target: &str) -> Result<()> {
    let (Some(from), Some(to)) = (classes::class(base), classes::class(target)) else {
        return Ok(());
    };
    let kind = |flow: bool| {
        if flow {
            "a flow-matching scheduler (for flow-matching models such as SD3 and FLUX)"
        } else {
            "a diffusion scheduler (for noise- or v-predicting models)"
        }
    };
    if from.flow != to.flow {
        return Err(Error::InvalidArgument(format!(
            "{target} is {}, but this checkpoint's scheduler {base} is {}; choose one of: {}",
            kind(to.flow),
            kind(from.flow),
            classes::CLASSES
                .iter()
                .filter(|c| c.flow == from.flow)
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// A config built by hand (no file): its class name only, so every other key takes the class default.
fn base_as_map(base: &SchedulerConfig) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("_class_name".into(), Value::String(base.class_name.clone()));
    m
}

/// Bad values in a user's choice are argument errors, not a broken model. The run applies it to the
/// errors of building the chosen scheduler and of its `set_timesteps` (where `timestep_spacing`,
/// `steps_offset` and `final_sigmas_type` are checked against the step count) when the caller chose
/// the scheduler or passed `scheduler_config`.
pub(crate) fn caller_error(e: Error) -> Error {
    to_argument(e)
}

fn to_argument(e: Error) -> Error {
    match e {
        Error::InvalidModel(m) => Error::InvalidArgument(m),
        other => other,
    }
}

/// Python's `json` writes `-Infinity`, `Infinity` and `NaN` as bare tokens (diffusers' default
/// `lambda_min_clipped` is `-inf`); serde_json rejects them, so they become strings that the float
/// fields accept.
pub fn python_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        } else {
            let token = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(t) = token {
                out.push('"');
                out.push_str(t);
                out.push('"');
                rest = &rest[t.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A float that may be written as a number or as `"-Infinity"` / `"Infinity"` / `"NaN"`.
pub(crate) fn float_or_special<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum F {
        N(f64),
        S(String),
    }
    match F::deserialize(d)? {
        F::N(v) => Ok(v),
        F::S(s) => match s.as_str() {
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "NaN" | "nan" => Ok(f64::NAN),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, found {other:?}"
            ))),
        },
    }
}

/// A bool where diffusers allows `None` (read as false).
pub(crate) fn bool_or_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// An optional float (`null` = unset), also accepting the Python special values.
pub(crate) fn number_or_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    struct W(#[serde(deserialize_with = "float_or_special")] f64);
    Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_specials_become_strings_outside_strings_only() {
        assert_eq!(
            python_json(r#"{"a": -Infinity, "b": "NaN x", "c": [Infinity, NaN]}"#),
            r#"{"a": "-Infinity", "b": "NaN x", "c": ["Infinity", "NaN"]}"#
        );
    }

    #[test]
    fn every_supported_class_has_keys_and_every_alias_a_class() {
        for c in SUPPORTED {
            assert!(class_keys(c).is_some(), "{c}");
        }
        for (alias, class, _) in ALIASES {
            assert!(SUPPORTED.contains(class), "{alias}");
            assert!(resolve_name(alias).is_ok(), "{alias}");
        }
    }
}
