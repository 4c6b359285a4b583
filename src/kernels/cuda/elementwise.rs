//! Bias, per-channel and residual adds, and GEGLU, each one kernel writing its output once (candle's
//! broadcast adds index every element through 64-bit strided arithmetic, and GEGLU was four kernels).

use super::{blocks_for, by_dtype, kernel, u32_arg, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, Layout, Result, Shape, Tensor, WithDType};

/// Which element of the vector each output element adds.
#[derive(Debug, Clone, Copy)]
enum VecIndex {
    /// By the last dimension (a linear layer's bias).
    Last,
    /// By the channel of `(b, c, …)`: one value per channel, or per image and channel.
    Channel { per_image: bool },
}

struct AddVec(VecIndex);

impl AddVec {
    fn run(
        &self,
        y: (&CudaStorage, &Layout),
        vec: (&CudaStorage, &Layout),
        res: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        if let Some((_, rl)) = res {
            if rl.shape() != y.1.shape() {
                candle_core::bail!("residual {:?} does not match {:?}", rl.shape(), y.1.shape())
            }
        }
        let out = by_dtype!(y.0.dtype(), add_vec(self.0, y, vec, res))?;
        Ok((out, y.1.shape().clone()))
    }
}

impl AddVec {
    fn cuda2(&self, y: super::Input<'_>, vec: super::Input<'_>) -> Result<(CudaStorage, Shape)> {
        self.run(y, vec, None)
    }
    fn cuda3(
        &self,
        y: super::Input<'_>,
        vec: super::Input<'_>,
        res: super::Input<'_>,
    ) -> Result<(CudaStorage, Shape)> {
        self.run(y, vec, Some(res))
    }
}
super::cuda_only_op!(AddVec, "ap-add-vec", 2, cuda2);
super::cuda_only_op!(AddVec, "ap-add-vec-residual", 3, cuda3);

