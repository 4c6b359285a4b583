//! Float32 CPU kernels behind the layers of `nn.rs` and `transformer.rs`.
//!
//! candle 0.11's CPU backend spends more time around its matrix multiplications than in them for these
//! models: each convolution re-lays out its kernel and builds im2col tiles, attention materialises a
//! score matrix per chunk and multiplies head by head, a group norm takes ten passes and allocations,
//! and every `exp` is a scalar libm call. The kernels here call the same `gemm` crate candle uses, on
//! strided views of the data where candle would copy, and run their elementwise work through
//! vectorised loops ([`simd`]). Results equal candle's up to float rounding.
//!
//! Each kernel takes contiguous (or makes contiguous) f32 CPU tensors; [`fast_path`] tells callers
//! when that applies, and they keep candle's ops for everything else (CUDA, half precision).

pub mod attention;
pub mod conv;
pub mod simd;

use candle_core::{bail, CpuStorage, DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// Whether `t` can go through these kernels: float32 on the CPU.
pub fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

thread_local! {
    /// The float32 copy of the last half-precision tensor [`with_f32`] converted on this thread, kept
    /// for the next: a fresh buffer per call would fault its pages in every time (a packed weight is
    /// up to tens of MB, converted at every use).
    static HALF_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on the f32 data of `t` in row-major order (copying `t` to a contiguous layout if needed).
///
/// A float16 or bfloat16 `t` (a weight kept in half precision, see
/// [`crate::weights::Weights::open_half_on_cpu`]) is converted into a per-thread buffer first, in
/// parallel: the kernels always compute in float32.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.contiguous()?
    };
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("internal error: contiguous tensor without contiguous offsets")
    };
    match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => f(&data[start..end]),
        Storage::Cpu(CpuStorage::F16(data)) => with_converted(&data[start..end], f),
        Storage::Cpu(CpuStorage::BF16(data)) => with_converted(&data[start..end], f),
        _ => bail!(
            "internal error: a float32 CPU kernel got a {:?} tensor on {:?}",
            t.dtype(),
            t.device().location()
        ),
    }
}

/// Half-precision values that convert to and from float32 slices (SIMD where the CPU has it).
trait HalfSlice: Copy + Default + Send + Sync + candle_core::WithDType {
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
}

macro_rules! half_slice {
    ($t:ty) => {
        impl HalfSlice for $t {
            fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
                use half::slice::HalfFloatSliceExt;
                src.convert_to_f32_slice(dst)
            }
            fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
                use half::slice::HalfFloatSliceExt;
                dst.convert_from_f32_slice(src)
            }
        }
    };
}
half_slice!(half::f16);
half_slice!(half::bf16);

/// Values converted in parallel chunks of this many.
const CONVERT_CHUNK: usize = 1 << 16;

/// [`with_f32`] of half-precision data: converted into the thread's scratch buffer, in parallel.
fn with_converted<T: HalfSlice, R>(src: &[T], f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    // Taken out of the slot, so a nested call (two half tensors at once) gets its own.
    let mut buf = HALF_SCRATCH.with(std::cell::Cell::take);
    if buf.len() < src.len() {
        buf.resize(src.len(), 0.0);
    }
    let dst = &mut buf[..src.len()];
    dst.par_chunks_mut(CONVERT_CHUNK)
        .zip(src.par_chunks(CONVERT_CHUNK))
        .for_each(|(d, s)| T::to_f32_slice(s, d));
    let result = f(dst);
    HALF_SCRATCH.with(|slot| slot.set(buf));
    result
}

/// `t` (float32, on the CPU) rounded to `dtype` (float16 or bfloat16), converted in parallel
/// (candle's conversion is one scalar loop: seconds for a model's weights).
pub fn to_half(t: &Tensor, dtype: DType) -> Result<Tensor> {
    fn run<T: HalfSlice>(t: &Tensor) -> Result<Tensor> {
        with_f32(t, |src| {
            let mut out = vec![T::default(); src.len()];
            out.par_chunks_mut(CONVERT_CHUNK)
                .zip(src.par_chunks(CONVERT_CHUNK))
                .for_each(|(d, s)| T::from_f32_slice(s, d));
            Tensor::from_vec(out, t.shape(), t.device())
        })
    }
    match dtype {
        DType::F16 => run::<half::f16>(t),
        DType::BF16 => run::<half::bf16>(t),
        other => bail!("internal error: {other:?} is not a half-precision dtype"),
    }
}

