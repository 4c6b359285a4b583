//! `model_index.json`: which pipeline class a checkpoint was saved as, and which library/class each
//! component folder holds.
//!
//! diffusers writes one entry per pipeline constructor argument: components as `[library, class]`
//! (`[null, null]` for an optional component saved as `None`, which has no folder), and plain config
//! values (`requires_safety_checker`, `force_zeros_for_empty_prompt`, …) as JSON scalars.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The file diffusers stores a pipeline's layout in (`DiffusionPipeline.config_name`).
pub const MODEL_INDEX_FILE: &str = "model_index.json";

/// One non-null component entry: a folder `name/` loaded with `library.class_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// Folder name and pipeline attribute (`unet`, `text_encoder_2`, …).
    pub name: String,
    /// Library the class comes from (`diffusers`, `transformers`, `stable_diffusion`, …).
    pub library: String,
    /// Class name inside that library (`UNet2DConditionModel`, `CLIPTextModel`, …).
    pub class_name: String,
}

/// A parsed `model_index.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelIndex {
    /// `_class_name`: the pipeline class the checkpoint was saved as (`StableDiffusionPipeline`).
    pub class_name: String,
    /// `_diffusers_version`, when present.
    pub diffusers_version: Option<String>,
    /// `_name_or_path`, when present (diffusers only writes it in some code paths).
    pub name_or_path: Option<String>,
    /// Non-null components, sorted by name (so error order never depends on a hash seed).
    pub components: Vec<Component>,
    /// Names of the `[null, null]` entries (saved as `None`; they have no folder).
    pub null_components: Vec<String>,
    /// Every other key (pipeline config such as `requires_safety_checker`), values as written.
    pub config: Map<String, Value>,
    /// The file this was read from (for error messages).
    pub path: PathBuf,
}

impl ModelIndex {
    /// Reads and parses `path`.
    ///
    /// A missing file is `Error::NotFound` naming `display` (the folder or hub id as the user gave
    /// it, like diffusers' "`<dir>` does not appear to have a file named model_index.json.");
    /// unreadable content is `Error::InvalidModel` naming `path`.
    pub fn from_file(path: &Path, display: &str) -> Result<Self> {
        let text = match crate::weights::load::read_text_file(path) {
            Ok(text) => text,
            Err(Error::NotFound(_)) => return Err(missing_model_index(display)),
            Err(Error::InvalidModel(why)) => return Err(invalid_json(path, &why)),
            Err(e) => return Err(e),
        };
        Self::parse(&text, path)
    }

    /// Parses the text of a `model_index.json`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| invalid_json(path, &e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(Error::InvalidModel(format!(
                "The config file at '{}' is not a JSON object.",
                path.display()
            )));
        };

        let class_name = match map.remove("_class_name") {
            Some(Value::String(s)) => s,
            Some(Value::Array(parts)) => {
                // `[module_file.py, ClassName]`: a custom pipeline shipped as Python code.
                return Err(Error::Unsupported(format!(
                    "'{}' names a custom pipeline defined in Python code ({}); autopipeline never \
                     executes Python code",
                    path.display(),
                    Value::Array(parts)
                )));
            }
            Some(other) => {
                return Err(Error::InvalidModel(format!(
                    "'_class_name' in '{}' must be a string, found {other}",
                    path.display()
                )));
            }
            None => {
                return Err(Error::InvalidModel(format!(
                    "'{}' has no '_class_name': is this a diffusers pipeline checkpoint?",
                    path.display()
                )));
            }
        };
        let diffusers_version = optional_string(&mut map, "_diffusers_version", path)?;
        let name_or_path = optional_string(&mut map, "_name_or_path", path)?;

        let mut components = Vec::new();
        let mut null_components = Vec::new();
        let mut config = Map::new();
        // serde_json's Map is ordered by key, so `components` comes out sorted by name.
        for (key, value) in map {
            let entry = component_entry(&value);
            // A component is a folder of the checkpoint: its name must not lead anywhere else.
            if entry.is_some() && !is_folder_name(&key) {
                return Err(Error::InvalidModel(format!(
                    "component name '{key}' in '{}' is not a plain folder name: component folders \
                     must stay inside the checkpoint folder",
                    path.display()
                )));
            }
            match entry {
                Some(Entry::Null) => null_components.push(key),
                Some(Entry::Component(library, class_name)) => components.push(Component {
                    name: key,
                    library,
                    class_name,
                }),
                Some(Entry::Malformed) => {
                    return Err(Error::InvalidModel(format!(
                        "component '{key}' in '{}' must be [library, class] or [null, null], found {value}",
                        path.display()
                    )));
                }
                None => {
                    config.insert(key, value);
                }
            }
        }

        Ok(Self {
            class_name,
            diffusers_version,
            name_or_path,
            components,
            null_components,
            config,
            path: path.to_path_buf(),
        })
    }

    /// The non-null component called `name`.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    /// Whether `name` is listed at all (as a component or as `[null, null]`).
    pub fn lists(&self, name: &str) -> bool {
        self.component(name).is_some() || self.null_components.iter().any(|n| n == name)
    }

    /// A boolean pipeline-config value (`requires_safety_checker`, `force_zeros_for_empty_prompt`).
    pub fn config_bool(&self, key: &str) -> Option<bool> {
        self.config.get(key).and_then(Value::as_bool)
    }
}

