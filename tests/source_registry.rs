//! Model sources, `model_index.json` and the AutoPipeline registry against diffusers' recorded
//! behaviour (`tests/data/unsupported/errors.json`, `tests/data/task_matrix.json`), plus variant,
//! shard, pickle, path-escape and HF-cache cases built in temporary folders. Nothing here touches
//! the network: hub cases pass `offline` and a private `cache_dir`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use autopipeline::error::Error;
use autopipeline::registry::{self, Family, Task};
use autopipeline::source::{ModelSource, SourceOptions};
use serde_json::Value;

/// A folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("autopipeline-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `rel` (creating folders) and returns its path.
    fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn local(path: &Path, opts: &SourceOptions) -> ModelSource {
    ModelSource::resolve(path.to_str().unwrap(), opts).unwrap()
}

fn with_variant(variant: &str) -> SourceOptions {
    SourceOptions {
        variant: Some(variant.into()),
        ..Default::default()
    }
}

fn offline(cache: &Path) -> SourceOptions {
    SourceOptions {
        cache_dir: Some(cache.to_path_buf()),
        offline: Some(true),
        ..Default::default()
    }
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect()
}

fn task(name: &str) -> Task {
    Task::from_name(name).unwrap_or_else(|| panic!("unknown task {name}"))
}

const SD_INDEX: &str = r#"{
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.42.1",
  "safety_checker": [null, null],
  "requires_safety_checker": false,
  "text_encoder": ["transformers", "CLIPTextModel"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}"#;

// ---------------------------------------------------------------------------------------------
// diffusers' recorded outcomes

#[test]
fn every_errors_json_case_has_diffusers_category_and_text() {
    let data = common::data_dir();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(data.join("unsupported/errors.json")).unwrap())
            .unwrap();
    assert_eq!(cases.len(), 15);
    let empty_cache = TempDir::new("empty-cache");
    let prefix = format!("{}/", data.display());
    for case in &cases {
        let dir = case["dir"].as_str().unwrap();
        let task = task(case["task"].as_str().unwrap());
        let expected = case["error_message"].as_str().unwrap();
        let error_type = case["error_type"].as_str().unwrap();

        let err = if dir == "unsupported/does-not-exist" {
            // diffusers got this name as a (relative) path that does not exist, hence as a hub id,
            // with HF_HUB_OFFLINE=1; the same holds here (the test runs in the crate root).
            assert!(!Path::new(dir).exists());
            let source = ModelSource::resolve(dir, &offline(empty_cache.path())).unwrap();
            registry::plan(&source, task).unwrap_err()
        } else {
            let source = local(&data.join(dir), &SourceOptions::default());
            match registry::plan(&source, task) {
                Err(e) => e,
                // A family we implement: the plan holds, and loading fails on the missing files, as
                // diffusers' does.
                Ok(plan) => {
                    assert!(
                        supported_error(error_type, expected),
                        "{dir} {task:?}: planned {plan:?}"
                    );
                    autopipeline::Pipeline::from_pretrained(
                        data.join(dir).to_str().unwrap(),
                        task,
                        &Default::default(),
                        None,
                    )
                    .unwrap_err()
                }
            }
        };
        let context = format!("{dir} {task:?}: {err:?}");
        let message = err.to_string().replace(&prefix, "");
        match error_type {
            "ValueError" => {
                assert!(matches!(err, Error::Unsupported(_)), "{context}");
                assert!(
                    expected.starts_with("AutoPipeline can't find a pipeline linked to"),
                    "{context}"
                );
                assert!(message.starts_with(&format!("{expected}. ")), "{context}");
                assert!(
                    message.ends_with("stable-diffusion, stable-diffusion-xl, stable-diffusion-3, lcm, flux"),
                    "{context}"
                );
            }
            "OSError" if expected.contains("is not a valid JSON file") => {
                assert!(matches!(err, Error::InvalidModel(_)), "{context}");
                assert!(message.starts_with(expected), "{context}");
            }
            "OSError" if expected.contains("does not appear to have a file named model_index.json") => {
                assert!(matches!(err, Error::NotFound(_)), "{context}");
                let stem = expected.trim_end_matches('.');
                assert!(message.starts_with(stem), "{context}");
            }
            "OSError" if matches!(&err, Error::NotFound(m) if !m.contains("has no folder for component")) => {
                // A family we implement, whose component files are missing: the loader names the
                // first file it looked for.
                assert!(expected.starts_with("Error no file named"), "{context}");
                assert!(message.contains(dir), "{context}");
            }
            "OSError" => {
                // A component of a family we don't implement is missing: diffusers fails loading
                // it (which one depends on Python's hash seed); we name the first missing folder.
                assert!(expected.starts_with("Error no file named"), "{context}");
                assert!(matches!(err, Error::NotFound(_)), "{context}");
                assert!(message.contains("has no folder for component"), "{context}");
                assert!(
                    message.starts_with(&format!("{dir} has no folder for component")),
                    "{context}"
                );
            }
            other => panic!("unexpected error type {other} in {context}"),
        }
    }
}

