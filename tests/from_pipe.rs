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

/// diffusers' SD constructors patch an outdated scheduler config on the scheduler object that pipelines
/// made by `from_pipe` share: an inpainting pipeline keeps DDIM's `clip_sample: true`, and making a
/// text2img pipeline from it turns the flag off for both (`StableDiffusionPipeline.__init__`).
#[test]
fn from_pipe_patches_the_shared_scheduler_like_diffusers_constructors() {
    let src = common::data_dir().join("checkpoints/sd15-tiny");
    let dir = std::env::temp_dir().join(format!("ap-from-pipe-sched-{}", std::process::id()));
    for sub in ["", "scheduler", "text_encoder", "tokenizer", "unet", "vae"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dir.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
    let index_path = dir.join("model_index.json");
    let mut index: Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["scheduler"] = serde_json::json!(["diffusers", "DDIMScheduler"]);
    std::fs::write(&index_path, index.to_string()).unwrap();
    std::fs::write(
        dir.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "DDIMScheduler", "clip_sample": true, "steps_offset": 0, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "beta_end": 0.012}"#,
    )
    .unwrap();
    let inpaint = Pipeline::from_pretrained(
        dir.to_str().unwrap(),
        Task::Inpaint,
        &LoadOptions::default(),
        None,
    )
    .unwrap();
    let s = inpaint.components().scheduler();
    assert_eq!(
        (s.class_name.as_str(), s.clip_sample, s.steps_offset),
        ("DDIMScheduler", true, 1)
    );
    let t2i = inpaint.from_pipe(Task::Text2Image, &Map::new()).unwrap();
    assert!(!t2i.components().scheduler().clip_sample);
    assert!(
        !inpaint.components().scheduler().clip_sample,
        "the scheduler is shared"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
