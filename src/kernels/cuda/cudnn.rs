//! Convolutions through cuDNN (the `cudnn` feature), configured as PyTorch configures them, so a UNet
//! step's convolutions cost what they cost diffusers: implicit-GEMM kernels that never write the
//! `c_in·k²` columns our im2col path stores and reads back (≈ 17 ms of an SDXL 1024² step on an H100).
//!
//! Half-precision data is convolved with f32 accumulation (cuDNN's "pseudo half" configuration, as
//! PyTorch; candle 0.11's own cuDNN path accumulates f16 in f16) on tensor cores; f32 data with plain
//! FMA math and implicit GEMM, never TF32, FFT or Winograd, because f32 is our exact path (parity
//! with diffusers' CPU outputs). For half precision the algorithm is cuDNN's heuristic first choice (`cudnnGetConvolutionForwardAlgorithm_v7`, PyTorch's
//! choice without `cudnn.benchmark`) unless its workspace exceeds [`WORKSPACE_BYTES`]; then implicit
//! GEMM (precomputed indices, else plain, which needs no workspace). Descriptors and algorithm are built
//! once per shape and device. A convolution cuDNN cannot take (no handle, no algorithm within the
//! bound) is reported to the caller, which runs our columns instead: a cuDNN build never does worse
//! than one without.

use super::view;
use crate::layers::bounded::ConvShape;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{
    sys, ConvDescriptor, ConvForward, Cudnn, CudnnDataType, FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::driver::{CudaStream, DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CudaDevice, CudaStorage, DType, Result, Shape, Tensor, WithDType};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The most workspace a convolution's algorithm may ask for (the band bound of our im2col path).
const WORKSPACE_BYTES: usize = crate::layers::bounded::BAND_BYTES;

/// Why cuDNN does not take a convolution (the caller then runs another path).
pub type Declined = String;

/// Whether [`conv2d`] may take a convolution of `xs` (before any upsampling) producing `out_elems`
/// values: cuDNN's legacy API counts elements in 32-bit integers.
pub fn takes(xs: &Tensor, shape: ConvShape, out_elems: usize) -> bool {
    let in_elems = xs.elem_count() * shape.up * shape.up;
    xs.device().is_cuda()
        && matches!(xs.dtype(), DType::F16 | DType::BF16 | DType::F32)
        && in_elems < i32::MAX as usize
        && out_elems < i32::MAX as usize
}

/// `conv2d(upsample(xs, up), weight)` for `(b, c_in, h, w)` inputs and `(c_out, c_in, k, k)` weights
/// (see [`takes`]); adds are the caller's. `Ok(Err(why))` where cuDNN cannot take it.
pub fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    shape: ConvShape,
) -> Result<std::result::Result<Tensor, Declined>> {
    let candle_core::Device::Cuda(dev) = xs.device() else {
        return Ok(Err("not a CUDA tensor".into()));
    };
    let xs = if shape.up > 1 {
        let (_, _, h, w) = xs.dims4()?;
        xs.upsample_nearest2d(h * shape.up, w * shape.up)?
    } else {
        xs.contiguous()?
    };
    let weight = weight.to_dtype(xs.dtype())?.contiguous()?;
    let key = match Key::new(&xs, &weight, shape)? {
        Ok(key) => key,
        Err(why) => return Ok(Err(why)),
    };
    // Plan now (descriptors, algorithm), so that a convolution cuDNN declines never reaches the op.
    let planned = match key.dtype {
        DType::F16 => with_plan::<half::f16, _>(dev, &key, |_| Ok(()))?,
        DType::BF16 => with_plan::<half::bf16, _>(dev, &key, |_| Ok(()))?,
        DType::F32 => with_plan::<f32, _>(dev, &key, |_| Ok(()))?,
        d => Err(format!(
            "cuDNN convolutions here take f16, bf16 or f32, not {d:?}"
        )),
    };
    if let Err(why) = planned {
        return Ok(Err(why));
    }
    xs.apply_op2_no_bwd(&weight, &Conv { key }).map(Ok)
}

struct Conv {
    key: Key,
}

impl Conv {
    fn cuda(&self, x: super::Input<'_>, w: super::Input<'_>) -> Result<(CudaStorage, Shape)> {
        match x.0.dtype() {
            DType::F16 => run::<half::f16>(self, x, w),
            DType::BF16 => run::<half::bf16>(self, x, w),
            DType::F32 => run::<f32>(self, x, w),
            d => candle_core::bail!("cuDNN convolutions take f16, bf16 or f32, not {d:?}"),
        }
    }
}
super::cuda_only_op!(Conv, "ap-cudnn-conv2d", 2, cuda);

