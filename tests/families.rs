//! The family seam: each family refuses what its pipelines cannot run, with a message naming it.

mod common;

use autopipeline::{Error, LoadOptions, Pipeline, RunParams, Task};
use std::path::PathBuf;

/// A copy of a tiny checkpoint in a fresh temporary folder, to edit.
fn copy_of(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ap-families-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_dir(&common::data_dir().join("checkpoints").join(name), &dir);
    dir
}

fn edit_json(path: &std::path::Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_flow_matching_scheduler_config_on_an_sd_checkpoint_is_refused() {
    let dir = copy_of("sd15-tiny", "flow");
    edit_json(&dir.join("scheduler/scheduler_config.json"), |m| {
        m.clear();
        m.insert("_class_name".into(), "FlowMatchEulerDiscreteScheduler".into());
        m.insert("shift".into(), 3.0.into());
    });
    edit_json(&dir.join("model_index.json"), |m| {
        m.insert(
            "scheduler".into(),
            serde_json::json!(["diffusers", "FlowMatchEulerDiscreteScheduler"]),
        );
    });
    let p = Pipeline::from_pretrained(
        dir.to_str().unwrap(),
        Task::Text2Image,
        &LoadOptions::default(),
        None,
    )
    .unwrap();
    let err = p
        .run(
            &RunParams {
                prompt: "x".into(),
                num_inference_steps: Some(2),
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(
        err.to_string().contains("flow-matching") && err.to_string().contains("stable-diffusion"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_lcm_pipeline_needs_an_lcm_distilled_unet() {
    let dir = copy_of("sd15-tiny", "lcm-plain-unet");
    edit_json(&dir.join("model_index.json"), |m| {
        m.insert("_class_name".into(), "LatentConsistencyModelPipeline".into());
    });
    let err = Pipeline::from_pretrained(
        dir.to_str().unwrap(),
        Task::Text2Image,
        &LoadOptions::default(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidModel(_)), "{err:?}");
    assert!(err.to_string().contains("time_cond_proj_dim"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_family_reports_its_defaults_through_its_module() {
    use autopipeline::pipeline::families::imp;
    use autopipeline::Family;
    for family in Family::ALL {
        let f = imp(family);
        assert_eq!(f.family(), family);
        for task in Task::ALL {
            let d = f.defaults(task);
            assert!(
                d.guidance_scale > 0.0 && d.num_inference_steps > 0,
                "{family:?} {task:?}"
            );
        }
    }
    assert_eq!(
        imp(Family::LatentConsistency)
            .defaults(Task::Text2Image)
            .num_inference_steps,
        4
    );
    assert_eq!(
        imp(Family::StableDiffusionXl)
            .defaults(Task::Image2Image)
            .strength,
        0.3
    );
}
