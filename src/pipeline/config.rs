//! Pipeline configuration (the scalar keys of `model_index.json`) as diffusers registers and carries it
//! across `from_pipe`.

use crate::registry::{Family, Task};
use crate::schedulers::SchedulerConfig;
use serde_json::{Map, Value};

/// The config keys a pipeline class takes, with its defaults.
fn expected(family: Family, task: Task) -> Vec<(&'static str, Value)> {
    match (family, task) {
        (Family::StableDiffusion, _) => vec![("requires_safety_checker", Value::Bool(true))],
        (Family::StableDiffusionXl, Task::Text2Image) => {
            vec![("force_zeros_for_empty_prompt", Value::Bool(true))]
        }
        (Family::StableDiffusionXl, _) => vec![
            ("requires_aesthetics_score", Value::Bool(false)),
            ("force_zeros_for_empty_prompt", Value::Bool(true)),
        ],
    }
}

/// The config of a pipeline of `(family, task)` built from `base` (another pipeline's config, or the
/// checkpoint's `model_index.json` scalars) with `overrides` winning, as diffusers' `from_pipe` does:
/// each key the class takes comes from the overrides, else `base` (also from its `_key` form, kept by an
/// earlier hop), else the class default; keys the class does not take are kept with a leading `_`.
pub fn derive(
    family: Family,
    task: Task,
    base: &Map<String, Value>,
    overrides: &Map<String, Value>,
) -> Map<String, Value> {
    let keys = expected(family, task);
    let mut out = Map::new();
    for (k, default) in &keys {
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

/// What diffusers' SD pipeline constructors do to an outdated scheduler config (diffusers also prints a
/// deprecation warning), on the scheduler object every pipeline made by `from_pipe` shares: `steps_offset`
/// becomes 1; text2img and img2img turn a `clip_sample` of true off, inpainting turns a `skip_prk_steps`
/// of false on. SDXL pipelines leave the config alone.
pub fn patch_legacy_scheduler(family: Family, task: Task, cfg: &mut SchedulerConfig) {
    if family != Family::StableDiffusion {
        return;
    }
    // `getattr(scheduler.config, key, default)`: only keys the scheduler's class has.
    let keys = crate::schedulers::class_keys(&cfg.class_name).unwrap_or_default();
    let takes = |k: &str| keys.iter().any(|(key, _)| *key == k);
    // A key the file had is rewritten; one the class filled in stays a default, which a later
    // `from_config` to another class drops (diffusers' `_use_default_values`).
    let in_file = |cfg: &mut SchedulerConfig, key: &str, value: Value| {
        if let Some(v) = cfg.raw.get_mut(key) {
            *v = value;
        }
    };
    if takes("steps_offset") && cfg.steps_offset != 1 {
        cfg.steps_offset = 1;
        in_file(cfg, "steps_offset", Value::from(1));
    }
    match task {
        Task::Inpaint if takes("skip_prk_steps") && !cfg.skip_prk_steps => {
            cfg.skip_prk_steps = true;
            in_file(cfg, "skip_prk_steps", Value::Bool(true));
        }
        Task::Text2Image | Task::Image2Image if takes("clip_sample") && cfg.clip_sample => {
            cfg.clip_sample = false;
            in_file(cfg, "clip_sample", Value::Bool(false));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sched(text: &str) -> SchedulerConfig {
        SchedulerConfig::from_json(text, "test").unwrap()
    }

    #[test]
    fn sd_constructors_patch_outdated_scheduler_configs() {
        // DDIM whose file lacks clip_sample: the class default (true) is turned off by SD text2img, and
        // stays a default (not written into the file's keys).
        let mut ddim = sched(r#"{"_class_name": "DDIMScheduler", "steps_offset": 0}"#);
        assert!(ddim.clip_sample);
        patch_legacy_scheduler(Family::StableDiffusion, Task::Text2Image, &mut ddim);
        assert_eq!((ddim.clip_sample, ddim.steps_offset), (false, 1));
        assert_eq!(ddim.raw.get("steps_offset"), Some(&json!(1)));
        assert_eq!(ddim.raw.get("clip_sample"), None);
        // Inpainting leaves clip_sample alone but turns the Runge-Kutta warm-up off.
        let mut ddim = sched(r#"{"_class_name": "DDIMScheduler", "clip_sample": true}"#);
        patch_legacy_scheduler(Family::StableDiffusion, Task::Inpaint, &mut ddim);
        assert!(ddim.clip_sample);
        let mut pndm = sched(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": false}"#);
        patch_legacy_scheduler(Family::StableDiffusion, Task::Inpaint, &mut pndm);
        assert!(pndm.skip_prk_steps);
        assert_eq!(pndm.raw.get("skip_prk_steps"), Some(&json!(true)));
        // SDXL pipelines patch nothing; classes without the key are not touched.
        let mut pndm =
            sched(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": false, "steps_offset": 0}"#);
        patch_legacy_scheduler(Family::StableDiffusionXl, Task::Inpaint, &mut pndm);
        assert!(!pndm.skip_prk_steps && pndm.steps_offset == 0);
        let mut euler = sched(r#"{"_class_name": "EulerDiscreteScheduler", "clip_sample": true}"#);
        patch_legacy_scheduler(Family::StableDiffusion, Task::Text2Image, &mut euler);
        assert_eq!(
            euler.raw.get("clip_sample"),
            Some(&json!(true)),
            "Euler has no clip_sample"
        );
    }

    #[test]
    fn unknown_keys_are_kept_private_and_come_back() {
        let base = json!({"force_zeros_for_empty_prompt": true, "_name_or_path": "x"});
        let i2i = derive(
            Family::StableDiffusionXl,
            Task::Image2Image,
            base.as_object().unwrap(),
            &Map::new(),
        );
        assert_eq!(i2i["requires_aesthetics_score"], json!(false));
        let back = derive(Family::StableDiffusionXl, Task::Text2Image, &i2i, &Map::new());
        assert_eq!(back["_requires_aesthetics_score"], json!(false));
        assert_eq!(back["_name_or_path"], json!("x"));
        let again = derive(Family::StableDiffusionXl, Task::Inpaint, &back, &Map::new());
        assert_eq!(again["requires_aesthetics_score"], json!(false));
        assert!(!again.contains_key("_requires_aesthetics_score"));
    }
}
