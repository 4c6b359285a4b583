//! Pipeline configuration (the scalar keys of `model_index.json`) as diffusers registers and carries it
//! across `from_pipe`.

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// Component names of diffusers' pipeline classes (their `__init__` modules): never settable through
/// `from_pipe` overrides, whether or not the checkpoint has them.
const PIPELINE_MODULES: &[&str] = &[
    "vae",
    "unet",
    "transformer",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "scheduler",
    "safety_checker",
    "feature_extractor",
    "image_encoder",
    "controlnet",
];

/// Run defaults a `from_pipe` override may set: they apply to the new pipeline's runs that leave the
/// value unset (a run's own value still wins).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunDefaultOverrides {
    pub strength: Option<f64>,
    pub guidance_scale: Option<f64>,
    pub num_inference_steps: Option<usize>,
}

/// Checks `from_pipe` overrides before anything is built. Accepted: the config keys the target class
/// registers (`keys`, with the JSON type of their default) and the run defaults `strength` (in
/// `[0, 1]`), `guidance_scale` (finite) and `num_inference_steps` (`1..=max_steps`), which are
/// returned. Refused with [`Error::InvalidArgument`] naming the key: private `_` keys, component names
/// (`components`, the checkpoint's `model_index.json` entries, and diffusers' module names), unknown
/// keys and wrong types. diffusers' `from_pipe` silently drops keys its class does not take; a C
/// caller gets no warning channel for that, so a typo is an error here.
pub fn check_overrides(
    keys: &[(&'static str, Value)],
    components: &[String],
    overrides: &Map<String, Value>,
    max_steps: usize,
) -> Result<RunDefaultOverrides> {
    let bad = |msg: String| Err(Error::InvalidArgument(format!("from_pipe override {msg}")));
    let mut run = RunDefaultOverrides::default();
    for (k, v) in overrides {
        if k.starts_with('_') {
            return bad(format!(
                "`{k}` is not settable: keys starting with `_` are set by the library"
            ));
        }
        if components.iter().any(|c| c == k) || PIPELINE_MODULES.contains(&k.as_str()) {
            return bad(format!(
                "`{k}` names a pipeline component; overrides set config keys and run defaults only \
                 (replacing a component will get its own API)"
            ));
        }
        if let Some((_, default)) = keys.iter().find(|(name, _)| name == k) {
            if std::mem::discriminant(default) != std::mem::discriminant(v) {
                return bad(format!(
                    "`{k}` must be a {}, like its default {default}, not {v}",
                    json_kind(default)
                ));
            }
            continue;
        }
        match k.as_str() {
            "strength" => match v.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => run.strength = Some(x),
                _ => return bad(format!("`strength` must be a number in [0, 1], not {v}")),
            },
            "guidance_scale" => match v.as_f64() {
                Some(x) if x.is_finite() => run.guidance_scale = Some(x),
                _ => return bad(format!("`guidance_scale` must be a finite number, not {v}")),
            },
            "num_inference_steps" => match v.as_u64() {
                Some(n) if n >= 1 && n <= max_steps as u64 => run.num_inference_steps = Some(n as usize),
                _ => {
                    return bad(format!(
                        "`num_inference_steps` must be an integer in 1..={max_steps}, not {v}"
                    ))
                }
            },
            _ => {
                let mut accepted: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
                accepted.extend(["strength", "guidance_scale", "num_inference_steps"]);
                return bad(format!(
                    "`{k}` is not a key this pipeline takes; accepted keys: {}",
                    accepted.join(", ")
                ));
            }
        }
    }
    Ok(run)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The config of a pipeline whose class registers `keys` (with their defaults; see
/// [`super::families::FamilyPipeline::config_keys`]), built from `base` (another pipeline's config, or the
/// checkpoint's `model_index.json` scalars) with `overrides` winning, as diffusers' `from_pipe` does:
/// each key the class takes comes from the overrides, else `base` (also from its `_key` form, kept by an
/// earlier hop), else the class default; keys the class does not take are kept with a leading `_`.
pub fn derive(
    keys: &[(&'static str, Value)],
    base: &Map<String, Value>,
    overrides: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, default) in keys {
        let v = overrides
            .get(*k)
            .or_else(|| base.get(*k))
            .or_else(|| base.get(&format!("_{k}")))
            .cloned()
            .unwrap_or_else(|| default.clone());
        out.insert((*k).to_string(), v);
    }
    for (k, v) in base {
        let bare = k.strip_prefix('_').unwrap_or(k);
        if keys.iter().any(|(e, _)| *e == bare) {
            continue;
        }
        let name = if k.starts_with('_') {
            k.clone()
        } else {
            format!("_{k}")
        };
        out.insert(name, v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::families::imp;
    use crate::registry::{Family, Task};
    use serde_json::json;

    #[test]
    fn unknown_keys_are_kept_private_and_come_back() {
        let base = json!({"force_zeros_for_empty_prompt": true, "_name_or_path": "x"});
        let keys = |task| imp(Family::StableDiffusionXl).config_keys(task);
        let i2i = derive(&keys(Task::Image2Image), base.as_object().unwrap(), &Map::new());
        assert_eq!(i2i["requires_aesthetics_score"], json!(false));
        let back = derive(&keys(Task::Text2Image), &i2i, &Map::new());
        assert_eq!(back["_requires_aesthetics_score"], json!(false));
        assert_eq!(back["_name_or_path"], json!("x"));
        let again = derive(&keys(Task::Inpaint), &back, &Map::new());
        assert_eq!(again["requires_aesthetics_score"], json!(false));
        assert!(!again.contains_key("_requires_aesthetics_score"));
    }
}