/// A raw pointer that parallel tasks write through, each into its own disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: only used to hand disjoint output regions to rayon tasks, which finish before the buffer is
// read or freed.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not the raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Asks Linux to back `len` bytes at `ptr` with transparent huge pages where it can (a hint; the
/// kernel's `madvise` mode of THP honours it, `never` ignores it).
pub(crate) fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside the caller's allocation; MADV_HUGEPAGE changes no contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// Wraps an output buffer as a CPU tensor of `shape`.
pub(crate) fn tensor(data: Vec<f32>, shape: impl Into<candle_core::Shape>) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}

/// The per-(image, channel) map of `torch.nn.GroupNorm` on `x: (batch, channels, …)` (optionally
/// followed by SiLU): one pass of f64 sums per group. Applying it ([`group_norm`], or fused into a
/// convolution's input copy) is the second pass.
pub fn group_norm_map(
    x: &Tensor,
    groups: usize,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    silu: bool,
) -> Result<conv::Affine> {
    let dims = x.dims();
    if dims.len() < 3 {
        bail!("group norm input must have at least 3 dimensions, not {dims:?}");
    }
    let (b, c) = (dims[0], dims[1]);
    let spatial: usize = dims[2..].iter().product();
    if groups == 0 || !c.is_multiple_of(groups) {
        bail!("group norm: {groups} groups do not divide {c} channels");
    }
    let per_group = c / groups * spatial;
    let stats: Vec<(f64, f64)> = with_f32(x, |x| {
        Ok(x.par_chunks(per_group.max(1))
            .map(|xs| {
                let n = per_group as f64;
                let (s, q) = simd::moments(xs);
                let mean = s / n;
                let var = (q / n - mean * mean).max(0.0);
                (mean, 1.0 / (var + eps).sqrt())
            })
            .collect())
    })?;
    let (w, bi) = (weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?);
    let mut map = conv::Affine {
        mean: Vec::with_capacity(b * c),
        scale: Vec::with_capacity(b * c),
        shift: Vec::with_capacity(b * c),
        silu,
    };
    for i in 0..b * c {
        let (img, ch) = (i / c, i % c);
        let (mean, rstd) = stats[img * groups + ch / (c / groups)];
        map.mean.push(mean as f32);
        map.scale.push((rstd * w[ch] as f64) as f32);
        map.shift.push(bi[ch]);
    }
    Ok(map)
}

/// `torch.nn.GroupNorm` over `(batch, channels, …)`, optionally followed by SiLU, in two passes: f64
/// sums of each group, then one normalise-scale-shift(-SiLU) pass.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    silu: bool,
) -> Result<Tensor> {
    let map = group_norm_map(x, groups, eps, weight, bias, silu)?;
    let dims = x.dims().to_vec();
    let spatial: usize = dims[2..].iter().product();
    let mut out = vec![0f32; x.elem_count()];
    with_f32(x, |x| {
        out.par_chunks_mut(spatial.max(1))
            .zip(x.par_chunks(spatial.max(1)))
            .enumerate()
            .for_each(|(i, (o, xs))| simd::normalize(o, xs, map.mean[i], map.scale[i], map.shift[i], silu));
        Ok(())
    })?;
    tensor(out, dims)
}

/// `x · Wᵀ + bias (+ residual)` over the last dimension of `x: (…, in)`, with the weight stored
/// transposed (`(in, out)`, see [`conv::pack_weight`]): one gemm over all rows into a buffer that
/// starts as the bias, then the residual added in place.
pub fn linear(
    x: &Tensor,
    weight_t: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let (k, n) = weight_t.dims2()?;
    if dims.last() != Some(&k) {
        bail!(
            "linear: input {:?} does not end in the weight's {k} inputs",
            x.dims()
        );
    }
    let m: usize = dims[..dims.len() - 1].iter().product();
    *dims.last_mut().expect("checked above") = n;
    if let Some(r) = residual {
        if r.dims() != dims.as_slice() {
            bail!("linear: residual {:?} for an output of {dims:?}", r.dims());
        }
    }
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    let mut out = vec![0f32; m * n];
    if let Some(bias) = &bias {
        out.par_chunks_mut(n.max(1))
            .for_each(|row| row.copy_from_slice(bias));
    }
    with_f32(x, |x| {
        with_f32(weight_t, |w| {
            // SAFETY: out (m × n) = x (m × k, row-major) · Wᵀ (k × n, row-major), all in bounds.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    bias.is_some(),
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    1,
                    n as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    conv::parallelism(),
                );
            }
            Ok(())
        })
    })?;
    if let Some(r) = residual {
        with_f32(r, |r| {
            out.par_chunks_mut(1 << 14)
                .zip(r.par_chunks(1 << 14))
                .for_each(|(o, r)| o.iter_mut().zip(r).for_each(|(o, &r)| *o += r));
            Ok(())
        })?;
    }
    tensor(out, dims)
}

