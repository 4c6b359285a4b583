//! Our compute kernels: `cpu` (float32 convolutions, attention, group norm and GEGLU on the `gemm`
//! crate) and `cuda` (`--features cuda`: PTX kernels, cuDNN convolutions, CUDA graphs).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