/// What identifies a convolution's descriptors: dtype and every size (input already upsampled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    dtype: DType,
    x: [i32; 4],
    y: [i32; 4],
    kernel: i32,
    stride: i32,
    padding: i32,
}

impl Key {
    fn new(xs: &Tensor, weight: &Tensor, shape: ConvShape) -> Result<std::result::Result<Key, Declined>> {
        let (b, c, h, w) = xs.dims4()?;
        let (c_out, c_in, kh, kw) = weight.dims4()?;
        let k = shape.kernel;
        if c_in != c || kh != k || kw != k {
            candle_core::bail!("convolution of {:?} by {:?}", xs.shape(), weight.shape())
        }
        // The input is already upsampled: the output is that of an unscaled convolution of it.
        let (h_out, w_out) = ConvShape { up: 1, ..shape }.output_size(h, w)?;
        let sizes = [b, c, h, w, c_out, h_out, w_out, k, shape.stride, shape.padding];
        let Ok(n) = sizes
            .map(i32::try_from)
            .into_iter()
            .collect::<std::result::Result<Vec<i32>, _>>()
        else {
            return Ok(Err(format!("sizes {sizes:?} do not fit cuDNN's 32-bit integers")));
        };
        Ok(Ok(Key {
            dtype: xs.dtype(),
            x: [n[0], n[1], n[2], n[3]],
            y: [n[0], n[4], n[5], n[6]],
            kernel: n[7],
            stride: n[8],
            padding: n[9],
        }))
    }

    fn out_elems(&self) -> usize {
        self.y.iter().map(|&d| d as usize).product()
    }
}

/// One convolution's descriptors and algorithm.
struct Plan<T: CudnnDataType> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    algo: sys::cudnnConvolutionFwdAlgo_t,
    workspace: usize,
}

/// A device's cuDNN handle (bound to the device's one stream) and plans, or why there is none.
struct DeviceCudnn {
    stream: Arc<CudaStream>,
    cudnn: std::result::Result<Arc<Cudnn>, Declined>,
    plans: HashMap<Key, std::result::Result<Box<dyn Any>, Declined>>,
}

// SAFETY: a cuDNN handle may be used from any thread, one call at a time: these live in `STATE` and
// are used only while its lock is held (with the device's context bound to the calling thread).
unsafe impl Send for DeviceCudnn {}

static STATE: Mutex<Vec<(DeviceId, DeviceCudnn)>> = Mutex::new(Vec::new());

fn wrap(what: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("autopipeline cuDNN convolution: {what}: {e}"))
}

