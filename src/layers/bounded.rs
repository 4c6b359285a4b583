//! Convolution and group norm built from candle ops with bounded temporaries: the path of every
//! tensor that is not float32 on the CPU (CUDA; half precision on the CPU for the group norm), at sizes
//! where candle's own ops would allocate far more than the tensors involved.
//!
//! candle's CUDA `conv2d` lowers to im2col + matmul: a `(b·h_out·w_out, c_in·k·k)` column matrix, nine
//! times the input for a 3×3 kernel (its CPU `conv2d` is direct). The VAE decoder at full resolution makes that
//! the largest allocation of a run (SDXL at 1024², float32 VAE: a 256-channel convolution's columns are
//! 9.7 GB), where PyTorch's cuDNN needs a bounded workspace. [`conv2d`] splits such a convolution into
//! bands of output rows whose columns fit `BAND_BYTES`, and writes each band (bias, per-channel add and
//! residual included) into the output as it is made. `candle_nn::GroupNorm` keeps four to five
//! full-size float32 temporaries alive; [`group_norm`] holds one band of them
//! (`GROUP_NORM_BAND_BYTES`).
//!
//! Below the bound both fall through to the single-op form, so the UNet at the published sizes runs
//! exactly what it ran before; splitting changes no value beyond float noise (each output row is the
//! same dot products; each group's statistics the same sums).

use candle_core::{DType, Result, Tensor};

/// A convolution's im2col columns stay under this many bytes (a quarter of a GiB: a few dozen rows of
/// a 1024²-wide convolution, still tens of thousands of matmul rows; no split at all for the UNet at
/// its published sizes).
pub(crate) const BAND_BYTES: usize = 256 << 20;

/// A group norm whose float32 copy would pass this many bytes runs in bands of this size. candle_nn's
/// keeps four to five such copies alive, so this bounds them to about the size of one convolution band;
/// the largest UNet feature map at the published sizes (SDXL at 1024², CFG: 42 MB) stays below.
pub(crate) const GROUP_NORM_BAND_BYTES: usize = 64 << 20;

/// The band bound for a [`conv2d`] of `xs`: `BAND_BYTES` (256 MiB), except on the CPU, where candle's `conv2d`
/// is direct (no column matrix to bound; measured on the SD 1.5 VAE decoder at 512² in f16: splitting
/// only added its copies).
pub fn conv_band_bytes(xs: &Tensor) -> usize {
    if xs.device().is_cpu() {
        usize::MAX
    } else {
        BAND_BYTES
    }
}

/// Shape of a [`conv2d`]: square kernel, stride and symmetric zero padding, applied to the input
/// upsampled ×`up` (nearest) first.
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub up: usize,
}

impl ConvShape {
    /// The output height and width over an `h`×`w` input, or an error where the kernel does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let (hu, wu) = (h * self.up, w * self.up);
        if hu + 2 * p < k || wu + 2 * p < k || s == 0 {
            candle_core::bail!("conv2d: a {k}x{k} kernel does not fit a {hu}x{wu} input padded by {p}")
        }
        Ok(((hu + 2 * p - k) / s + 1, (wu + 2 * p - k) / s + 1))
    }
}

/// The `(batch, channels)` of a group norm's input `dims`, checked against `groups`.
pub fn group_norm_dims(dims: &[usize], groups: usize) -> Result<(usize, usize)> {
    let &[b, c, ..] = dims else {
        candle_core::bail!("GroupNorm: input of shape {dims:?} has no channel dimension")
    };
    if groups == 0 || !c.is_multiple_of(groups) {
        candle_core::bail!("GroupNorm: num_groups ({groups}) must divide num_channels ({c})")
    }
    Ok((b, c))
}

/// What is added to a convolution's output as it is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvAdd<'a> {
    /// `(c_out,)`.
    pub bias: Option<&'a Tensor>,
    /// One value per image and output channel, `(b, c_out)`.
    pub channel: Option<&'a Tensor>,
    /// Shaped like the output.
    pub residual: Option<&'a Tensor>,
}

