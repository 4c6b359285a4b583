//! Convolution as our transposed im2col + one cuBLAS matmul whose result is already NCHW (or, built
//! with the `cudnn` feature, through cuDNN: [`super::cudnn`]).
//!
//! candle's CUDA `conv2d` builds `(b·h_out·w_out, c_in·k·k)` columns (one thread per element, 64-bit
//! divisions each), multiplies, then transposes the `(b, h·w, c_out)` result into NCHW. Here the columns
//! are `(b, c_in·k·k, h_out·w_out)`, read and written coalesced along image rows, with the nearest
//! upsampling and zero padding folded into the reads, so `weight (c_out, c_in·k·k) × columns` is the
//! output; bias, per-image channel add and residual follow in one kernel. Convolutions whose columns
//! would pass the band bound run in bands of output rows, as [`crate::layers::bounded::conv2d`].

use super::{by_dtype, kernel, u32_arg, view};
use crate::layers::bounded::{ConvAdd, ConvShape};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor, WithDType};

/// Columns of output rows `[row0, row0 + rows)`.
struct Im2ColT {
    shape: ConvShape,
    w_out: usize,
    row0: usize,
    rows: usize,
}

impl Im2ColT {
    fn cuda(&self, (s, l): super::Input<'_>) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s.dtype(), im2col_run(self, s, l))
    }
}
super::cuda_only_op!(Im2ColT, "ap-im2col-t", 1, cuda);

