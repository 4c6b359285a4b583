//! Our CUDA kernels (`kernels.cu`, compiled to PTX by build.rs) for the GPU paths where candle 0.11's
//! generic kernels cost the most: convolution columns laid out for an NCHW result ([`conv2d`]), bias and
//! residual adds ([`add_last`], [`add_channel`]), GEGLU ([`geglu`]), group norm + SiLU ([`group_norm`])
//! and attention that never stores a score matrix ([`attention`]); with the `cudnn` feature,
//! convolutions through cuDNN configured as PyTorch does (`cudnn.rs`); and a UNet step captured once as
//! a CUDA graph and replayed ([`graph`]).
//!
//! Measured on an H100 before them (bench/README.md): candle's im2col, broadcast adds, softmax and
//! group-norm pieces were over half of a UNet step's GPU time, the matmuls a tenth. Each kernel computes
//! in f32 and rounds its output once (attention also its probabilities, as the product takes them).
//! `AP_CUDA_KERNELS=0` turns them all off (candle's kernels then run everywhere),
//! `AP_CUDA_KERNELS=conv,norm` (names from [`KERNELS`]) only those on, for comparisons; `all` adds those
//! in `OFF_BY_DEFAULT` ([`enabled`]), where a new kernel waits for its first GPU measurement.

mod attention;
mod conv;
#[cfg(feature = "cudnn")]
mod cudnn;
mod elementwise;
pub mod graph;
mod norm;

pub use attention::{attention, attention_applies, attention_applies_to};
#[cfg(feature = "cudnn")]
pub use conv::conv2d_cudnn;
pub use conv::{conv2d, conv2d_columns};
pub use elementwise::{add_channel, add_last, geglu};
pub use norm::group_norm;

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Tensor, WithDType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ap_kernels.ptx"));

/// The kernels by the names `AP_CUDA_KERNELS` takes. `cudnn` is cuDNN's convolutions in place of our
/// columns (`conv`) and has an effect only in builds with the `cudnn` feature. `graph` is not a kernel
/// but how the denoising loop launches the UNet: one CUDA graph per step, captured at the run's second
/// step ([`graph`]).
pub const KERNELS: [&str; 7] = ["conv", "add", "geglu", "norm", "attention", "cudnn", "graph"];

/// Kernels that stay off unless named (`all` adds them): none now. A kernel starts here until a GPU run
/// of tests/cuda_kernels.rs, the device check and the benchmark has shown it correct and faster.
/// `attention` and `graph` left it on 2026-11-27 (H100, fp16, 20 steps, bench/README.md): with our
/// attention SD 1.5 512² went from 24.1 to 28.7 it/s and SDXL 1024² from 8.1 to 18.2; the UNet step as a
/// CUDA graph then took SD 1.5 to 64.5 it/s and SDXL to 19.1 (diffusers in the same run: 20.2 / 7.7).
const OFF_BY_DEFAULT: [&str; 0] = [];

/// Whether our kernel `name` (one of [`KERNELS`]) is on. `AP_CUDA_KERNELS` unset, empty or `1`: all
/// but `OFF_BY_DEFAULT`; `all`: all; `0`: none; a comma-separated list of names: those alone (read
/// once).
pub fn enabled(name: &str) -> bool {
    static ON: OnceLock<Vec<&'static str>> = OnceLock::new();
    ON.get_or_init(|| kernels_for(&std::env::var("AP_CUDA_KERNELS").unwrap_or_default()))
        .contains(&name)
}

/// The kernels an `AP_CUDA_KERNELS` setting turns on (see [`enabled`]); unknown names are ignored.
pub fn kernels_for(setting: &str) -> Vec<&'static str> {
    match setting.trim() {
        "" | "1" => KERNELS
            .iter()
            .copied()
            .filter(|k| !OFF_BY_DEFAULT.contains(k))
            .collect(),
        "all" => KERNELS.to_vec(),
        list => KERNELS
            .iter()
            .copied()
            .filter(|k| list.split(',').any(|s| s.trim() == *k))
            .collect(),
    }
}

/// Whether convolutions of `t` take our path ([`conv2d`]): our columns or cuDNN on.
pub fn conv_applies(t: &Tensor) -> bool {
    applies(t, "conv") || (cfg!(feature = "cudnn") && applies(t, "cudnn"))
}

/// Whether `t` takes our kernel `name`: on a CUDA device, in f16, bf16 or f32, with the kernel on.
pub fn applies(t: &Tensor, name: &str) -> bool {
    enabled(name) && t.device().is_cuda() && matches!(t.dtype(), DType::F16 | DType::BF16 | DType::F32)
}

fn wrap(what: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("autopipeline CUDA kernels: {what}: {e}"))
}

