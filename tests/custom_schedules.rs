//! Custom schedules (`RunParams::timesteps` / `sigmas`, diffusers' `timesteps=` / `sigmas=`) against
//! diffusers' recorded runs (`scripts/references/make_custom_schedules.py`): text2img and img2img (where
//! strength then cuts the custom schedule), and diffusers' refusal for a scheduler that takes neither.

mod common;

use autopipeline::{Error, LoadOptions, Pipeline, RunParams, Task};
use common::cases::check_ok_case;

macro_rules! ok_cases {
    ($($name:ident => $id:literal),* $(,)?) => {
        $( #[test] fn $name() { check_ok_case($id); } )*
    };
}

ok_cases! {
    euler_custom_sigmas => "sd15-t2i-custom-sigmas-euler",
    ddpm_custom_timesteps => "sd15-t2i-custom-timesteps-ddpm",
    dpm_custom_timesteps => "sd15-t2i-custom-timesteps-dpm",
    euler_img2img_custom_timesteps => "sd15-i2i-custom-timesteps-euler",
}

#[test]
fn schedulers_without_custom_schedules_refuse_them_as_diffusers_does() {
    let path = common::data_dir().join("custom_schedule_errors.json");
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = common::data_dir().join("checkpoints/sd15-tiny");
    let p = Pipeline::from_pretrained(
        dir.to_str().unwrap(),
        Task::Text2Image,
        &LoadOptions::default(),
        None,
    )
    .unwrap();
    for (key, params) in [
        (
            "pndm_timesteps",
            RunParams {
                timesteps: Some(vec![999.0, 500.0]),
                ..Default::default()
            },
        ),
        (
            "pndm_sigmas",
            RunParams {
                sigmas: Some(vec![10.0, 1.0]),
                ..Default::default()
            },
        ),
    ] {
        let err = p.run(&params, None).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{key}: {err:?}");
        assert_eq!(err.to_string(), want[key]["message"].as_str().unwrap(), "{key}");
    }
    // Both at once is refused before any scheduler sees them.
    let both = RunParams {
        timesteps: Some(vec![999.0]),
        sigmas: Some(vec![1.0]),
        scheduler: Some("euler".into()),
        ..Default::default()
    };
    assert!(matches!(p.run(&both, None), Err(Error::InvalidArgument(_))));
}