fn new_plan<T: CudnnDataType>(cudnn: &Arc<Cudnn>, key: &Key) -> std::result::Result<Plan<T>, Declined> {
    let e = |what: &'static str| move |err| format!("cuDNN {what}: {err}");
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let mut conv = cudnn
        .create_conv2d::<f32>(
            [key.padding; 2],
            [key.stride; 2],
            [1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(e("convolution descriptor"))?;
    let math = if T::DATA_TYPE == sys::cudnnDataType_t::CUDNN_DATA_FLOAT {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
    };
    conv.set_math_type(math).map_err(e("math type"))?;
    let x = cudnn
        .create_4d_tensor::<T>(nchw, key.x)
        .map_err(e("input descriptor"))?;
    let w_dims = [key.y[1], key.x[1], key.kernel, key.kernel];
    let w = cudnn
        .create_4d_filter::<T>(nchw, w_dims)
        .map_err(e("filter descriptor"))?;
    let y = cudnn
        .create_4d_tensor::<T>(nchw, key.y)
        .map_err(e("output descriptor"))?;
    let forward = ConvForward {
        conv: &conv,
        x: &x,
        w: &w,
        y: &y,
    };
    // The heuristic's choice, else the implicit GEMMs (precomputed indices: a small workspace; plain:
    // none), the first that is supported within the workspace bound. f32 takes the implicit GEMMs
    // only: FFT and Winograd transforms round differently from a direct sum, and f32 is our exact path.
    use sys::cudnnConvolutionFwdAlgo_t as Algo;
    let is_f32 = T::DATA_TYPE == sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
    let candidates = [
        if is_f32 {
            None
        } else {
            // cudarc asserts that cuDNN returned at least one algorithm: a panic there is a decline.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| forward.pick_algorithm()))
                .ok()
                .and_then(|r| r.ok())
        },
        Some(Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM),
        Some(Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM),
    ];
    let (algo, workspace) = candidates
        .into_iter()
        .flatten()
        .find_map(|algo| match forward.get_workspace_size(algo) {
            Ok(bytes) if bytes <= WORKSPACE_BYTES => Some((algo, bytes)),
            _ => None,
        })
        .ok_or_else(|| format!("cuDNN has no algorithm for {key:?} within {WORKSPACE_BYTES} bytes"))?;
    Ok(Plan {
        conv,
        x,
        w,
        y,
        algo,
        workspace,
    })
}

/// Runs `f` on the plan for `key` on `dev` (the handle and plan built on first use), holding the lock
/// that serialises the use of cuDNN handles; `Ok(Err(why))` where cuDNN cannot take `key`.
fn with_plan<T, R>(
    dev: &CudaDevice,
    key: &Key,
    f: impl FnOnce(&Plan<T>) -> Result<R>,
) -> Result<std::result::Result<R, Declined>>
where
    T: CudnnDataType + 'static,
{
    let stream = dev.cuda_stream();
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    // Handles of devices nobody else holds any more (only the entry and its handle keep the stream),
    // each destroyed with its own device current.
    let mut i = 0;
    while i < state.len() {
        if Arc::strong_count(&state[i].1.stream) <= 2 {
            let (_, gone) = state.swap_remove(i);
            let _ = gone.stream.context().bind_to_thread();
            drop(gone);
        } else {
            i += 1;
        }
    }
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| wrap("binding the device", e))?;
    let index = match state.iter().position(|(id, _)| *id == dev.id()) {
        Some(i) => i,
        None => {
            let cudnn = Cudnn::new(stream.clone()).map_err(|e| format!("creating a cuDNN handle: {e}"));
            let entry = DeviceCudnn {
                stream: stream.clone(),
                cudnn,
                plans: HashMap::new(),
            };
            state.push((dev.id(), entry));
            state.len() - 1
        }
    };
    let device = &mut state[index].1;
    let cudnn = match &device.cudnn {
        Ok(c) => c.clone(),
        Err(why) => return Ok(Err(why.clone())),
    };
    let plan = device
        .plans
        .entry(*key)
        .or_insert_with(|| new_plan::<T>(&cudnn, key).map(|p| Box::new(p) as Box<dyn Any>));
    match plan {
        Ok(plan) => {
            let plan = plan
                .downcast_ref::<Plan<T>>()
                .ok_or_else(|| wrap("plan cache", "dtype mismatch"))?;
            f(plan).map(Ok)
        }
        Err(why) => Ok(Err(why.clone())),
    }
}

fn run<T>(op: &Conv, (xs, xl): super::Input<'_>, (ws, wl): super::Input<'_>) -> Result<(CudaStorage, Shape)>
where
    T: CudaDType + DeviceRepr + WithDType + CudnnDataType + ValidAsZeroBits + 'static,
{
    let dev: &CudaDevice = xs.device();
    let x = view::<T>(xs, xl, "convolution input")?;
    let w = view::<T>(ws, wl, "convolution weight")?;
    let key = &op.key;
    let x_dims: Vec<usize> = key.x.iter().map(|&d| d as usize).collect();
    let w_dims = [key.y[1], key.x[1], key.kernel, key.kernel].map(|d| d as usize);
    if xl.dims() != x_dims.as_slice() || wl.dims() != w_dims.as_slice() || T::DTYPE != key.dtype {
        candle_core::bail!(
            "internal error: cuDNN convolution planned for {key:?}, given {:?} by {:?}",
            xl.shape(),
            wl.shape()
        )
    }
    let mut y = unsafe { dev.alloc::<T>(key.out_elems()) }?;
    let launched = with_plan::<T, _>(dev, key, |plan| {
        let forward = ConvForward {
            conv: &plan.conv,
            x: &plan.x,
            w: &plan.w,
            y: &plan.y,
        };
        let mut workspace = unsafe { dev.alloc::<u8>(plan.workspace.max(1)) }?;
        // SAFETY: the descriptors describe exactly these buffers (checked above against the key they
        // were built from): x (b, c, h, w) and w (c_out, c, k, k) contiguous (checked by `view`), y
        // (b, c_out, h_out, w_out) freshly allocated, all of dtype T; the workspace holds what cuDNN
        // asked for this algorithm; all on the handle's stream.
        unsafe {
            forward.launch::<_, _, _, _>(
                plan.algo,
                Some(&mut workspace),
                (T::from_f64(1.0), T::from_f64(0.0)),
                &x,
                &w,
                &mut y,
            )
        }
        .map_err(|e| wrap("cudnnConvolutionForward", e))
    })?;
    if let Err(why) = launched {
        candle_core::bail!("internal error: cuDNN declined a planned convolution: {why}")
    }
    let shape = Shape::from(key.y.map(|d| d as usize).to_vec());
    Ok((T::wrap_cuda_slice(y, dev.clone()), shape))
}
