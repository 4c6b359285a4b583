//! Attention without a score matrix in memory: one kernel per call, single pass with an online softmax
//! on tensor cores (`mma.sync`), scores and sums in f32, key / value tiles double buffered through
//! `cp.async` (see `attention` in kernels.cu). Replaces, on CUDA in f16 / bf16, candle's per-head
//! transposes, score matmul, softmax over the stored L×L scores and value matmul.

use super::u32_arg;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor, WithDType};
use std::sync::Mutex;

/// Query rows per block and keys per tile.
const BR: usize = 64;
const BC: usize = 64;
/// Head sizes up to 16·MAX_NF (SD 1.5's largest is 160).
const MAX_NF: usize = 10;

/// Shared memory of the kernel for `nf` 16-wide slices of the head (its `smem` layout: the query tile,
/// two key tiles, two value tiles, rows padded by 8 values).
fn shared_bytes(nf: usize) -> usize {
    let ld = nf * 16 + 8;
    (BR + 4 * BC) * ld * 2
}

/// Whether [`attention`] takes these inputs: CUDA, f16 or bf16, heads of a multiple of 8 values (the
/// kernel copies 16-byte chunks; every SD / SDXL head is: 40, 64, 80, 160), at most 160.
pub fn attention_applies(q: &Tensor, head_dim: usize) -> bool {
    attention_applies_to(q.device(), q.dtype(), head_dim)
}

/// [`attention_applies`] for inputs on `device` in `dtype`.
pub fn attention_applies_to(device: &candle_core::Device, dtype: DType, head_dim: usize) -> bool {
    super::enabled("attention")
        && device.is_cuda()
        && matches!(dtype, DType::F16 | DType::BF16)
        && (1..=16 * MAX_NF).contains(&head_dim)
        && head_dim.is_multiple_of(8)
}

/// Whether the device gives a block `bytes` of shared memory (heads of 160 take 105 KiB: more than
/// consumer GPUs allow; those heads then take candle's path). Asked of the driver once per device.
fn shared_fits(q: &Tensor, bytes: usize) -> Result<bool> {
    static MAX: Mutex<Vec<(DeviceId, usize)>> = Mutex::new(Vec::new());
    let candle_core::Device::Cuda(dev) = q.device() else {
        return Ok(false);
    };
    let mut known = MAX.lock().unwrap_or_else(|e| e.into_inner());
    let max = match known.iter().find(|(id, _)| *id == dev.id()) {
        Some(&(_, max)) => max,
        None => {
            let max = dev
                .cuda_stream()
                .context()
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
                .map_err(|e| super::wrap("shared memory per block", e))?;
            let max = max.max(0) as usize;
            known.push((dev.id(), max));
            max
        }
    };
    Ok(bytes <= max)
}

struct Attention {
    heads: usize,
}

impl Attention {
    fn cuda(
        &self,
        q: super::Input<'_>,
        k: super::Input<'_>,
        v: super::Input<'_>,
    ) -> Result<(CudaStorage, Shape)> {
        match q.0.dtype() {
            DType::F16 => run::<half::f16>(self, q, k, v),
            DType::BF16 => run::<half::bf16>(self, q, k, v),
            d => candle_core::bail!("our attention kernel takes f16 or bf16, not {d:?}"),
        }
    }
}
super::cuda_only_op!(Attention, "ap-attention", 3, cuda);

/// The row stride of a `(b, l, n)` layout whose rows are `n` contiguous values, `stride` apart, and whose
/// images follow each other (`l·stride` apart): a contiguous tensor (`stride = n`) or a column view of a
/// wider one, as the q / k / v of one fused projection are. `None` for any other layout.
fn row_stride(l: &Layout) -> Option<usize> {
    let (&[_, len, n], &[image, row, one]) = (l.dims(), l.stride()) else {
        return None;
    };
    (one == 1 && row >= n && image == len * row).then_some(row)
}

/// The row stride of a layout the kernel reads in place: rows as [`row_stride`] takes them, whose start
/// offset and stride are multiples of 8 values (the kernel copies 16-byte chunks of 8).
fn aligned_rows(l: &Layout) -> Option<usize> {
    row_stride(l).filter(|r| r.is_multiple_of(8) && l.start_offset().is_multiple_of(8))
}

/// Whether the kernel reads these inputs in place (k and v share one stride argument).
fn kernel_takes(q: &Layout, k: &Layout, v: &Layout) -> bool {
    aligned_rows(q).is_some() && aligned_rows(k).is_some() && aligned_rows(k) == aligned_rows(v)
}

