//! Runs one recorded diffusers case (`tests/data/cases/<id>`) through the Rust API and compares every
//! recorded intermediate, so a failure says where the two implementations part.

use super::{data_dir, read_npy};
use autopipeline::{Image, LoadOptions, Pipeline, RunParams, Task, Trace};
use candle_core::{Device, Tensor};
use serde_json::Value;

pub fn inputs(id: &str) -> Value {
    let path = data_dir().join("cases").join(id).join("inputs.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

pub fn npy(id: &str, file: &str) -> Tensor {
    let (shape, data) = read_npy(&data_dir().join("cases").join(id).join(file));
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn task_of(name: &str) -> Task {
    Task::from_name(name).unwrap_or_else(|| panic!("unknown task {name}"))
}

/// Load options for the tests: the device comes from `AP_TEST_DEVICE` (e.g. `cuda` in the GPU check).
pub fn load_options() -> LoadOptions {
    LoadOptions {
        device: std::env::var("AP_TEST_DEVICE").ok(),
        ..Default::default()
    }
}

/// Builds the pipeline as the case's `load.call` did (`from_pretrained`, or `from_pipe` of another task).
pub fn pipeline(case: &Value) -> Pipeline {
    let ckpt = data_dir().join(case["checkpoint"].as_str().unwrap());
    let task = task_of(case["task"].as_str().unwrap());
    let load = &case["load"];
    if load["route"] == "from_pipe" {
        let call = load["call"].as_str().unwrap();
        let inner = call.split(".from_pipe(").nth(1).unwrap();
        let first = if inner.starts_with("AutoPipelineForText2Image") {
            Task::Text2Image
        } else if inner.starts_with("AutoPipelineForImage2Image") {
            Task::Image2Image
        } else {
            Task::Inpaint
        };
        let base = Pipeline::from_pretrained(ckpt.to_str().unwrap(), first, &load_options(), None).unwrap();
        let kwargs = load["kwargs"].as_object().cloned().unwrap_or_default();
        let derived = base.from_pipe(task, &kwargs).unwrap();
        assert!(derived.shares_components_with(&base));
        derived
    } else {
        Pipeline::from_pretrained(ckpt.to_str().unwrap(), task, &load_options(), None).unwrap()
    }
}

pub fn params(case: &Value) -> RunParams {
    let s = |k: &str| case[k].as_str().map(String::from);
    let img = |k: &str| {
        case[k]
            .as_str()
            .map(|f| Image::load(&data_dir().join(f)).unwrap())
    };
    RunParams {
        prompt: s("prompt").unwrap_or_default(),
        negative_prompt: s("negative_prompt"),
        prompt_2: s("prompt_2"),
        negative_prompt_2: s("negative_prompt_2"),
        num_inference_steps: case["num_inference_steps"].as_u64().map(|v| v as usize),
        guidance_scale: case["guidance_scale"].as_f64(),
        strength: case["strength"].as_f64(),
        width: case["width"].as_u64().map(|v| v as usize),
        height: case["height"].as_u64().map(|v| v as usize),
        seed: case["seed"].as_u64().unwrap(),
        image: img("image"),
        mask: img("mask_image"),
        output_channels: 3,
        scheduler: s("scheduler"),
        timesteps: floats(&case["timesteps"]),
        sigmas: floats(&case["sigmas"]),
        padding_mask_crop: case["padding_mask_crop"].as_u64().map(|v| v as u32),
        max_sequence_length: case["max_sequence_length"].as_u64().map(|v| v as usize),
        true_cfg_scale: case["true_cfg_scale"].as_f64(),
        prompt_3: s("prompt_3"),
        negative_prompt_3: s("negative_prompt_3"),
        clip_skip: case["clip_skip"].as_u64().map(|v| v as usize),
        skip_guidance_layers: case["skip_guidance_layers"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap() as usize).collect()),
        skip_layer_guidance_scale: case["skip_layer_guidance_scale"].as_f64(),
        skip_layer_guidance_start: case["skip_layer_guidance_start"].as_f64(),
        skip_layer_guidance_stop: case["skip_layer_guidance_stop"].as_f64(),
        ..Default::default()
    }
}

/// A JSON list of numbers, if present.
fn floats(v: &Value) -> Option<Vec<f64>> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_f64().unwrap()).collect())
}