/// diffusers' GEGLU: the last dimension of `h` holds `[value | gate]`; returns `value · gelu(gate)`.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    let mut dims = h.dims().to_vec();
    let last = dims.pop().unwrap_or(0);
    let inner = last / 2;
    if inner == 0 || !last.is_multiple_of(2) {
        bail!("GEGLU input's last dimension {last} is not a positive even number");
    }
    let rows: usize = dims.iter().product();
    let mut out = vec![0f32; rows * inner];
    // Rows per task: enough work to amortise the task, small enough to spread over the threads.
    let chunk_rows = (16384 / inner).max(1);
    with_f32(h, |h| {
        out.par_chunks_mut(chunk_rows * inner)
            .zip(h.par_chunks(chunk_rows * 2 * inner))
            .for_each(|(o, s)| simd::geglu(o, s, inner));
        Ok(())
    })?;
    dims.push(inner);
    tensor(out, dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};
    use candle_core::D;

    #[test]
    fn group_norm_matches_candle() {
        let x = rand(&[2, 12, 5, 7], 1).affine(3.0, 1.5).unwrap();
        let w = rand(&[12], 2);
        let b = rand(&[12], 3);
        let gn = candle_nn::GroupNorm::new(w.clone(), b.clone(), 12, 4, 1e-6).unwrap();
        let want = candle_core::Module::forward(&gn, &x).unwrap();
        let got = group_norm(&x, 4, 1e-6, &w, &b, false).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        let got = group_norm(&x, 4, 1e-6, &w, &b, true).unwrap();
        assert!(max_diff(&got, &want.silu().unwrap()) < 1e-5);
    }

    #[test]
    fn linear_matches_candle() {
        let x = rand(&[2, 7, 12], 5);
        let w = rand(&[9, 12], 6);
        let b = rand(&[9], 7);
        let r = rand(&[2, 7, 9], 8);
        let lin = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        let want = (candle_core::Module::forward(&lin, &x).unwrap() + &r).unwrap();
        let w_t = conv::pack_weight(&w.reshape((9, 12, 1, 1)).unwrap())
            .unwrap()
            .reshape((12, 9))
            .unwrap();
        let got = linear(&x, &w_t, Some(&b), Some(&r)).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
    }

    #[test]
    fn geglu_matches_candle() {
        let h = rand(&[2, 9, 2 * 24], 4);
        let value = h.narrow(D::Minus1, 0, 24).unwrap();
        let gate = h.narrow(D::Minus1, 24, 24).unwrap().gelu_erf().unwrap();
        let want = (value * gate).unwrap();
        assert_eq!(max_diff(&geglu(&h).unwrap(), &want), 0.0);
    }

    /// Half-precision tensors reach the kernels as their exact float32 values, nested or not, and
    /// `to_half` rounds as candle's conversion does.
    #[test]
    fn half_tensors_convert_exactly() {
        let a = rand(&[3, 70001], 1);
        let b = rand(&[5, 7], 2);
        let (ha, hb) = (to_half(&a, DType::F16).unwrap(), to_half(&b, DType::F16).unwrap());
        assert_eq!(ha.dtype(), DType::F16);
        let want_a = a.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
        let want_b = b.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(max_diff(&ha.to_dtype(DType::F32).unwrap(), &want_a), 0.0);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for _ in 0..2 {
            // Twice: the second call reuses the thread's buffer, holding the larger tensor's values.
            with_f32(&hb, |vb| {
                assert_eq!(vb, flat(&want_b).as_slice());
                with_f32(&ha, |va| {
                    assert_eq!(va, flat(&want_a).as_slice());
                    Ok(())
                })
            })
            .unwrap();
        }
        let t = ha.t().unwrap();
        with_f32(&t, |v| {
            assert_eq!(v, flat(&want_a.t().unwrap()).as_slice());
            Ok(())
        })
        .unwrap();
        let bf = to_half(&a, DType::BF16).unwrap();
        assert_eq!(bf.dtype(), DType::BF16);
        let want = a.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        with_f32(&bf, |v| {
            assert_eq!(v, flat(&want).as_slice());
            Ok(())
        })
        .unwrap();
        assert!(to_half(&a, DType::F32).is_err());
    }
}