/// The values a `(b, l, n)` layout accepted by [`row_stride`] spans in its storage.
fn rows_view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<(CudaView<'a, T>, usize)> {
    let Some(row) = row_stride(l) else {
        candle_core::bail!("internal error: {what} passed to the attention kernel is not rows of values")
    };
    let &[b, len, n] = l.dims() else {
        unreachable!("row_stride takes 3 dims")
    };
    let span = if b * len == 0 { 0 } else { (b * len - 1) * row + n };
    let slice = s.as_cuda_slice::<T>()?;
    let view = slice
        .try_slice(l.start_offset()..l.start_offset() + span)
        .ok_or_else(|| super::wrap(what, "layout out of the storage's bounds"))?;
    Ok((view, row))
}

fn run<T: CudaDType + DeviceRepr + WithDType>(
    op: &Attention,
    (qs, ql): (&CudaStorage, &Layout),
    (ks, kl): (&CudaStorage, &Layout),
    (vs, vl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = qs.device();
    let (&[b, lq, inner], &[bk, lk, inner_k]) = (ql.dims(), kl.dims()) else {
        candle_core::bail!("attention of shapes {:?} and {:?}", ql.shape(), kl.shape())
    };
    if bk != b || inner_k != inner || vl.shape() != kl.shape() || lk == 0 || inner % op.heads != 0 {
        candle_core::bail!(
            "attention of shapes {:?}, {:?}, {:?}",
            ql.shape(),
            kl.shape(),
            vl.shape()
        )
    }
    let d = inner / op.heads;
    let nf = d.div_ceil(16);
    if nf > MAX_NF || !d.is_multiple_of(8) || !kernel_takes(ql, kl, vl) || b * op.heads > 65_535 {
        candle_core::bail!("attention with {} heads of {d} values over {b} images", op.heads)
    }
    let (q, q_row) = rows_view::<T>(qs, ql, "attention query")?;
    let (k, kv_row) = rows_view::<T>(ks, kl, "attention key")?;
    let (v, _) = rows_view::<T>(vs, vl, "attention value")?;
    let smem = shared_bytes(nf);
    let name = format!("ap_attention_{}_nf{nf}", T::DTYPE.as_str());
    let func = super::function_with(dev, &name, |f| {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .map_err(|e| super::wrap("attention shared memory", e))
    })?;
    let mut out = unsafe { dev.alloc::<T>(b * lq * inner) }?;
    let args = [
        u32_arg(op.heads, "heads")?,
        u32_arg(lq, "query length")?,
        u32_arg(lk, "key length")?,
        u32_arg(d, "head size")?,
        u32_arg(q_row, "query row")?,
        u32_arg(kv_row, "key row")?,
        u32_arg(inner, "output row")?,
    ];
    let scale = 1.0 / (d as f32).sqrt();
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    builder.arg(&q).arg(&k).arg(&v).arg(&mut out);
    for a in &args {
        builder.arg(a);
    }
    builder.arg(&scale);
    let cfg = LaunchConfig {
        grid_dim: (
            u32_arg(lq.div_ceil(BR), "query blocks")?,
            (b * op.heads) as u32,
            1,
        ),
        block_dim: (128, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    // SAFETY: arguments match the kernel's signature; q spans b·lq rows of `q_row` values and k, v b·lk
    // rows of `kv_row` (the last row `inner` long), out b·lq·inner values (checked by `rows_view`);
    // shared memory as the kernel lays it.
    unsafe { builder.launch(cfg) }.map_err(|e| super::wrap("attention", e))?;
    Ok((T::wrap_cuda_slice(out, dev.clone()), ql.shape().clone()))
}

/// `softmax(q·kᵀ/√d)·v` per head for `(b, l, heads·d)` inputs (see [`attention_applies`]); `None` where
/// the device lacks the kernel's shared memory for this head size.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Option<Tensor>> {
    let d = q.dim(2)? / heads.max(1);
    if !shared_fits(q, shared_bytes(d.div_ceil(16)))? {
        return Ok(None);
    }
    // Rows the kernel reads in place (contiguous, or column views of one fused projection's output)
    // are passed as they are; others are copied to a fresh buffer (`contiguous` of a contiguous view
    // keeps its offset, which may not be a multiple of 8: then `force_contiguous`).
    let prepare = |t: &Tensor| -> Result<Tensor> {
        if aligned_rows(t.layout()).is_some() {
            return Ok(t.clone());
        }
        let t = t.contiguous()?;
        if aligned_rows(t.layout()).is_some() {
            Ok(t)
        } else {
            t.force_contiguous()
        }
    };
    let (q, mut k, mut v) = (prepare(q)?, prepare(k)?, prepare(v)?);
    if aligned_rows(k.layout()) != aligned_rows(v.layout()) {
        (k, v) = (k.force_contiguous()?, v.force_contiguous()?);
    }
    q.apply_op3_no_bwd(&k, &v, &Attention { heads }).map(Some)
}
