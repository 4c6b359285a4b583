//! `torch.nn.GroupNorm` (+ SiLU) in three kernels: partial sums per chunk of each (image, group), the
//! groups' means and inverse deviations from them, then the per-channel `x·scale + shift` (+ SiLU) in
//! f32, rounded once, as PyTorch applies it. Temporaries are a few floats per 4096 values (candle_nn's
//! group norm keeps four to five f32 copies of the input).

use super::{by_dtype, kernel, u32_arg, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor, WithDType};

/// Values per partial sum (`GN_CHUNK` in kernels.cu).
const CHUNK: usize = 4096;

/// Sums of `x − x[row start]` and of their squares, per row of `n` values and chunk: `(rows, chunks, 2)`.
struct Partial {
    rows: usize,
    n: usize,
}

impl Partial {
    fn cuda(&self, (s, l): super::Input<'_>) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s.dtype(), partial_run(self, s, l))
    }
}
super::cuda_only_op!(Partial, "ap-group-norm-partial", 1, cuda);

fn partial_run<T: CudaDType + DeviceRepr + WithDType>(
    op: &Partial,
    s: &CudaStorage,
    l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let x = view::<T>(s, l, "group norm input")?;
    let chunks = op.n.div_ceil(CHUNK);
    if op.rows > 65_535 {
        candle_core::bail!("{} groups exceed the group norm kernel's grid", op.rows)
    }
    let mut partial = unsafe { dev.alloc::<f32>(op.rows * chunks * 2) }?;
    let func = kernel::<T>(dev, "ap_gn_partial")?;
    let n = u32_arg(op.n, "group size")?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(&x).arg(&mut partial).arg(&n);
    let cfg = LaunchConfig {
        grid_dim: (u32_arg(chunks, "chunks")?, op.rows as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match ap_gn_partial's signature; x holds rows·n values, partial rows·chunks·2.
    unsafe { b.launch(cfg) }.map_err(|e| super::wrap("ap_gn_partial", e))?;
    Ok((
        f32::wrap_cuda_slice(partial, dev.clone()),
        Shape::from((op.rows, chunks, 2)),
    ))
}

/// Each row's mean and `1/sqrt(var + eps)`, `(rows, 2)` f32, from `x` and its partial sums.
struct Finalize {
    n: usize,
    eps: f32,
}

impl Finalize {
    fn cuda(&self, x: super::Input<'_>, partial: super::Input<'_>) -> Result<(CudaStorage, Shape)> {
        by_dtype!(x.0.dtype(), finalize_run(self, x, partial))
    }
}
super::cuda_only_op!(Finalize, "ap-group-norm-stats", 2, cuda);

fn finalize_run<T: CudaDType + DeviceRepr + WithDType>(
    op: &Finalize,
    (xs, xl): (&CudaStorage, &Layout),
    (ps, pl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = xs.device();
    let x = view::<T>(xs, xl, "group norm input")?;
    let partial = view::<f32>(ps, pl, "group norm sums")?;
    let &[rows, chunks, 2] = pl.dims() else {
        candle_core::bail!("group norm sums of shape {:?}", pl.shape())
    };
    let mut stats = unsafe { dev.alloc::<f32>(rows * 2) }?;
    let func = kernel::<T>(dev, "ap_gn_finalize")?;
    let (n, c) = (u32_arg(op.n, "group size")?, u32_arg(chunks, "chunks")?);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(&x)
        .arg(&partial)
        .arg(&mut stats)
        .arg(&n)
        .arg(&c)
        .arg(&op.eps);
    let cfg = LaunchConfig {
        grid_dim: (u32_arg(rows, "groups")?, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match ap_gn_finalize's signature; x holds rows·n values, partial rows·chunks·2,
    // stats rows·2.
    unsafe { b.launch(cfg) }.map_err(|e| super::wrap("ap_gn_finalize", e))?;
    Ok((f32::wrap_cuda_slice(stats, dev.clone()), Shape::from((rows, 2))))
}

/// The normalisation itself, from `x`, the statistics and `(weight ‖ bias)` (`2c` values in x's dtype).
struct Apply {
    groups: usize,
    silu: bool,
}

impl Apply {
    fn cuda(
        &self,
        x: super::Input<'_>,
        stats: super::Input<'_>,
        wb: super::Input<'_>,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(x.0.dtype(), apply_run(self, x, stats, wb))
    }
}
super::cuda_only_op!(Apply, "ap-group-norm", 3, cuda);

fn apply_run<T: CudaDType + DeviceRepr + WithDType>(
    op: &Apply,
    (xs, xl): (&CudaStorage, &Layout),
    (ps, pl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = xs.device();
    let x = view::<T>(xs, xl, "group norm input")?;
    let stats = view::<f32>(ps, pl, "group norm statistics")?;
    let wb = view::<T>(ws, wl, "group norm weight")?;
    let dims = xl.dims();
    let (b, c) = (dims[0], dims[1]);
    let inner = xl.shape().elem_count() / (b * c).max(1);
    if wl.shape().elem_count() != 2 * c || b * c > 65_535 {
        candle_core::bail!(
            "group norm over {c} channels × {b} images with {:?} weights",
            wl.shape()
        )
    }
    let (weight, bias) = (wb.slice(0..c), wb.slice(c..2 * c));
    let mut out = unsafe { dev.alloc::<T>(xl.shape().elem_count()) }?;
    let func = kernel::<T>(dev, "ap_gn_apply")?;
    let args = [
        u32_arg(inner, "plane")?,
        u32_arg(c, "channels")?,
        u32_arg(c / op.groups, "channels per group")?,
    ];
    let silu = u32::from(op.silu);
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    builder.arg(&x).arg(&stats).arg(&weight).arg(&bias).arg(&mut out);
    for a in &args {
        builder.arg(a);
    }
    builder.arg(&silu);
    let cfg = LaunchConfig {
        grid_dim: (inner.div_ceil(1024).clamp(1, 1024) as u32, (b * c) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match ap_gn_apply's signature; x and out hold b·c·inner values, stats the
    // (b·groups, 2) of `Finalize`, weight and bias c values each.
    unsafe { builder.launch(cfg) }.map_err(|e| super::wrap("ap_gn_apply", e))?;
    Ok((T::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
}

/// `silu?(group_norm(xs))` for `xs` `(b, c, …)`.
pub fn group_norm(
    xs: &Tensor,
    groups: usize,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    silu: bool,
) -> Result<Tensor> {
    let (b, _) = crate::layers::bounded::group_norm_dims(xs.dims(), groups)?;
    let xs = xs.contiguous()?;
    let rows = b * groups;
    let n = xs.elem_count() / rows.max(1);
    let partial = xs.apply_op1_no_bwd(&Partial { rows, n })?;
    debug_assert_eq!(partial.dtype(), DType::F32);
    let stats = xs.apply_op2_no_bwd(&partial, &Finalize { n, eps: eps as f32 })?;
    let wb = Tensor::cat(&[weight.flatten_all()?, bias.flatten_all()?], 0)?.to_dtype(xs.dtype())?;
    xs.apply_op3_no_bwd(&stats, &wb, &Apply { groups, silu })
}
