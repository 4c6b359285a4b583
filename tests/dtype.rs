//! Half precision: f16 and bf16 UNet/text encoders run on the CPU and stay close to the f32 result (the
//! VAE stays f32 under `force_upcast`, latents and scheduler math are f32), and a bad dtype is refused.

mod common;

use autopipeline::{Error, LoadOptions, Pipeline, Task};
use common::cases::{inputs, params};

fn run(ckpt: &str, case: &str, dtype: &str) -> Vec<u8> {
    let dir = common::data_dir().join("checkpoints").join(ckpt);
    let opts = LoadOptions {
        dtype: Some(dtype.into()),
        ..common::cases::load_options()
    };
    let pipe = Pipeline::from_pretrained(dir.to_str().unwrap(), Task::Text2Image, &opts, None).unwrap();
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
        // bf16 has no CPU matmul in candle (refused below), so f16 is the half type checked here.
        let (dtype, tol) = ("f16", 4u8);
        {
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
fn bf16_on_cpu_is_refused_with_a_reason() {
    let dir = common::data_dir().join("checkpoints/sd15-tiny");
    let opts = LoadOptions {
        dtype: Some("bf16".into()),
        ..Default::default()
    };
    let err = Pipeline::from_pretrained(dir.to_str().unwrap(), Task::Text2Image, &opts, None).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("bf16"), "{err}");
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