/// Whether diffusers failed on missing component files (what a family we implement fails on at load).
fn supported_error(error_type: &str, expected: &str) -> bool {
    error_type == "OSError" && expected.starts_with("Error no file named")
}

#[test]
fn missing_folder_given_as_a_path_is_not_found() {
    let path = common::data_dir().join("unsupported/does-not-exist");
    let err = ModelSource::resolve(path.to_str().unwrap(), &SourceOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("is neither a folder nor a hub id")),
        "{err:?}"
    );
    assert!(err.to_string().contains(path.to_str().unwrap()));
}

#[test]
fn every_task_matrix_row_resolves_to_the_recorded_class() {
    let data = common::data_dir();
    let rows: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(data.join("task_matrix.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 15);
    for row in &rows {
        assert_eq!(row["load"], "ok");
        let source = local(
            &data.join(row["checkpoint"].as_str().unwrap()),
            &SourceOptions::default(),
        );
        let plan = registry::plan(&source, task(row["task"].as_str().unwrap())).unwrap();
        assert_eq!(plan.index.class_name, row["model_index_class"].as_str().unwrap());
        assert_eq!(
            plan.resolved.pipeline_class,
            row["resolved_class"].as_str().unwrap(),
            "{row}"
        );
        assert_eq!(plan.resolved.family, Some(plan.family));
        let expected_family = if plan.index.class_name.contains("XL") {
            Family::StableDiffusionXl
        } else {
            Family::StableDiffusion
        };
        assert_eq!(plan.family, expected_family);
        assert!(plan
            .index
            .null_components
            .contains(&"feature_extractor".to_string()));
        // Every listed component has its folder, its config and (for models) safetensors weights.
        for component in &plan.index.components {
            assert!(
                source.component_dir_exists(&component.name).unwrap(),
                "{}",
                component.name
            );
            let base = match component.name.as_str() {
                "unet" | "vae" => Some("diffusion_pytorch_model"),
                "text_encoder" | "text_encoder_2" => Some("model"),
                _ => None,
            };
            if let Some(base) = base {
                let weights = source.weights(&component.name, base).unwrap();
                assert_eq!(names(&weights), [format!("{base}.safetensors")]);
                source.file(&component.name, "config.json").unwrap();
            }
        }
    }
}

#[test]
fn checkpoint_files_and_configs() {
    let data = common::data_dir();
    let sd15 = local(&data.join("checkpoints/sd15-tiny"), &SourceOptions::default());
    let index = sd15.model_index().unwrap();
    assert_eq!(index.config_bool("requires_safety_checker"), Some(false));
    assert_eq!(index.component("scheduler").unwrap().class_name, "PNDMScheduler");
    assert!(sd15.file("scheduler", "scheduler_config.json").unwrap().is_file());
    assert!(sd15.file("tokenizer", "vocab.json").unwrap().is_file());
    assert_eq!(sd15.optional_file("tokenizer", "tokenizer.json").unwrap(), None);
    let err = sd15.file("tokenizer", "tokenizer.json").unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.starts_with("Error no file named tokenizer.json found in directory")
        && m.contains("sd15-tiny/tokenizer")),
        "{err:?}"
    );
    assert!(!sd15.component_dir_exists("safety_checker").unwrap());
    assert_eq!(
        sd15.component_files("unet").unwrap(),
        ["config.json", "diffusion_pytorch_model.safetensors"]
    );

    let sdxl = local(&data.join("checkpoints/sdxl-tiny"), &SourceOptions::default());
    assert_eq!(
        sdxl.model_index()
            .unwrap()
            .config_bool("force_zeros_for_empty_prompt"),
        Some(true)
    );
    assert!(sdxl.file("tokenizer_2", "tokenizer.json").unwrap().is_file());
}

