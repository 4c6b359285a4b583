//! Helpers shared by the unit tests of models, layers and kernels.

use candle_core::{DType, Device, Tensor};

/// Standard normal values of `shape` from torch's CPU generator seeded with `seed`.
pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    let mut g = crate::rng::TorchCpuGenerator::new(seed);
    let n = shape.iter().product();
    Tensor::from_vec(g.randn(n), shape, &Device::Cpu).unwrap()
}

/// The largest absolute difference between two tensors of the same shape (any float dtype).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
