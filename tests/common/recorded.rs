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