// ---------------------------------------------------------------------------------------------
// registry

#[test]
fn family_table_mirrors_diffusers() {
    let rows = registry::all_families();
    assert_eq!(
        rows.len(),
        67,
        "{:?}",
        rows.iter().map(|r| r.name).collect::<Vec<_>>()
    );
    assert_eq!(
        registry::supported_families(),
        [
            "stable-diffusion",
            "stable-diffusion-xl",
            "stable-diffusion-3",
            "lcm",
            "flux"
        ]
    );
    for name in [
        "if",
        "kandinsky",
        "kandinsky22",
        "kandinsky3",
        "stable-diffusion-controlnet",
        "pixart-alpha",
        "pixart-sigma",
        "sana",
        "cascade",
        "hunyuan",
        "lumina",
        "auraflow",
        "cogview3",
        "qwenimage",
        "wan",
    ] {
        let row = rows
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(row.family, None, "{name}");
    }
    let flux = rows.iter().find(|r| r.name == "flux").expect("flux row");
    assert_eq!(flux.family, Some(autopipeline::Family::Flux));
    // Any class of a family, as `_class_name`, gives the family's class for each task (or diffusers'
    // error when the family has none).
    for row in &rows {
        let classes = [row.text2image, row.image2image, row.inpaint];
        for cls in classes.into_iter().flatten() {
            for task in Task::ALL {
                match (registry::resolve(cls, task), row.class_for(task)) {
                    (Ok(r), Some(expected)) => {
                        assert_eq!(r.pipeline_class, expected, "{cls} {task:?}");
                        assert_eq!(r.family_name, row.name);
                        assert_eq!(r.family, row.family);
                    }
                    (Err(Error::Unsupported(m)), None) => {
                        assert!(
                            m.starts_with("AutoPipeline can't find a pipeline linked to"),
                            "{m}"
                        )
                    }
                    (other, expected) => panic!("{cls} {task:?}: {other:?}, expected {expected:?}"),
                }
            }
        }
    }
    let err = registry::resolve("NotAPipeline", Task::Text2Image).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("AutoPipeline can't find a pipeline linked to NotAPipeline for None. "));
}

#[test]
fn unsupported_family_with_all_folders_is_reported_as_not_yet() {
    let dir = TempDir::new("kolors-full");
    dir.write(
        "model_index.json",
        &SD_INDEX.replace("StableDiffusionPipeline", "KolorsPipeline"),
    );
    for component in ["text_encoder", "unet", "vae"] {
        dir.write(&format!("{component}/config.json"), "{}");
    }
    let source = local(dir.path(), &SourceOptions::default());
    let err = registry::plan(&source, Task::Image2Image).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported(m)
        if m.starts_with("kolors (KolorsImg2ImgPipeline) is known to diffusers but not supported by autopipeline yet")
        && m.ends_with("stable-diffusion, stable-diffusion-xl, stable-diffusion-3, lcm, flux")),
        "{err:?}"
    );
    // The task lookup comes first: kolors has no inpainting pipeline.
    let err = registry::plan(&source, Task::Inpaint).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("AutoPipeline can't find a pipeline linked to KolorsPipeline for kolors"));
}