fn add_vec<T: CudaDType + DeviceRepr + WithDType>(
    index: VecIndex,
    (ys, yl): (&CudaStorage, &Layout),
    (vs, vl): (&CudaStorage, &Layout),
    res: Option<(&CudaStorage, &Layout)>,
) -> Result<CudaStorage> {
    let dev = ys.device();
    let y = view::<T>(ys, yl, "added tensor")?;
    let vec = view::<T>(vs, vl, "added vector")?;
    let r = match res {
        Some((rs, rl)) => Some(view::<T>(rs, rl, "residual")?),
        None => None,
    };
    let n = yl.shape().elem_count();
    let mut out = unsafe { dev.alloc::<T>(n) }?;
    let has_res = u32::from(r.is_some());
    let r = r.as_ref().unwrap_or(&y);
    let stream = dev.cuda_stream();
    let dims = yl.dims();
    let n_vec = vl.shape().elem_count();
    match index {
        VecIndex::Last => {
            let last = *dims.last().unwrap_or(&1);
            if n_vec != last {
                candle_core::bail!("bias of {n_vec} values for a last dimension of {last}")
            }
            let f = kernel::<T>(dev, "ap_add_last")?;
            let (n32, nv) = (u32_arg(n, "elements")?, u32_arg(n_vec, "bias")?);
            let mut b = stream.launch_builder(&f);
            b.arg(&y)
                .arg(&vec)
                .arg(r)
                .arg(&mut out)
                .arg(&n32)
                .arg(&nv)
                .arg(&has_res);
            let cfg = LaunchConfig {
                grid_dim: (blocks_for(n), 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match ap_add_last's signature; every buffer holds n (vec: n_vec) values.
            unsafe { b.launch(cfg) }.map_err(|e| super::wrap("ap_add_last", e))?;
        }
        VecIndex::Channel { per_image } => {
            let (bsz, c) = (dims[0], dims.get(1).copied().unwrap_or(1));
            let inner = n / (bsz * c).max(1);
            let want = if per_image { bsz * c } else { c };
            if n_vec != want {
                candle_core::bail!("{n_vec} channel values for {want} channels")
            }
            let f = kernel::<T>(dev, "ap_add_channel")?;
            let (inner32, c32, pi) = (
                u32_arg(inner, "plane")?,
                u32_arg(c, "channels")?,
                u32::from(per_image),
            );
            let planes = u32_arg(bsz * c, "planes")?;
            if planes > 65_535 {
                candle_core::bail!("{planes} planes exceed the kernel's grid")
            }
            let mut b = stream.launch_builder(&f);
            b.arg(&y)
                .arg(&vec)
                .arg(r)
                .arg(&mut out)
                .arg(&inner32)
                .arg(&c32)
                .arg(&pi)
                .arg(&has_res);
            let cfg = LaunchConfig {
                grid_dim: (inner.div_ceil(1024).clamp(1, 1024) as u32, planes, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match ap_add_channel's signature; planes × inner = n values each.
            unsafe { b.launch(cfg) }.map_err(|e| super::wrap("ap_add_channel", e))?;
        }
    }
    Ok(T::wrap_cuda_slice(out, dev.clone()))
}

fn apply(y: &Tensor, vec: &Tensor, residual: Option<&Tensor>, index: VecIndex) -> Result<Tensor> {
    let y = y.contiguous()?;
    let vec = vec.to_dtype(y.dtype())?.contiguous()?;
    match residual {
        Some(r) => {
            let r = r.to_dtype(y.dtype())?.contiguous()?;
            y.apply_op3_no_bwd(&vec, &r, &AddVec(index))
        }
        None => y.apply_op2_no_bwd(&vec, &AddVec(index)),
    }
}

/// `y + bias (+ residual)`, the bias (`n` values) along `y`'s last dimension.
pub fn add_last(y: &Tensor, bias: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    apply(y, bias, residual, VecIndex::Last)
}

/// `y + add (+ residual)` for `y` `(b, c, …)`: `add` is `(c,)` (a bias) or `(b, c)` (per image).
pub fn add_channel(y: &Tensor, add: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    let per_image = add.rank() == 2;
    apply(y, &add.flatten_all()?, residual, VecIndex::Channel { per_image })
}

struct Geglu {
    has_bias: bool,
}

impl Geglu {
    fn cuda(&self, h: super::Input<'_>, bias: super::Input<'_>) -> Result<(CudaStorage, Shape)> {
        by_dtype!(h.0.dtype(), geglu_run(h, bias, self.has_bias))
    }
}
super::cuda_only_op!(Geglu, "ap-geglu", 2, cuda);

fn geglu_run<T: CudaDType + DeviceRepr + WithDType>(
    (hs, hl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
    has_bias: bool,
) -> Result<(CudaStorage, Shape)> {
    let dev = hs.device();
    let h = view::<T>(hs, hl, "GEGLU input")?;
    let bias = view::<T>(bs, bl, "GEGLU bias")?;
    let mut dims = hl.dims().to_vec();
    let two_f = dims.pop().unwrap_or(0);
    if two_f % 2 != 0 || (has_bias && bl.shape().elem_count() != two_f) {
        candle_core::bail!(
            "GEGLU over a last dimension of {two_f} with a bias of {:?}",
            bl.shape()
        )
    }
    let f = two_f / 2;
    dims.push(f);
    let n = hl.shape().elem_count() / 2;
    let mut out = unsafe { dev.alloc::<T>(n) }?;
    let func = kernel::<T>(dev, "ap_geglu")?;
    let (n32, f32_, hb) = (u32_arg(n, "elements")?, u32_arg(f, "width")?, u32::from(has_bias));
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(&h).arg(&bias).arg(&mut out).arg(&n32).arg(&f32_).arg(&hb);
    let cfg = LaunchConfig {
        grid_dim: (blocks_for(n), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match ap_geglu's signature; h holds 2n values, out n, bias 2f when used.
    unsafe { b.launch(cfg) }.map_err(|e| super::wrap("ap_geglu", e))?;
    Ok((T::wrap_cuda_slice(out, dev.clone()), Shape::from(dims)))
}

/// diffusers' GEGLU on the projection `h` `(…, 2f)` before its bias: `(h₁ + b₁) · gelu(h₂ + b₂)`.
pub fn geglu(h: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let h = h.contiguous()?;
    // Without a bias the kernel still takes a pointer, which it never reads.
    let (bias, has_bias) = match bias {
        Some(b) => (b.to_dtype(h.dtype())?.contiguous()?, true),
        None => (h.flatten_all()?.narrow(0, 0, 1)?, false),
    };
    h.apply_op2_no_bwd(&bias, &Geglu { has_bias })
}