/// `conv2d(upsample(xs, up), weight) + bias + channel + residual` with `weight` `(c_out, c_in, k, k)`,
/// in bands of output rows whose im2col columns stay under `band_bytes`.
pub fn conv2d(
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
    let (b, c_in, h, w) = xs.dims4()?;
    let (hu, wu) = (h * up, w * up);
    let (h_out, w_out) = shape.output_size(h, w)?;
    let row_bytes = b * w_out * c_in * k * k * xs.dtype().size_in_bytes();
    let rows = (band_bytes / row_bytes.max(1)).clamp(1, h_out);
    // Bands need padding < kernel (every band then reads at least one image row); any real
    // convolution has it, anything else runs whole.
    if rows == h_out || p >= k {
        let xs = if up > 1 {
            xs.upsample_nearest2d(hu, wu)?
        } else {
            xs.clone()
        };
        return finish(&xs.conv2d(weight, p, s, 1, 1)?, add, 0);
    }
    let c_out = weight.dim(0)?;
    let out = Tensor::zeros((b, c_out, h_out, w_out), xs.dtype(), xs.device())?;
    let mut r0 = 0;
    while r0 < h_out {
        let n = rows.min(h_out - r0);
        // Rows [lo, hi) of the upsampled input padded by p feed output rows [r0, r0 + n).
        let lo = (r0 * s) as isize - p as isize;
        let hi = ((r0 + n - 1) * s + k) as isize - p as isize;
        let (src_lo, src_hi) = (lo.max(0) as usize, (hi as usize).min(hu));
        // Zero rows where the band reaches past the image, zero columns for the padding; the band is
        // then convolved unpadded, giving exactly its n rows.
        let top = (src_lo as isize - lo) as usize;
        let bottom = (hi - src_hi as isize) as usize;
        let band = upsampled_rows(xs, up, src_lo, src_hi)?
            .pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, p, p)?;
        let y = finish(&band.conv2d(weight, 0, s, 1, 1)?, add, r0)?;
        out.slice_set(&y.contiguous()?, 2, r0)?;
        r0 += n;
    }
    Ok(out)
}

/// Rows `[lo, hi)` of `xs` upsampled ×`up` (nearest), upsampling only the source rows they come from.
fn upsampled_rows(xs: &Tensor, up: usize, lo: usize, hi: usize) -> Result<Tensor> {
    if up == 1 {
        return xs.narrow(2, lo, hi - lo);
    }
    let w = xs.dim(3)?;
    let (slo, shi) = (lo / up, hi.div_ceil(up));
    xs.narrow(2, slo, shi - slo)?
        .upsample_nearest2d((shi - slo) * up, w * up)?
        .narrow(2, lo - slo * up, hi - lo)
}

/// `y + bias + channel + residual rows [r0, r0 + rows of y)`.
fn finish(y: &Tensor, add: ConvAdd<'_>, r0: usize) -> Result<Tensor> {
    let mut y = match add.bias {
        Some(bias) => y.broadcast_add(&bias.reshape((1, (), 1, 1))?)?,
        None => y.clone(),
    };
    if let Some(c) = add.channel {
        y = y.broadcast_add(&c.unsqueeze(2)?.unsqueeze(3)?)?;
    }
    if let Some(r) = add.residual {
        let rows = y.dim(2)?;
        y = if r0 == 0 && r.dim(2)? == rows {
            (y + r)?
        } else {
            (y + r.narrow(2, r0, rows)?)?
        };
    }
    Ok(y)
}