// ---------------------------------------------------------------------------------------------
// weights: variants, shards, pickles

/// unet: regular + fp16; vae: regular only; text_encoder: regular + fp16.
fn variant_checkpoint() -> TempDir {
    let dir = TempDir::new("variant");
    dir.write("model_index.json", SD_INDEX);
    for f in [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
    ] {
        dir.write(&format!("unet/{f}"), "x");
    }
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        dir.write(&format!("vae/{f}"), "x");
    }
    for f in ["config.json", "model.safetensors", "model.fp16.safetensors"] {
        dir.write(&format!("text_encoder/{f}"), "x");
    }
    dir
}

#[test]
fn variant_files_are_preferred_with_per_component_fallback() {
    let dir = variant_checkpoint();
    let fp16 = local(dir.path(), &with_variant("fp16"));
    assert_eq!(fp16.variant(), Some("fp16"));
    registry::plan(&fp16, Task::Text2Image).unwrap();
    assert_eq!(
        names(&fp16.weights("unet", "diffusion_pytorch_model").unwrap()),
        ["diffusion_pytorch_model.fp16.safetensors"]
    );
    assert_eq!(
        names(&fp16.weights("vae", "diffusion_pytorch_model").unwrap()),
        ["diffusion_pytorch_model.safetensors"]
    );
    assert_eq!(
        names(&fp16.weights("text_encoder", "model").unwrap()),
        ["model.fp16.safetensors"]
    );

    let plain = local(dir.path(), &SourceOptions::default());
    assert_eq!(
        names(&plain.weights("unet", "diffusion_pytorch_model").unwrap()),
        ["diffusion_pytorch_model.safetensors"]
    );

    // A variant no component has: diffusers refuses the pipeline ...
    let bf16 = local(dir.path(), &with_variant("bf16"));
    let err = registry::plan(&bf16, Task::Text2Image).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("`variant=bf16`")),
        "{err:?}"
    );
    // ... while a single component falls back to its regular weights.
    assert_eq!(
        names(&bf16.weights("unet", "diffusion_pytorch_model").unwrap()),
        ["diffusion_pytorch_model.safetensors"]
    );

    let err = ModelSource::resolve(dir.path().to_str().unwrap(), &with_variant("../fp16")).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[test]
fn variant_without_safetensors_of_it_falls_back_then_refuses_pickles() {
    let dir = TempDir::new("variant-bin");
    dir.write("unet/diffusion_pytorch_model.fp16.bin", "x");
    dir.write("unet/diffusion_pytorch_model.safetensors", "x");
    dir.write("vae/diffusion_pytorch_model.fp16.bin", "x");
    let source = local(dir.path(), &with_variant("fp16"));
    assert_eq!(
        names(&source.weights("unet", "diffusion_pytorch_model").unwrap()),
        ["diffusion_pytorch_model.safetensors"]
    );
    let err = source.weights("vae", "diffusion_pytorch_model").unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported(m) if m.contains("diffusion_pytorch_model.fp16.bin")),
        "{err:?}"
    );
}

fn index_json(pairs: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    serde_json::json!({ "metadata": { "total_size": 8 }, "weight_map": map }).to_string()
}

