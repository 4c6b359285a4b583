//! [`super::TorchCudaGenerator`]'s draws run on the GPU with the kernel torch runs, for bit-exact normals
//! (the host cannot reproduce the GPU's `__logf` / `__sincosf`). The kernel is `torch_cuda_randn.cu`,
//! compiled to PTX by build.rs.

use crate::error::{Error, Result};
use candle_core::CudaDevice;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{LaunchConfig, PushKernelArg};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/torch_cuda_randn.ptx"));

fn cuda_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("CUDA random draw: {what}: {e}"))
}

/// torch's launch limit on this GPU: multiprocessors × (max threads per multiprocessor / 256).
pub(super) fn max_blocks(dev: &CudaDevice) -> Option<u32> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let sms = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .ok()?;
    let threads = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)
        .ok()?;
    u32::try_from(sms * (threads / super::philox::BLOCK as i32)).ok()
}

/// `n` normals from Philox `offset` over `blocks` blocks, computed on `dev` and copied to the host.
pub(super) fn randn(dev: &CudaDevice, seed: u64, offset: u64, blocks: u64, n: usize) -> Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let func = dev
        .get_or_load_custom_func("ap_torch_cuda_randn", "autopipeline_rng", PTX)
        .map_err(|e| cuda_err("loading the kernel", e))?;
    let stream = dev.cuda_stream();
    let mut out = stream
        .alloc_zeros::<f32>(n)
        .map_err(|e| cuda_err("allocating", e))?;
    let n64 = n as u64;
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (super::philox::BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = func.builder();
    launch.arg(&mut out).arg(&n64).arg(&seed).arg(&offset);
    // SAFETY: the argument list matches the kernel's signature (float*, u64, u64, u64) and `out`
    // holds `n` floats, the most the kernel writes.
    unsafe { launch.launch(cfg) }.map_err(|e| cuda_err("launching", e))?;
    stream.clone_dtoh(&out).map_err(|e| cuda_err("copying back", e))
}
