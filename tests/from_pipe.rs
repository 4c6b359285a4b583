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

fn sd15() -> Pipeline {
    let ckpt = common::data_dir().join("checkpoints/sd15-tiny");
    Pipeline::from_pretrained(
        ckpt.to_str().unwrap(),
        Task::Text2Image,
        &LoadOptions::default(),
        None,
    )
    .unwrap()
}

/// Unknown keys, wrong types, private `_` keys, component names and out-of-range run defaults are the
/// caller's mistake, refused with a message naming the key (diffusers drops what it does not take;
/// a C caller has no warning to see that in).
#[test]
fn from_pipe_refuses_bad_overrides() {
    let p = sd15();
    for (text, mentions) in [
        (r#"{"bogus_key": 1}"#, "bogus_key"),
        (r#"{"requires_safety_checker": "yes"}"#, "requires_safety_checker"),
        (r#"{"_class_name": "Evil"}"#, "_class_name"),
        (r#"{"_name_or_path": "x"}"#, "_name_or_path"),
        (r#"{"vae": null}"#, "vae"),
        (r#"{"unet": ["diffusers", "UNet2DConditionModel"]}"#, "own API"),
        (r#"{"strength": 7}"#, "strength"),
        (r#"{"strength": -0.1}"#, "strength"),
        (r#"{"strength": "0.5"}"#, "strength"),
        (r#"{"guidance_scale": null}"#, "guidance_scale"),
        (r#"{"num_inference_steps": 0}"#, "num_inference_steps"),
        (r#"{"num_inference_steps": 1001}"#, "num_inference_steps"),
        (r#"{"num_inference_steps": 2.5}"#, "num_inference_steps"),
        (
            r#"{"requires_aesthetics_score": true}"#,
            "requires_aesthetics_score",
        ),
    ] {
        let overrides: Map<String, Value> = serde_json::from_str(text).unwrap();
        let err = p.from_pipe(Task::Image2Image, &overrides).unwrap_err();
        assert!(
            matches!(err, autopipeline::Error::InvalidArgument(_)),
            "{text}: {err:?}"
        );
        assert!(err.to_string().contains(mentions), "{text}: {err}");
    }
    // The keys the class takes, with the right types, still go through.
    let ok: Map<String, Value> =
        serde_json::from_str(r#"{"requires_safety_checker": true, "strength": 1, "guidance_scale": -2}"#)
            .unwrap();
    assert!(p.from_pipe(Task::Image2Image, &ok).is_ok());
}

/// `strength`, `guidance_scale` and `num_inference_steps` overrides become the new pipeline's run
/// defaults: a run that leaves them unset takes them, a run that sets them wins.
#[test]
fn from_pipe_run_defaults_apply_to_runs_that_leave_them_unset() {
    use autopipeline::RunParams;
    let p = sd15();
    let overrides: Map<String, Value> =
        serde_json::from_str(r#"{"strength": 0.5, "num_inference_steps": 4, "guidance_scale": 3.0}"#)
            .unwrap();
    let i2i = p.from_pipe(Task::Image2Image, &overrides).unwrap();
    let plain = p.from_pipe(Task::Image2Image, &Map::new()).unwrap();
    let image = autopipeline::Image::new(64, 64, 3, vec![128; 64 * 64 * 3]).unwrap();
    let base = RunParams {
        prompt: "a cat".into(),
        image: Some(image),
        seed: 7,
        ..Default::default()
    };
    let steps_of = |pipe: &Pipeline, params: &RunParams| {
        let mut total = 0;
        let mut progress = |_: usize, n: usize| {
            total = n;
            true
        };
        let out = pipe.run(params, Some(&mut progress)).unwrap();
        (total, out.images[0].data.clone())
    };
    let (steps, with_defaults) = steps_of(&i2i, &base);
    let explicit = RunParams {
        strength: Some(0.5),
        num_inference_steps: Some(4),
        guidance_scale: Some(3.0),
        ..base.clone()
    };
    let (explicit_steps, same) = steps_of(&plain, &explicit);
    assert_eq!(steps, explicit_steps);
    assert_eq!(with_defaults, same, "the overrides act as the run's values");
    let (plain_steps, _) = steps_of(&plain, &base);
    assert_ne!(steps, plain_steps, "the family default (50 steps at 0.8) differs");
    let own = RunParams {
        strength: Some(1.0),
        ..base.clone()
    };
    let (own_steps, _) = steps_of(&i2i, &own);
    let (want, _) = steps_of(
        &plain,
        &RunParams {
            num_inference_steps: Some(4),
            ..own.clone()
        },
    );
    assert_eq!(own_steps, want, "a run's own strength wins over the override");
}