#[test]
fn sharded_weights_follow_the_index() {
    let dir = TempDir::new("shards");
    let shard1 = "diffusion_pytorch_model-00001-of-00002.safetensors";
    let shard2 = "diffusion_pytorch_model-00002-of-00002.safetensors";
    dir.write(
        "unet/diffusion_pytorch_model.safetensors.index.json",
        &index_json(&[("a.weight", shard2), ("b.weight", shard1), ("c.weight", shard1)]),
    );
    dir.write(&format!("unet/{shard1}"), "x");
    dir.write(&format!("unet/{shard2}"), "x");
    // The index wins over a single file, as in diffusers.
    dir.write("unet/diffusion_pytorch_model.safetensors", "x");
    let source = local(dir.path(), &SourceOptions::default());
    let shards = source.weights("unet", "diffusion_pytorch_model").unwrap();
    assert_eq!(names(&shards), [shard1, shard2]);
    assert!(shards.iter().all(|p| p.starts_with(dir.path())));

    // Variant indexes: the current `<base>.safetensors.index.<variant>.json` name, and the legacy
    // `<base>.safetensors.<variant>.index.json` one.
    let v1 = "model.fp16-00001-of-00002.safetensors";
    let v2 = "model.fp16-00002-of-00002.safetensors";
    dir.write(
        "text_encoder/model.safetensors.index.fp16.json",
        &index_json(&[("x", v1), ("y", v2)]),
    );
    dir.write(&format!("text_encoder/{v1}"), "x");
    dir.write(&format!("text_encoder/{v2}"), "x");
    dir.write("text_encoder/model.safetensors", "x");
    let legacy1 = "diffusion_pytorch_model-00001-of-00002.fp16.safetensors";
    dir.write(
        "vae/diffusion_pytorch_model.safetensors.fp16.index.json",
        &index_json(&[("x", legacy1)]),
    );
    dir.write(&format!("vae/{legacy1}"), "x");
    let fp16 = local(dir.path(), &with_variant("fp16"));
    assert_eq!(names(&fp16.weights("text_encoder", "model").unwrap()), [v1, v2]);
    assert_eq!(
        names(&fp16.weights("vae", "diffusion_pytorch_model").unwrap()),
        [legacy1]
    );
    assert_eq!(
        names(
            &local(dir.path(), &SourceOptions::default())
                .weights("text_encoder", "model")
                .unwrap()
        ),
        ["model.safetensors"]
    );
}

#[test]
fn broken_indexes_are_refused() {
    let dir = TempDir::new("bad-shards");
    let source = local(dir.path(), &SourceOptions::default());
    let index = "unet/diffusion_pytorch_model.safetensors.index.json";

    dir.write(
        index,
        &index_json(&[("a", "diffusion_pytorch_model-00001-of-00002.safetensors")]),
    );
    let err = source.weights("unet", "diffusion_pytorch_model").unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("diffusion_pytorch_model-00001-of-00002.safetensors")
        && m.contains("required according to the checkpoint index")),
        "{err:?}"
    );

    dir.write("secret.safetensors", "x");
    for shard in ["../secret.safetensors", "/etc/passwd", "sub/x.safetensors", ".."] {
        dir.write(index, &index_json(&[("a", shard)]));
        let err = source.weights("unet", "diffusion_pytorch_model").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidModel(m) if m.contains("path separator")),
            "{shard}: {err:?}"
        );
    }

    dir.write(index, "{\"weight_map\": ");
    let err = source.weights("unet", "diffusion_pytorch_model").unwrap_err();
    assert!(
        matches!(&err, Error::InvalidModel(m) if m.contains("index.json")),
        "{err:?}"
    );
    dir.write(index, "{\"metadata\": {}}");
    assert!(matches!(
        source.weights("unet", "diffusion_pytorch_model"),
        Err(Error::InvalidModel(_))
    ));
    dir.write(index, "{\"weight_map\": {}}");
    assert!(matches!(
        source.weights("unet", "diffusion_pytorch_model"),
        Err(Error::InvalidModel(_))
    ));
}