/// Runs a case that diffusers completed and checks it stage by stage, then the image against
/// `output.npy` (atol 1e-4, see tolerance.json) and `output.png` (at most 1/255 per channel).
pub fn check_ok_case(id: &str) {
    let case = inputs(id);
    assert_eq!(case["status"], "ok", "{id} is an error case");
    let pipe = pipeline(&case);
    let mut trace = Trace::default();
    let out = pipe
        .run_traced(&params(&case), None, Some(&mut trace))
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    let tol = 1e-5;

    // Random draws: bit-exact.
    let draws = case["randn_tensor_draws"].as_array().unwrap();
    assert_eq!(trace.noise.len(), draws.len(), "{id}: number of generator draws");
    for (i, d) in draws.iter().enumerate() {
        let want = npy(id, d["file"].as_str().unwrap());
        assert_eq!(max_abs(&trace.noise[i], &want), 0.0, "{id}: draw {i} differs");
    }
    // Embeddings.
    for (name, got) in [
        ("prompt_embeds", &trace.prompt_embeds),
        ("negative_prompt_embeds", &trace.negative_prompt_embeds),
    ] {
        match case["embeddings"].get(name) {
            Some(e) => {
                let got = got.as_ref().unwrap_or_else(|| panic!("{id}: no {name}"));
                let d = max_abs(got, &npy(id, e["file"].as_str().unwrap()));
                assert!(d < tol, "{id}: {name} differ by {d}");
            }
            None => assert!(got.is_none(), "{id}: diffusers made no {name}"),
        }
    }
    // SDXL time ids of the first UNet call (CFG batch included), exact.
    if let Some(added) = case.get("added_cond_kwargs_step0").filter(|v| !v.is_null()) {
        let got = trace
            .added_cond
            .as_ref()
            .unwrap_or_else(|| panic!("{id}: no added_cond"));
        let want: Vec<Vec<f32>> = added["time_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect();
        assert_eq!(got.time_ids.to_vec2::<f32>().unwrap(), want, "{id}: time ids");
        let dims: Vec<usize> = added["text_embeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got.text_embeds.dims(), dims.as_slice(), "{id}: text_embeds shape");
    } else {
        assert!(
            trace.added_cond.is_none(),
            "{id}: diffusers passed no added_cond_kwargs"
        );
    }
    // Timesteps and the first UNet call.
    let want_ts: Vec<f64> = case["unet_timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(trace.unet_timesteps, want_ts, "{id}: UNet timesteps");
    if let Some(f) = case.get("unet_input_step0").and_then(|v| v.get("file")) {
        let d = max_abs(
            trace.unet_input_step0.as_ref().unwrap(),
            &npy(id, f.as_str().unwrap()),
        );
        assert!(d < tol, "{id}: unet input at step 0 differs by {d}");
    }
    if let Some(f) = case.get("unet_output_step0").and_then(|v| v.get("file")) {
        let want = npy(id, f.as_str().unwrap());
        let scale = want
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let d = max_abs(trace.unet_output_step0.as_ref().unwrap(), &want);
        assert!(d < tol * scale, "{id}: unet output at step 0 differs by {d}");
    }
    // Latents after every step.
    let want = npy(id, case["latents_per_step"]["file"].as_str().unwrap());
    assert_eq!(trace.latents.len(), want.dim(0).unwrap(), "{id}: number of steps");
    for (i, got) in trace.latents.iter().enumerate() {
        let scale = 1.0f32.max(
            want.get(i)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap(),
        );
        let d = max_abs(got, &want.get(i).unwrap());
        assert!(d < 1e-4 * scale, "{id}: latents after step {i} differ by {d}");
    }
    // The image.
    let want = npy(id, "output.npy"); // (h, w, 3)
    let got = trace
        .image
        .as_ref()
        .unwrap()
        .get(0)
        .unwrap()
        .permute((1, 2, 0))
        .unwrap();
    let d = max_abs(&got, &want);
    assert!(d < 1e-4, "{id}: image differs from output.npy by {d}");
    let png = Image::load(&data_dir().join("cases").join(id).join("output.png")).unwrap();
    let ours = &out.images[0];
    assert_eq!((ours.width, ours.height), (png.width, png.height), "{id}: size");
    let worst = ours
        .data
        .iter()
        .zip(&png.data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "{id}: PNG pixels differ by up to {worst}/255");
}

/// Runs a case that diffusers could not run and checks that we refuse it with a clear error instead.
pub fn check_error_case(id: &str) -> autopipeline::Error {
    let case = inputs(id);
    assert_eq!(case["status"], "error");
    let pipe = pipeline(&case);
    match pipe.run(&params(&case), None) {
        Ok(_) => panic!(
            "{id}: diffusers failed ({}) but we produced an image",
            case["error"]["message"]
        ),
        Err(e) => e,
    }
}