/// `torch.nn.GroupNorm` (+ SiLU) of `xs` `(b, c, …)`: per image and group, mean and variance in float32
/// (two passes, as the centred sum keeps the precision of PyTorch's Welford), then
/// `x·scale + shift` per channel in float32 and rounded once to the input's dtype, as PyTorch does.
/// Temporaries are bounded by `band_bytes` of float32 groups; a tensor that fits runs as one band.
pub fn group_norm(
    xs: &Tensor,
    groups: usize,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    silu: bool,
    band_bytes: usize,
) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let (b, c) = group_norm_dims(&dims, groups)?;
    let cpg = c / groups;
    let rows = b * groups;
    let n = xs.elem_count() / rows.max(1);
    let xs = xs.contiguous()?.reshape((rows, n))?;
    let per_band = (band_bytes / (n * 4).max(1)).clamp(1, rows);
    let bands: Vec<(usize, usize)> = (0..rows)
        .step_by(per_band)
        .map(|r| (r, per_band.min(rows - r)))
        .collect();

    let mut means = Vec::with_capacity(bands.len());
    let mut vars = Vec::with_capacity(bands.len());
    for &(r, len) in &bands {
        let x = xs.narrow(0, r, len)?.to_dtype(DType::F32)?;
        let mean = (x.sum_keepdim(1)? / n as f64)?;
        let var = (x.broadcast_sub(&mean)?.sqr()?.sum_keepdim(1)? / n as f64)?;
        means.push(mean);
        vars.push(var);
    }
    let mean = Tensor::cat(&means, 0)?; // (rows, 1)
    let inv = (Tensor::cat(&vars, 0)? + eps)?.sqrt()?.recip()?;
    // Per (image, channel): scale = weight·inv, shift = bias − mean·scale, laid out (rows, cpg, 1).
    let per_channel = |t: &Tensor| {
        t.reshape((b, groups, 1))?
            .broadcast_as((b, groups, cpg))?
            .reshape((rows, cpg, 1))
    };
    let w = weight.to_dtype(DType::F32)?.reshape((1, groups, cpg))?;
    let bi = bias.to_dtype(DType::F32)?.reshape((1, groups, cpg))?;
    let scale = per_channel(&inv)?
        .reshape((b, groups, cpg))?
        .broadcast_mul(&w)?
        .reshape((rows, cpg, 1))?;
    let mean_scaled = (per_channel(&mean)? * &scale)?;
    let shift = bi
        .broadcast_sub(&mean_scaled.reshape((b, groups, cpg))?)?
        .reshape((rows, cpg, 1))?;

    let dtype = xs.dtype();
    let apply = |r: usize, len: usize| -> Result<Tensor> {
        let x = xs
            .narrow(0, r, len)?
            .reshape((len, cpg, n / cpg))?
            .to_dtype(DType::F32)?;
        let y = x
            .broadcast_mul(&scale.narrow(0, r, len)?)?
            .broadcast_add(&shift.narrow(0, r, len)?)?;
        let y = if silu { y.silu()? } else { y };
        y.to_dtype(dtype)
    };
    if bands.len() == 1 {
        return apply(0, rows)?.reshape(dims);
    }
    let out = Tensor::zeros((rows, cpg, n / cpg), dtype, xs.device())?;
    for &(r, len) in &bands {
        out.slice_set(&apply(r, len)?, 0, r)?;
    }
    out.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};

    /// The single-op reference: candle's conv2d over the whole (upsampled) input, then the adds.
    fn reference(xs: &Tensor, w: &Tensor, s: ConvShape, add: ConvAdd<'_>) -> Tensor {
        let (_, _, h, wd) = xs.dims4().unwrap();
        let xs = xs.upsample_nearest2d(h * s.up, wd * s.up).unwrap();
        let mut y = xs.conv2d(w, s.padding, s.stride, 1, 1).unwrap();
        if let Some(b) = add.bias {
            y = y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap();
        }
        if let Some(c) = add.channel {
            y = y
                .broadcast_add(&c.unsqueeze(2).unwrap().unsqueeze(3).unwrap())
                .unwrap();
        }
        if let Some(r) = add.residual {
            y = (y + r).unwrap();
        }
        y
    }

    #[test]
    fn banded_convolution_matches_one_convolution() {
        let cases = [
            // (b, c_in, c_out, h, w, kernel, stride, padding, up)
            (2, 3, 4, 9, 7, 3, 1, 1, 1),
            (1, 4, 5, 10, 6, 3, 2, 1, 1),
            (1, 4, 5, 11, 6, 3, 2, 0, 1),
            (2, 3, 2, 5, 4, 3, 1, 1, 2),
            (1, 2, 3, 8, 8, 1, 1, 0, 1),
            (1, 2, 3, 7, 5, 3, 1, 1, 3),
        ];
        for (seed, &(b, ci, co, h, w, k, s, p, up)) in cases.iter().enumerate() {
            let xs = rand(&[b, ci, h, w], seed as u64);
            let weight = rand(&[co, ci, k, k], 100 + seed as u64);
            let bias = rand(&[co], 200 + seed as u64);
            let channel = rand(&[b, co], 300 + seed as u64);
            let shape = ConvShape {
                kernel: k,
                stride: s,
                padding: p,
                up,
            };
            let whole = reference(&xs, &weight, shape, ConvAdd::default());
            let residual = rand(whole.dims(), 400 + seed as u64);
            let add = ConvAdd {
                bias: Some(&bias),
                channel: Some(&channel),
                residual: Some(&residual),
            };
            let want = reference(&xs, &weight, shape, add);
            let row = b * want.dim(3).unwrap() * ci * k * k * 4;
            // One row per band, a few rows per band, and the unsplit path.
            for rows in [1, 2, 3, want.dim(2).unwrap()] {
                for dtype in [DType::F32, DType::F16] {
                    let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
                    let (x, wt, bi, ch, re) = (
                        cast(&xs),
                        cast(&weight),
                        cast(&bias),
                        cast(&channel),
                        cast(&residual),
                    );
                    let add = ConvAdd {
                        bias: Some(&bi),
                        channel: Some(&ch),
                        residual: Some(&re),
                    };
                    let band = rows * row * dtype.size_in_bytes() / 4;
                    let got = conv2d(&x, &wt, shape, add, band).unwrap();
                    let whole = conv2d(&x, &wt, shape, add, usize::MAX).unwrap();
                    assert_eq!(got.dtype(), dtype);
                    // The same dot products, split by rows: equal up to the last bit of each dtype.
                    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
                    let d = max_diff(&got, &whole);
                    assert!(
                        d <= tol,
                        "case {seed} rows {rows} {dtype:?}: max diff {d} from the unsplit conv"
                    );
                    if dtype == DType::F32 {
                        let d = max_diff(&got, &want);
                        assert!(
                            d <= 1e-5,
                            "case {seed} rows {rows}: max diff {d} from the reference"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn banded_group_norm_matches_candle_nn() {
        use candle_core::Module;
        for (seed, &(b, c, h, w, groups, silu)) in [
            (2, 8, 5, 3, 4, true),
            (1, 6, 4, 4, 3, false),
            (3, 4, 2, 7, 1, true),
        ]
        .iter()
        .enumerate()
        {
            // A large common offset: the centred variance must not lose it to cancellation.
            let xs = rand(&[b, c, h, w], seed as u64).affine(3.0, 40.0).unwrap();
            let weight = rand(&[c], 10 + seed as u64);
            let bias = rand(&[c], 20 + seed as u64);
            let gn = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, groups, 1e-6).unwrap();
            let mut want = gn.forward(&xs).unwrap();
            if silu {
                want = want.silu().unwrap();
            }
            let group_bytes = c / groups * h * w * 4;
            for per_band in [1, 2, b * groups] {
                let got =
                    group_norm(&xs, groups, 1e-6, &weight, &bias, silu, per_band * group_bytes).unwrap();
                let d = max_diff(&got, &want);
                assert!(d <= 2e-5, "case {seed}, {per_band} groups per band: max diff {d}");
                // Half precision in, computed in f32 and rounded once: within half a ulp of f16 at these magnitudes.
                let half = group_norm(
                    &xs.to_dtype(DType::F16).unwrap(),
                    groups,
                    1e-6,
                    &weight,
                    &bias,
                    silu,
                    per_band * group_bytes / 2,
                )
                .unwrap();
                assert_eq!(half.dtype(), DType::F16);
                let want_half = {
                    let mut y = gn
                        .forward(&xs.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap())
                        .unwrap();
                    if silu {
                        y = y.silu().unwrap();
                    }
                    y
                };
                let d = max_diff(&half, &want_half);
                assert!(
                    d <= 4e-3,
                    "case {seed} f16, {per_band} groups per band: max diff {d}"
                );
            }
        }
    }
}