#[test]
fn pickle_weights_are_refused_and_missing_weights_are_not_found() {
    let dir = TempDir::new("pickle");
    dir.write("unet/config.json", "{}");
    dir.write("unet/diffusion_pytorch_model.bin", "x");
    dir.write("text_encoder/pytorch_model.bin", "x");
    dir.write("vae/model.ckpt", "x");
    dir.write("empty/config.json", "{}");
    let source = local(dir.path(), &SourceOptions::default());
    for (component, base, file) in [
        ("unet", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
        ("text_encoder", "model", "pytorch_model.bin"),
        ("vae", "diffusion_pytorch_model", "model.ckpt"),
    ] {
        let err = source.weights(component, base).unwrap_err();
        let Error::Unsupported(m) = &err else {
            panic!("{err:?}")
        };
        assert!(m.contains(&format!("({file})")), "{m}");
        assert!(
            m.contains("has only pickle weights") && m.contains("never executes pickles"),
            "{m}"
        );
        assert!(
            m.contains(&dir.path().join(component).display().to_string()),
            "{m}"
        );
    }
    for component in ["empty", "missing"] {
        let err = source.weights(component, "diffusion_pytorch_model").unwrap_err();
        let expected = format!(
            "Error no file named diffusion_pytorch_model.safetensors found in directory {}.",
            dir.path().join(component).display()
        );
        assert!(matches!(&err, Error::NotFound(m) if *m == expected), "{err:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// containment

#[test]
fn names_that_leave_the_folder_are_invalid() {
    let dir = TempDir::new("escape-names");
    dir.write("inner/model_index.json", SD_INDEX);
    dir.write("inner/unet/config.json", "{}");
    dir.write("outside.json", "{}");
    let source = local(&dir.path().join("inner"), &SourceOptions::default());
    for (component, name) in [
        ("../", "outside.json"),
        ("..", "outside.json"),
        ("unet", "../../outside.json"),
        ("/etc", "passwd"),
        ("unet", "/etc/passwd"),
        ("unet\\..", "x"),
        ("./unet", "config.json"),
    ] {
        let err = source.file(component, name).unwrap_err();
        assert!(
            matches!(err, Error::InvalidModel(_)),
            "{component} {name}: {err:?}"
        );
    }
    assert!(matches!(
        source.component_dir_exists(".."),
        Err(Error::InvalidModel(_))
    ));
    assert!(matches!(
        source.weights("../inner/unet", "diffusion_pytorch_model"),
        Err(Error::InvalidModel(_))
    ));

    // A model_index.json whose component names leave the folder.
    let evil = TempDir::new("escape-index");
    evil.write(
        "model_index.json",
        r#"{"_class_name": "PixArtAlphaPipeline", "../vae": ["diffusers", "AutoencoderKL"]}"#,
    );
    let err = registry::plan(&local(evil.path(), &SourceOptions::default()), Task::Text2Image).unwrap_err();
    assert!(matches!(err, Error::InvalidModel(_)), "{err:?}");
}

#[cfg(unix)]
#[test]
fn symlinks_that_leave_the_folder_are_invalid() {
    use std::os::unix::fs::symlink;
    let dir = TempDir::new("escape-links");
    let outside = dir.write("outside/diffusion_pytorch_model.safetensors", "x");
    let root = dir.path().join("ckpt");
    dir.write("ckpt/model_index.json", SD_INDEX);
    dir.write("ckpt/vae/real.safetensors", "x");
    std::fs::create_dir_all(root.join("unet")).unwrap();
    symlink(&outside, root.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    symlink(dir.path().join("outside"), root.join("text_encoder")).unwrap();
    // A link that stays inside is fine.
    symlink(
        root.join("vae/real.safetensors"),
        root.join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();

    let source = local(&root, &SourceOptions::default());
    let err = source.weights("unet", "diffusion_pytorch_model").unwrap_err();
    assert!(
        matches!(&err, Error::InvalidModel(m) if m.contains("outside the checkpoint folder")),
        "{err:?}"
    );
    assert!(matches!(
        source.component_dir_exists("text_encoder"),
        Err(Error::InvalidModel(_))
    ));
    assert!(matches!(
        source.file("text_encoder", "diffusion_pytorch_model.safetensors"),
        Err(Error::InvalidModel(_))
    ));
    assert_eq!(
        names(&source.weights("vae", "diffusion_pytorch_model").unwrap()),
        ["diffusion_pytorch_model.safetensors"]
    );
}

// ---------------------------------------------------------------------------------------------
// sources

#[test]
fn ids_and_paths() {
    let data = common::data_dir();
    let sd15 = data.join("checkpoints/sd15-tiny");
    let source = local(&sd15, &SourceOptions::default());
    assert!(!source.is_hub());
    assert_eq!(source.display_name(), sd15.to_str().unwrap());
    assert_eq!(source.local_dir().unwrap(), sd15);
    // Empty strings (a C caller's "not set") are not set.
    let empty = SourceOptions {
        variant: Some(String::new()),
        revision: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(local(&sd15, &empty).variant(), None);

    let file = sd15.join("model_index.json");
    assert!(matches!(
        ModelSource::resolve(file.to_str().unwrap(), &SourceOptions::default()),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        ModelSource::resolve("", &SourceOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    for bad in ["no-owner-folder-xyz", "a/b/c-not-here", "./not-here"] {
        let err = ModelSource::resolve(bad, &SourceOptions::default()).unwrap_err();
        assert!(
            matches!(&err, Error::NotFound(m) if m.starts_with(bad) && m.contains("neither a folder nor a hub id")),
            "{err:?}"
        );
    }
    // A folder without model_index.json.
    let err = local(&data.join("checkpoints"), &SourceOptions::default())
        .model_index()
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m)
        if m.starts_with(&format!("{} does not appear to have a file named model_index.json", data.join("checkpoints").display()))),
        "{err:?}"
    );
}

const COMMIT_MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
const COMMIT_V1: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// A HF cache laid out like huggingface_hub's: refs, snapshots whose files link into blobs.
fn fake_hub_cache() -> TempDir {
    let cache = TempDir::new("hf-cache");
    let repo = "models--org--tiny-sd";
    let sd15 = common::data_dir().join("checkpoints/sd15-tiny");
    cache.write(&format!("{repo}/refs/main"), COMMIT_MAIN);
    cache.write(&format!("{repo}/refs/v1"), &format!("{COMMIT_V1}\n"));
    let main = format!("{repo}/snapshots/{COMMIT_MAIN}");
    for rel in [
        "model_index.json",
        "unet/config.json",
        "scheduler/scheduler_config.json",
    ] {
        let text = std::fs::read_to_string(sd15.join(rel)).unwrap();
        put_cached(&cache, repo, &format!("{main}/{rel}"), &text);
    }
    put_cached(
        &cache,
        repo,
        &format!("{main}/unet/diffusion_pytorch_model.safetensors"),
        "x",
    );
    put_cached(
        &cache,
        repo,
        &format!("{main}/unet/diffusion_pytorch_model.fp16.safetensors"),
        "x",
    );
    let v1 = format!("{repo}/snapshots/{COMMIT_V1}");
    let sdxl_index =
        std::fs::read_to_string(common::data_dir().join("checkpoints/sdxl-tiny/model_index.json")).unwrap();
    put_cached(&cache, repo, &format!("{v1}/model_index.json"), &sdxl_index);
    cache
}

/// Stores `text` as a blob and links the snapshot path to it (a plain copy where links fail).
fn put_cached(cache: &TempDir, repo: &str, rel: &str, text: &str) {
    static BLOB: AtomicUsize = AtomicUsize::new(0);
    let blob = cache.write(
        &format!("{repo}/blobs/blob{}", BLOB.fetch_add(1, Ordering::Relaxed)),
        text,
    );
    let link = cache.path().join(rel);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&blob, &link).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&blob, &link).unwrap();
}

#[test]
fn hub_ids_are_served_from_the_cache_offline() {
    let cache = fake_hub_cache();
    let source = ModelSource::resolve("org/tiny-sd", &offline(cache.path())).unwrap();
    assert!(source.is_hub());
    assert_eq!(source.display_name(), "org/tiny-sd");
    let snapshot = cache
        .path()
        .join(format!("models--org--tiny-sd/snapshots/{COMMIT_MAIN}"));
    assert_eq!(source.local_dir().unwrap(), snapshot);

    let plan = registry::plan(&source, Task::Image2Image).unwrap();
    assert_eq!(plan.resolved.pipeline_class, "StableDiffusionImg2ImgPipeline");
    assert_eq!(
        source.file("unet", "config.json").unwrap(),
        snapshot.join("unet/config.json")
    );
    assert!(source
        .file("scheduler", "scheduler_config.json")
        .unwrap()
        .is_file());
    assert!(source.component_dir_exists("unet").unwrap());
    assert!(!source.component_dir_exists("vae").unwrap());
    assert_eq!(
        names(&source.weights("unet", "diffusion_pytorch_model").unwrap()),
        ["diffusion_pytorch_model.safetensors"]
    );
    assert_eq!(source.optional_file("vae", "config.json").unwrap(), None);
    let err = source.file("vae", "config.json").unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.starts_with("org/tiny-sd does not appear to have a file named vae/config.json")
        && m.contains("offline")),
        "{err:?}"
    );
    let err = source.weights("vae", "diffusion_pytorch_model").unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("diffusion_pytorch_model.safetensors") && m.contains("org/tiny-sd/vae")),
        "{err:?}"
    );

    let fp16 = ModelSource::resolve(
        "org/tiny-sd",
        &SourceOptions {
            variant: Some("fp16".into()),
            ..offline(cache.path())
        },
    )
    .unwrap();
    assert_eq!(
        names(&fp16.weights("unet", "diffusion_pytorch_model").unwrap()),
        ["diffusion_pytorch_model.fp16.safetensors"]
    );

    // local_files_only works like offline.
    let lfo = SourceOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        offline: Some(false),
        local_files_only: true,
        ..Default::default()
    };
    assert_eq!(
        ModelSource::resolve("org/tiny-sd", &lfo)
            .unwrap()
            .model_index()
            .unwrap()
            .class_name,
        "StableDiffusionPipeline"
    );
}

