//! Comparisons against recorded arrays that may be stored whole or sampled (every `stride`-th value of
//! the C-order flattening, for large arrays; see `scripts/references/make_flux.py`).

use super::cases::{max_abs, npy};
use candle_core::Tensor;
use serde_json::Value;

/// Largest absolute value of `t`, at least 1: tolerances scale with it.
pub fn scale_of(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0)
}

/// `got` as the recorded `entry` holds it: whole, or (large arrays, to keep the repository small)
/// every `stride`-th value of the C-order flattening, as `make_flux.py` samples them.
pub fn as_recorded(got: &Tensor, entry: &Value) -> Tensor {
    let shape: Vec<usize> = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(got.dims(), shape.as_slice(), "recorded shape");
    match entry.get("sampled") {
        Some(sampled) => {
            let stride = sampled["stride"].as_u64().unwrap() as usize;
            let all = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let picked: Vec<f32> = all.into_iter().step_by(stride).collect();
            let n = picked.len();
            Tensor::from_vec(picked, n, &candle_core::Device::Cpu).unwrap()
        }
        None => got.clone(),
    }
}

/// Compares `got` with the recorded `entry` (a `{file, shape[, sampled]}` object): relative `tol`
/// (0: bit-exact), never tighter than `floor`.
pub fn check(id: &str, what: &str, got: &Tensor, entry: &Value, tol: f32, floor: f32) {
    let want = npy(id, entry["file"].as_str().unwrap());
    let got = as_recorded(&got.to_device(&candle_core::Device::Cpu).unwrap(), entry);
    if tol == 0.0 {
        assert_eq!(max_abs(&got, &want), 0.0, "{id}: {what} differs");
        return;
    }
    let d = max_abs(&got, &want);
    let limit = (tol * scale_of(&want)).max(floor);
    assert!(d < limit, "{id}: {what} differs by {d} (limit {limit})");
}

/// The run's image against the recorded one: the float image against `output.npy` (1e-4; skipped
/// with `padding_mask_crop`, where diffusers' output is the crop pasted back in 8 bits) and the 8-bit
/// image against `output.png` (at most 1/255; large outputs are recorded sampled, without a PNG).
pub fn check_image(id: &str, case: &Value, trace: &autopipeline::Trace, out: &autopipeline::RunOutput) {
    if case["padding_mask_crop"].is_null() {
        let got = trace
            .image
            .as_ref()
            .unwrap()
            .get(0)
            .unwrap()
            .permute((1, 2, 0))
            .unwrap();
        let d = max_abs(&as_recorded(&got, &case["output"]), &npy(id, "output.npy"));
        assert!(d < 1e-4, "{id}: image differs from output.npy by {d}");
    }
    let Some(png) = case["output"]["png"].as_str() else {
        return;
    };
    let png = autopipeline::Image::load(&super::data_dir().join("cases").join(id).join(png)).unwrap();
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

/// A copy of `tests/data/checkpoints/<ckpt>`, changed by `edit`, loaded for text-to-image.
pub fn load_edited(
    ckpt: &str,
    name: &str,
    edit: impl FnOnce(&std::path::Path),
) -> autopipeline::Result<autopipeline::Pipeline> {
    let dir = std::env::temp_dir().join(format!("ap-{ckpt}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    super::copy_dir(&super::data_dir().join("checkpoints").join(ckpt), &dir);
    edit(&dir);
    let out = autopipeline::Pipeline::from_pretrained(
        dir.to_str().unwrap(),
        autopipeline::Task::Text2Image,
        &super::cases::load_options(),
        None,
    );
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Rewrites a key of a component's `config.json` in a checkpoint folder.
pub fn set_config(dir: &std::path::Path, component: &str, key: &str, value: Value) {
    let path = dir.join(component).join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
}