/// diffusers' message for a folder or repo without `model_index.json`, with a hint added.
pub(crate) fn missing_model_index(display: &str) -> Error {
    Error::NotFound(format!(
        "{display} does not appear to have a file named {MODEL_INDEX_FILE}: is this a diffusers checkpoint?"
    ))
}

fn invalid_json(path: &Path, reason: &str) -> Error {
    Error::InvalidModel(format!(
        "It looks like the config file at '{}' is not a valid JSON file. ({reason})",
        path.display()
    ))
}

fn optional_string(map: &mut Map<String, Value>, key: &str, path: &Path) -> Result<Option<String>> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::InvalidModel(format!(
            "'{key}' in '{}' must be a string, found {other}",
            path.display()
        ))),
    }
}

/// A single, normal path component: no separators, no `.`/`..`, no NUL, not empty.
fn is_folder_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0', ':'])
}

enum Entry {
    Null,
    Component(String, String),
    Malformed,
}

/// Classifies a value: a two-element array of strings/nulls is a component entry; anything else is
/// plain pipeline config.
fn component_entry(value: &Value) -> Option<Entry> {
    let Value::Array(items) = value else {
        return None;
    };
    match items.as_slice() {
        [Value::Null, Value::Null] => Some(Entry::Null),
        [Value::String(library), Value::String(class)] => {
            Some(Entry::Component(library.clone(), class.clone()))
        }
        [Value::String(_) | Value::Null, Value::String(_) | Value::Null] => Some(Entry::Malformed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_components_nulls_and_config() {
        let text = r#"{
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null],
            "requires_safety_checker": false,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "PNDMScheduler"]
        }"#;
        let index = ModelIndex::parse(text, Path::new("x/model_index.json")).unwrap();
        assert_eq!(index.class_name, "StableDiffusionPipeline");
        assert_eq!(index.diffusers_version.as_deref(), Some("0.42.1"));
        let names: Vec<_> = index.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["scheduler", "unet"]);
        assert_eq!(
            index.component("unet").unwrap().class_name,
            "UNet2DConditionModel"
        );
        assert_eq!(index.null_components, ["feature_extractor"]);
        assert!(index.lists("feature_extractor"));
        assert_eq!(index.config_bool("requires_safety_checker"), Some(false));
    }

    #[test]
    fn rejects_bad_files() {
        let p = Path::new("m/model_index.json");
        let err = ModelIndex::parse("{\"_class_name\": ", p).unwrap_err();
        assert!(matches!(&err, Error::InvalidModel(m)
            if m.starts_with("It looks like the config file at 'm/model_index.json' is not a valid JSON file. (")));
        assert!(
            matches!(ModelIndex::parse("{}", p), Err(Error::InvalidModel(m)) if m.contains("m/model_index.json"))
        );
        assert!(matches!(ModelIndex::parse("[1]", p), Err(Error::InvalidModel(_))));
        let half_null = r#"{"_class_name": "P", "unet": ["diffusers", null]}"#;
        assert!(matches!(ModelIndex::parse(half_null, p), Err(Error::InvalidModel(m)) if m.contains("unet")));
        let custom = r#"{"_class_name": ["pipeline.py", "MyPipeline"]}"#;
        assert!(matches!(ModelIndex::parse(custom, p), Err(Error::Unsupported(_))));
    }
}