fn im2col_run<T: CudaDType + DeviceRepr + WithDType>(
    op: &Im2ColT,
    s: &CudaStorage,
    l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let x = view::<T>(s, l, "convolution input")?;
    let &[b, c, h, w] = l.dims() else {
        candle_core::bail!("convolution input of shape {:?}", l.shape())
    };
    let k = op.shape.kernel;
    let ckk = c * k * k;
    let n_pix = op.rows * op.w_out;
    if ckk > 65_535 || b > 65_535 {
        candle_core::bail!("convolution of {c} channels × {k}² over {b} images exceeds the kernel's grid")
    }
    let mut col = unsafe { dev.alloc::<T>(b * ckk * n_pix) }?;
    // The sizes every model convolution has, as compile-time constants of the kernel; others generic.
    let root = match (k, op.shape.up) {
        (3, 1) => "ap_im2col_t_k3_up1",
        (3, 2) => "ap_im2col_t_k3_up2",
        (1, 1) => "ap_im2col_t_k1_up1",
        _ => "ap_im2col_t",
    };
    let func = kernel::<T>(dev, root)?;
    let args = [
        u32_arg(c, "channels")?,
        u32_arg(h, "height")?,
        u32_arg(w, "width")?,
        u32_arg(op.shape.up, "upsampling")?,
        u32_arg(k, "kernel")?,
        u32_arg(op.shape.stride, "stride")?,
        u32_arg(op.shape.padding, "padding")?,
        u32_arg(op.w_out, "output width")?,
        u32_arg(op.row0, "row")?,
        u32_arg(op.rows, "rows")?,
    ];
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    builder.arg(&x).arg(&mut col);
    for a in &args {
        builder.arg(a);
    }
    let cfg = LaunchConfig {
        grid_dim: (u32_arg(n_pix.div_ceil(256), "pixels")?, ckk as u32, b as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match ap_im2col_t's signature; x holds b·c·h·w values (contiguous, checked by
    // `view`) and the kernel reads only inside it; col holds b·ckk·n_pix values, the most it writes.
    unsafe { builder.launch(cfg) }.map_err(|e| super::wrap("ap_im2col_t", e))?;
    Ok((T::wrap_cuda_slice(col, dev.clone()), Shape::from((b, ckk, n_pix))))
}

/// `conv2d(upsample(xs, up), weight) + bias + channel + residual` (weight `(c_out, c_in, k, k)`): through
/// cuDNN where it is built and on (`cudnn`, see [`super::enabled`]) and takes the sizes, otherwise our
/// columns ([`conv2d_columns`]).
pub fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    shape: ConvShape,
    add: ConvAdd<'_>,
    band_bytes: usize,
) -> Result<Tensor> {
    #[cfg(feature = "cudnn")]
    if super::enabled("cudnn") {
        let (b, _, h, w) = xs.dims4()?;
        let (h_out, w_out) = shape.output_size(h, w)?;
        if super::cudnn::takes(xs, shape, b * weight.dim(0)? * h_out * w_out) {
            if let Ok(y) = super::cudnn::conv2d(xs, weight, shape)? {
                return finish(y, add_vector(&add, xs.dtype())?.as_ref(), add.residual.cloned());
            }
        }
    }
    conv2d_columns(xs, weight, shape, add, band_bytes)
}

/// [`conv2d`] through cuDNN, whatever the kernel settings (see `cudnn.rs`); an error where cuDNN
/// declines the convolution.
#[cfg(feature = "cudnn")]
pub fn conv2d_cudnn(xs: &Tensor, weight: &Tensor, shape: ConvShape, add: ConvAdd<'_>) -> Result<Tensor> {
    match super::cudnn::conv2d(xs, weight, shape)? {
        Ok(y) => finish(y, add_vector(&add, xs.dtype())?.as_ref(), add.residual.cloned()),
        Err(why) => candle_core::bail!("cuDNN declined the convolution: {why}"),
    }
}

/// Bias and per-image channel add as one `(b, c_out)` or `(c_out,)` vector.
fn add_vector(add: &ConvAdd<'_>, dtype: DType) -> Result<Option<Tensor>> {
    Ok(match (add.bias, add.channel) {
        (Some(bias), Some(ch)) => Some(
            ch.to_dtype(dtype)?
                .broadcast_add(&bias.to_dtype(dtype)?.unsqueeze(0)?)?,
        ),
        (Some(bias), None) => Some(bias.clone()),
        (None, Some(ch)) => Some(ch.clone()),
        (None, None) => None,
    })
}

/// `y + vec + residual` in one kernel (or none).
fn finish(y: Tensor, vec: Option<&Tensor>, residual: Option<Tensor>) -> Result<Tensor> {
    match (vec, residual) {
        (Some(v), r) => super::add_channel(&y, v, r.as_ref()),
        (None, Some(r)) => y + r,
        (None, None) => Ok(y),
    }
}

/// [`conv2d`] as our transposed im2col + one matmul, in bands of output rows whose columns stay under
/// `band_bytes`.
pub fn conv2d_columns(
    xs: &Tensor,
    weight: &Tensor,
    shape: ConvShape,
    add: ConvAdd<'_>,
    band_bytes: usize,
) -> Result<Tensor> {
    let ConvShape {
        kernel: k,
        stride: s,
        padding: p,
        up,
    } = shape;
    let xs = xs.contiguous()?;
    let (b, c_in, h, w) = xs.dims4()?;
    let (h_out, w_out) = shape.output_size(h, w)?;
    let c_out = weight.dim(0)?;
    let w2 = weight
        .to_dtype(xs.dtype())?
        .contiguous()?
        .reshape((c_out, c_in * k * k))?;
    let vec = add_vector(&add, xs.dtype())?;
    let columns = |row0: usize, rows: usize| -> Result<Tensor> {
        if k == 1 && s == 1 && p == 0 && up == 1 && row0 == 0 && rows == h_out {
            // A pointwise convolution's columns are its input.
            return xs.reshape((b, c_in, h * w));
        }
        xs.apply_op1_no_bwd(&Im2ColT {
            shape,
            w_out,
            row0,
            rows,
        })
    };
    let row_bytes = b * w_out * c_in * k * k * xs.dtype().size_in_bytes();
    let rows = (band_bytes / row_bytes.max(1)).clamp(1, h_out);
    if rows == h_out {
        let y = w2
            .broadcast_matmul(&columns(0, h_out)?)?
            .reshape((b, c_out, h_out, w_out))?;
        return finish(y, vec.as_ref(), add.residual.cloned());
    }
    let out = Tensor::zeros((b, c_out, h_out, w_out), xs.dtype(), xs.device())?;
    let mut r0 = 0;
    while r0 < h_out {
        let n = rows.min(h_out - r0);
        let y = w2
            .broadcast_matmul(&columns(r0, n)?)?
            .reshape((b, c_out, n, w_out))?;
        let residual = match add.residual {
            Some(r) => Some(r.narrow(2, r0, n)?),
            None => None,
        };
        out.slice_set(&finish(y, vec.as_ref(), residual)?, 2, r0)?;
        r0 += n;
    }
    Ok(out)
}
