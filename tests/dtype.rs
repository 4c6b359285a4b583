//! Half precision: f16 pipelines run on the CPU (float16 values computed in float32, see
//! tests/weights.rs) and stay close to the f32 result, and a bad dtype is refused.

mod common;

use autopipeline::{Error, LoadOptions, Pipeline, Task};
use common::cases::{inputs, params};

fn run(ckpt: &str, case: &str, dtype: &str) -> Vec<u8> {
    run_task(ckpt, case, dtype, Task::Text2Image)
}

fn run_task(ckpt: &str, case: &str, dtype: &str, task: Task) -> Vec<u8> {
    let dir = common::data_dir().join("checkpoints").join(ckpt);
    let opts = LoadOptions {
        dtype: Some(dtype.into()),
        ..common::cases::load_options()
    };
    let pipe = Pipeline::from_pretrained(dir.to_str().unwrap(), task, &opts, None).unwrap();
    let out = pipe
        .run(&params(&inputs(case)), None)
        .unwrap_or_else(|e| panic!("{ckpt} {dtype}: {e}"));
    out.images[0].data.clone()
}

#[test]
fn half_precision_runs_close_to_f32() {
    for (ckpt, case) in [
        ("sd15-tiny", "sd15-t2i-cfg-neg"),
        ("sdxl-tiny", "sdxl-t2i-cfg-neg-prompt2"),
    ] {
        let reference = run(ckpt, case, "f32");
        for (dtype, tol) in [("f16", 4u8), ("bf16", 4u8)] {
            let half = run(ckpt, case, dtype);
            let worst = half
                .iter()
                .zip(&reference)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            let mean = half
                .iter()
                .zip(&reference)
                .map(|(a, b)| a.abs_diff(*b) as f64)
                .sum::<f64>()
                / half.len() as f64;
            eprintln!("{ckpt} {dtype}: max {worst}/255, mean {mean:.3}/255 from f32");
            assert!(
                worst <= tol,
                "{ckpt} {dtype}: differs from f32 by up to {worst}/255"
            );
            assert!(
                half != reference,
                "{ckpt} {dtype}: identical to f32, so half precision did not run"
            );
        }
    }
}

#[test]
fn unknown_dtype_is_refused() {
    let dir = common::data_dir().join("checkpoints/sd15-tiny");
    let opts = LoadOptions {
        dtype: Some("int8".into()),
        ..Default::default()
    };
    let err = Pipeline::from_pretrained(dir.to_str().unwrap(), Task::Text2Image, &opts, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("f16"), "{err}");
}

/// Ours in f16 against diffusers run in float16 (torch 2.15 on the CPU, tests/data/f16/make.py). The
/// yardstick is half precision's own drift: diffusers f16 differs from its f32 output by up to 0.61/255 on
/// these cases and ours f16 from f32 by up to 1/255, so the two half-precision results may differ by their
/// sum, under 2/255; a wrong noise dtype or stream would differ by tens of levels.
#[test]
fn f16_matches_diffusers_in_float16() {
    for case_id in [
        "sd15-t2i-cfg-neg",
        "sdxl-t2i-cfg-neg-prompt2",
        "sd15-i2i-cfg-neg",
        "sdxl-i2i-cfg-neg",
    ] {
        let case = inputs(case_id);
        let task = if case["task"] == "img2img" {
            Task::Image2Image
        } else {
            Task::Text2Image
        };
        let dir = common::data_dir().join(case["checkpoint"].as_str().unwrap());
        let opts = LoadOptions {
            dtype: Some("f16".into()),
            ..common::cases::load_options()
        };
        let pipe = Pipeline::from_pretrained(dir.to_str().unwrap(), task, &opts, None).unwrap();
        let ours = pipe.run(&params(&case), None).unwrap().images.remove(0);
        let (_, want) = common::read_npy(&common::data_dir().join("f16").join(format!("{case_id}.npy")));
        assert_eq!(ours.data.len(), want.len(), "{case_id}: size");
        let worst = ours
            .data
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f32 - b * 255.0).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 2.0,
            "{case_id}: f16 differs from diffusers' float16 by {worst}/255"
        );
    }
}

/// FLUX and SD3 in half precision on the CPU (float16 / bfloat16 weight values, float32 compute): they
/// run and stay near the float32 image (measured: f16 within 1/255; bf16 up to 9/255 at a pixel,
/// under 0.7/255 on average).
#[test]
fn half_precision_transformer_families_run_close_to_f32() {
    for (ckpt, case) in [
        ("flux-dev-tiny", "flux-dev-t2i"),
        ("sd3-tiny", "sd3-t2i"),
        ("sd35-tiny", "sd35-t2i"),
    ] {
        let reference = run(ckpt, case, "f32");
        for dtype in ["f16", "bf16"] {
            let half = run(ckpt, case, dtype);
            let worst = half
                .iter()
                .zip(&reference)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            let mean = half
                .iter()
                .zip(&reference)
                .map(|(a, b)| a.abs_diff(*b) as f64)
                .sum::<f64>()
                / half.len() as f64;
            eprintln!("{ckpt} {dtype}: max {worst}/255, mean {mean:.3}/255 from f32");
            assert!(
                half != reference,
                "{ckpt} {dtype}: identical to f32, so half precision did not run"
            );
            if dtype == "f16" {
                // The UNet families' bound (float16 keeps 11 significant bits).
                assert!(worst <= 4, "{ckpt} f16: differs from f32 by up to {worst}/255");
            } else {
                // bfloat16 keeps 8: single pixels move further (up to 9/255 measured), the image does not.
                assert!(mean < 1.0, "{ckpt} bf16: mean difference {mean:.2}/255 from f32");
            }
        }
    }
}