/// `name` from our PTX module: the module loaded once per device, each function looked up once (the
/// driver's lookup by name would otherwise run at every launch).
pub(crate) fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    function_with(dev, name, |_| Ok(()))
}

/// [`function`], with `configure` run on the function once, when first looked up (function attributes
/// such as its dynamic shared memory: a driver call saved per launch, and none made while a CUDA graph
/// is captured).
pub(crate) fn function_with(
    dev: &CudaDevice,
    name: &str,
    configure: impl FnOnce(&CudaFunction) -> Result<()>,
) -> Result<CudaFunction> {
    type Functions = HashMap<String, CudaFunction>;
    static MODULES: Mutex<Vec<(DeviceId, Arc<CudaModule>, Functions)>> = Mutex::new(Vec::new());
    let mut modules = MODULES.lock().unwrap_or_else(|e| e.into_inner());
    let index = match modules.iter().position(|(id, _, _)| *id == dev.id()) {
        Some(i) => i,
        None => {
            let m = dev
                .cuda_stream()
                .context()
                .load_module(PTX.into())
                .map_err(|e| wrap("loading the module", e))?;
            modules.push((dev.id(), m, HashMap::new()));
            modules.len() - 1
        }
    };
    let (_, module, functions) = &mut modules[index];
    if let Some(f) = functions.get(name) {
        return Ok(f.clone());
    }
    let f = module.load_function(name).map_err(|e| wrap(name, e))?;
    configure(&f)?;
    functions.insert(name.to_string(), f.clone());
    Ok(f)
}

/// The kernel `root` for element type `T` (`root_f16`, …).
pub(crate) fn kernel<T: WithDType>(dev: &CudaDevice, root: &str) -> Result<CudaFunction> {
    function(dev, &format!("{root}_{}", T::DTYPE.as_str()))
}

/// The contiguous elements of `s` under `l`.
pub(crate) fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    if !l.is_contiguous() {
        candle_core::bail!("internal error: {what} passed to a CUDA kernel is not contiguous")
    }
    let slice = s.as_cuda_slice::<T>()?;
    slice
        .try_slice(l.start_offset()..l.start_offset() + l.shape().elem_count())
        .ok_or_else(|| wrap(what, "layout out of the storage's bounds"))
}

/// `n` as a kernel's 32-bit size argument.
pub(crate) fn u32_arg(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| wrap(what, format!("{n} does not fit the kernel's 32-bit indices")))
}

/// Runs `$f::<T>(args)` for the element type of `$dtype` (f16, bf16 or f32).
macro_rules! by_dtype {
    ($dtype:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $dtype {
            candle_core::DType::F16 => $f::<half::f16>($($arg),*),
            candle_core::DType::BF16 => $f::<half::bf16>($($arg),*),
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            d => candle_core::bail!("our CUDA kernels take f16, bf16 or f32, not {d:?}"),
        }
    };
}
pub(crate) use by_dtype;

/// Implements candle's `CustomOp1` / `CustomOp2` / `CustomOp3` for an op that runs on CUDA only, from
/// its method `$run` taking each input as `(&CudaStorage, &Layout)`; the CPU side refuses (callers route
/// only CUDA tensors here).
macro_rules! cuda_only_op {
    ($ty:ty, $name:literal, 1, $run:ident) => {
        impl candle_core::CustomOp1 for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                candle_core::bail!(concat!($name, " runs on CUDA only"))
            }
            fn cuda_fwd(
                &self,
                s: &candle_core::CudaStorage,
                l: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                self.$run((s, l))
            }
        }
    };
    ($ty:ty, $name:literal, 2, $run:ident) => {
        impl candle_core::CustomOp2 for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                candle_core::bail!(concat!($name, " runs on CUDA only"))
            }
            fn cuda_fwd(
                &self,
                s1: &candle_core::CudaStorage,
                l1: &candle_core::Layout,
                s2: &candle_core::CudaStorage,
                l2: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                self.$run((s1, l1), (s2, l2))
            }
        }
    };
    ($ty:ty, $name:literal, 3, $run:ident) => {
        impl candle_core::CustomOp3 for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                candle_core::bail!(concat!($name, " runs on CUDA only"))
            }
            fn cuda_fwd(
                &self,
                s1: &candle_core::CudaStorage,
                l1: &candle_core::Layout,
                s2: &candle_core::CudaStorage,
                l2: &candle_core::Layout,
                s3: &candle_core::CudaStorage,
                l3: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                self.$run((s1, l1), (s2, l2), (s3, l3))
            }
        }
    };
}
pub(crate) use cuda_only_op;

/// An input of a CUDA op: its storage and layout.
pub(crate) type Input<'a> = (&'a CudaStorage, &'a Layout);

/// Blocks for a grid-stride loop over `n` elements at 256 threads.
pub(crate) fn blocks_for(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 65_535 * 16) as u32
}
