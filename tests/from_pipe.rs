//! `from_pipe` against diffusers (`tests/data/from_pipe.json`): resulting class, carried and overridden
//! config (private `_key`s included), shared components, and the chain back to the source task.

mod common;

use autopipeline::{LoadOptions, Pipeline, Task};
use serde_json::{Map, Value};

/// The scalar (non-component) entries of a recorded config.
fn scalars(config: &Value) -> Map<String, Value> {
    config
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| !v.is_array())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Our config with `_name_or_path` made relative to the fixtures folder, as diffusers recorded it.
fn ours(p: &Pipeline) -> Map<String, Value> {
    let root = common::data_dir().to_string_lossy().to_string() + "/";
    p.config()
        .iter()
        .map(|(k, v)| match (k.as_str(), v) {
            ("_name_or_path", Value::String(s)) => {
                (k.clone(), Value::String(s.trim_start_matches(&root).to_string()))
            }
            _ => (k.clone(), v.clone()),
        })
        .collect()
}

#[test]
fn from_pipe_matches_diffusers() {
    let text = std::fs::read_to_string(common::data_dir().join("from_pipe.json")).unwrap();
    let entries: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(entries.len(), 7);
    for e in &entries {
        let ckpt = common::data_dir().join(e["checkpoint"].as_str().unwrap());
        let source_task = Task::from_name(e["source_task"].as_str().unwrap()).unwrap();
        let target_task = Task::from_name(e["target_task"].as_str().unwrap()).unwrap();
        let what = format!("{} {} -> {}", e["checkpoint"], e["source_task"], e["target_task"]);
        let source =
            Pipeline::from_pretrained(ckpt.to_str().unwrap(), source_task, &LoadOptions::default(), None)
                .unwrap();
        assert_eq!(source.class_name(), e["source_class"], "{what}: source class");
        assert_eq!(
            ours(&source),
            scalars(&e["source_config"]),
            "{what}: source config"
        );

        let kwargs = e["kwargs"].as_object().cloned().unwrap_or_default();
        let result = source.from_pipe(target_task, &kwargs).unwrap();
        assert_eq!(result.class_name(), e["result_class"], "{what}: result class");
        assert_eq!(
            ours(&result),
            scalars(&e["result_config"]),
            "{what}: result config"
        );
        assert!(
            result.shares_components_with(&source),
            "{what}: components shared"
        );

        if e["chain_back"].as_bool() == Some(true) {
            let back = result.from_pipe(source_task, &Map::new()).unwrap();
            assert_eq!(
                back.class_name(),
                e["chain_back_class"],
                "{what}: chain back class"
            );
            assert_eq!(
                ours(&back),
                scalars(&e["chain_back_config"]),
                "{what}: chain back config"
            );
        }
    }
}
