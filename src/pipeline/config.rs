//! Pipeline configuration (the scalar keys of `model_index.json`) as diffusers registers and carries it
//! across `from_pipe`.

use serde_json::{Map, Value};

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