#[test]
fn hub_revisions_pick_their_snapshot() {
    let cache = fake_hub_cache();
    for revision in ["v1", COMMIT_V1] {
        let opts = SourceOptions {
            revision: Some(revision.into()),
            ..offline(cache.path())
        };
        let source = ModelSource::resolve("org/tiny-sd", &opts).unwrap();
        assert_eq!(
            source.model_index().unwrap().class_name,
            "StableDiffusionXLPipeline",
            "{revision}"
        );
    }
    let opts = SourceOptions {
        revision: Some("../main".into()),
        ..offline(cache.path())
    };
    assert!(matches!(
        ModelSource::resolve("org/tiny-sd", &opts),
        Err(Error::InvalidArgument(_))
    ));
    let opts = SourceOptions {
        revision: Some("v2".into()),
        ..offline(cache.path())
    };
    let err = ModelSource::resolve("org/tiny-sd", &opts)
        .unwrap()
        .model_index()
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
}

#[test]
fn uncached_hub_ids_offline_fail_like_diffusers() {
    let cache = fake_hub_cache();
    let source = ModelSource::resolve("org/absent", &offline(cache.path())).unwrap();
    let err = registry::plan(&source, Task::Text2Image).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m)
        if m.starts_with("org/absent does not appear to have a file named model_index.json")
        && m.contains(&cache.path().join("models--org--absent").display().to_string())),
        "{err:?}"
    );
}

#[cfg(unix)]
#[test]
fn cache_links_that_leave_the_repo_folder_are_invalid() {
    let cache = fake_hub_cache();
    let outside = cache.write("elsewhere/config.json", "{}");
    let link = cache.path().join(format!(
        "models--org--tiny-sd/snapshots/{COMMIT_MAIN}/vae/config.json"
    ));
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(outside, &link).unwrap();
    let source = ModelSource::resolve("org/tiny-sd", &offline(cache.path())).unwrap();
    let err = source.file("vae", "config.json").unwrap_err();
    assert!(
        matches!(&err, Error::InvalidModel(m) if m.contains("outside the cache folder")),
        "{err:?}"
    );
}
