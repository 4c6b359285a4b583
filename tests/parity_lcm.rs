//! The `lcm` family (`LatentConsistencyModelPipeline`, `…Img2ImgPipeline`) against diffusers' recorded
//! runs (`scripts/references/make_lcm.py`): the guidance-scale embedding into the UNet's `timestep_cond`,
//! no CFG batch, no input scaling, LCMScheduler's own strength schedule, the family's defaults.

mod common;

use autopipeline::{Error, LoadOptions, Pipeline, Task};
use common::cases::check_ok_case;

macro_rules! ok_cases {
    ($($name:ident => $id:literal),* $(,)?) => {
        $( #[test] fn $name() { check_ok_case($id); } )*
    };
}

ok_cases! {
    lcm_t2i => "lcm-t2i",
    lcm_t2i_defaults => "lcm-t2i-defaults",
    lcm_t2i_w2_nonsquare => "lcm-t2i-w2-nonsquare",
    lcm_i2i => "lcm-i2i",
    lcm_i2i_strength => "lcm-i2i-strength",
    lcm_i2i_frompipe => "lcm-i2i-frompipe",
}

fn lcm_dir() -> String {
    common::data_dir()
        .join("checkpoints/lcm-tiny")
        .display()
        .to_string()
}

fn diffusers_error(key: &str) -> String {
    let path = common::data_dir().join("lcm_errors.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v[key]["message"].as_str().unwrap().to_string()
}

#[test]
fn lcm_checkpoints_resolve_to_the_lcm_family() {
    let p = Pipeline::from_pretrained(&lcm_dir(), Task::Text2Image, &LoadOptions::default(), None).unwrap();
    assert_eq!(p.family().name(), "lcm");
    assert_eq!(p.class_name(), "LatentConsistencyModelPipeline");
    let i2i = p.from_pipe(Task::Image2Image, &Default::default()).unwrap();
    assert_eq!(i2i.class_name(), "LatentConsistencyModelImg2ImgPipeline");
    assert!(i2i.shares_components_with(&p));
}

#[test]
fn lcm_has_no_inpainting_pipeline_as_in_diffusers() {
    let err =
        Pipeline::from_pretrained(&lcm_dir(), Task::Inpaint, &LoadOptions::default(), None).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&diffusers_error("from_pretrained_inpaint")),
        "{err}"
    );
    let p = Pipeline::from_pretrained(&lcm_dir(), Task::Text2Image, &LoadOptions::default(), None).unwrap();
    let err = p.from_pipe(Task::Inpaint, &Default::default()).unwrap_err();
    assert!(
        err.to_string().contains(&diffusers_error("from_pipe_inpaint")),
        "{err}"
    );
}

#[test]
fn lcm_pipelines_refuse_other_schedulers() {
    let p = Pipeline::from_pretrained(&lcm_dir(), Task::Text2Image, &LoadOptions::default(), None).unwrap();
    let params = autopipeline::RunParams {
        prompt: "x".into(),
        scheduler: Some("euler".into()),
        ..Default::default()
    };
    let err = p.run(&params, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("LCMScheduler"), "{err}");
}
