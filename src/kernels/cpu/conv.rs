//! 2-D convolution as a few large matrix multiplications over shifted views of one padded copy of the
//! input, with no im2col matrix.
//!
//! The input is copied once into zero-padded planes (for stride `s`, split into `s²` phase planes:
//! `plane[py][px][y][x] = padded[s·y + py][s·x + px]`), channel rows laid end to end across the batch.
//! On that layout the input patch seen by kernel tap `(ky, kx)` is the same matrix shifted by a
//! constant offset, so the convolution is one gemm per tap — `out (c_out × pixels) += W_tap (c_out ×
//! c_in) · shifted input (c_in × pixels)` — accumulating into an output grid as wide as the padded
//! planes. The few grid columns that fall in the padding are dropped when the result is copied out.
//! Large inputs are processed in bands of output rows, so the padded copy and the grid stay a few tens
//! of MiB whatever the image size. A 1×1 convolution with stride 1 is one gemm per image, straight
//! from and into NCHW.
//!
//! Two producers of the input can be fused into the padded copy instead of materialising their
//! output: a nearest-neighbour ×`up` upsampling (diffusers' `Upsample2D`) and a per-channel affine map
//! with optional SiLU (the group norm + SiLU before every resnet convolution, see [`Affine`]).
//!
//! Weights are laid out once, on first use (see `components::weights`), as `(kh·kw, c_in, c_out)`
//! ([`pack_weight`], [`pack_data`]): the
//! gemm packs its operands in panels along `c_out`, which that layout makes contiguous reads.

use super::{simd, tensor, with_f32, SendPtr};
use candle_core::{bail, Result, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Bytes of padded input plus output grid one band may take.
const BAND_BYTES: usize = 48 << 20;

pub(crate) fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `y = (x - mean) · scale + shift`, then SiLU when `silu`, per (image, channel): what a group norm
/// (+ SiLU) does to each channel once its statistics are known.
#[derive(Debug, Clone)]
pub struct Affine {
    /// Indexed by `image · channels + channel`.
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub silu: bool,
}

impl Affine {
    #[inline(always)]
    fn apply(&self, i: usize, v: f32) -> f32 {
        let y = (v - self.mean[i]) * self.scale[i] + self.shift[i];
        if self.silu {
            simd::silu(y)
        } else {
            y
        }
    }
}

/// A `(c_out, c_in, kh, kw)` f32 CPU weight as `(kh·kw, c_in, c_out)`, the layout [`conv2d`] takes.
pub fn pack_weight(weight: &Tensor) -> Result<Tensor> {
    let (c_out, c_in, kh, kw) = weight.dims4()?;
    let packed = with_f32(weight, |w| pack_data(w, c_out, c_in, kh * kw))?;
    tensor(packed, (kh * kw, c_in, c_out))
}

/// [`pack_weight`] on the row-major data `w` of a `(c_out, c_in, taps)` weight (a linear layer's
/// `(out, in)` is `taps = 1`): returns it as `(taps, c_in, c_out)`. Reads `w` once, in order, so `w`
/// may be a file's pages read on first touch; the result is written once, into memory advised as
/// huge pages (a model's weights are gigabytes of fresh pages).
pub fn pack_data(w: &[f32], c_out: usize, c_in: usize, taps: usize) -> Result<Vec<f32>> {
    let k_len = c_in * taps;
    let n = c_out * k_len;
    if w.len() != n {
        bail!(
            "internal error: packing {} values as a {c_out}×{c_in}×{taps} weight",
            w.len()
        );
    }
    // A blocked transpose of the (c_out × c_in·taps) weight: column k = c·taps + tap becomes row
    // tap·c_in + c. Each task transposes a band of 64 columns in 64 × 64 tiles that stay in L1.
    const B: usize = 64;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    super::advise_huge_pages(out.as_mut_ptr().cast(), n * 4);
    let dst = SendPtr(out.as_mut_ptr());
    (0..k_len.div_ceil(B)).into_par_iter().for_each(|kb| {
        let (k0, k1) = (kb * B, (kb * B + B).min(k_len));
        for o0 in (0..c_out).step_by(B) {
            let o1 = (o0 + B).min(c_out);
            for k in k0..k1 {
                let (c, tap) = (k / taps, k % taps);
                let row = (tap * c_in + c) * c_out;
                for o in o0..o1 {
                    // SAFETY: rows of columns k0..k1 belong to this task alone, inside the capacity.
                    unsafe { dst.get().add(row + o).write(w[o * k_len + k]) };
                }
            }
        }
    });
    // SAFETY: the bands cover every column k of every row o, so all n values were written.
    unsafe { out.set_len(n) };
    Ok(out)
}

/// How the input reaches the convolution.
#[derive(Debug, Clone, Copy, Default)]
pub struct Input<'a> {
    /// Nearest-neighbour upsampling factor applied first (1 = none).
    pub up: usize,
    /// Per-channel affine map (+ SiLU) applied after upsampling; padding stays zero.
    pub pre: Option<&'a Affine>,
}

/// What is added to the convolution's result (bias included) as it is copied out, in this order —
/// the additions a resnet block makes right after its convolutions, without another pass or buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Output<'a> {
    /// One value per (image, output channel), e.g. the resnet's projected time embedding.
    pub channel_add: Option<&'a Tensor>,
    /// A tensor of the output's shape, e.g. the resnet's shortcut.
    pub residual: Option<&'a Tensor>,
}

/// `torch.nn.functional.conv2d` with symmetric `padding`, square `stride`, no dilation or groups, for
/// `x: (b, c_in, h, w)` and a `(kh, kw)` kernel packed by [`pack_weight`], all f32 on the CPU; `input`
/// says how `x` is upsampled and mapped first, `output` what is added to the result.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    (kh, kw): (usize, usize),
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    input: Input<'_>,
    output: Output<'_>,
) -> Result<Tensor> {
    let (b, c_in, sh, sw) = x.dims4()?;
    let up = input.up.max(1);
    let (h, w) = (sh * up, sw * up);
    let (taps, w_in, c_out) = weight.dims3()?;
    if taps != kh * kw || w_in != c_in || stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        bail!(
            "conv2d: input {:?} (×{up}) does not fit weight {:?} with stride {stride}, padding {padding}",
            x.dims(),
            weight.dims()
        );
    }
    if let Some(pre) = input.pre {
        if [&pre.mean, &pre.scale, &pre.shift]
            .iter()
            .any(|v| v.len() != b * c_in)
        {
            bail!(
                "conv2d: the input map has {} entries for {b} × {c_in} channels",
                pre.mean.len()
            );
        }
    }
    let h_out = (h + 2 * padding - kh) / stride + 1;
    let w_out = (w + 2 * padding - kw) / stride + 1;
    if let Some(t) = output.channel_add {
        if t.elem_count() != b * c_out {
            bail!(
                "conv2d: {:?} to add per channel to {b} × {c_out} channels",
                t.dims()
            );
        }
    }
    if let Some(r) = output.residual {
        if r.dims() != [b, c_out, h_out, w_out] {
            bail!(
                "conv2d: residual {:?} for an output of {:?}",
                r.dims(),
                [b, c_out, h_out, w_out]
            );
        }
    }
    let channel_add = output
        .channel_add
        .map(|t| t.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let mut out = vec![0f32; b * c_out * h_out * w_out];
    let direct = kh == 1 && kw == 1 && stride == 1 && padding == 0 && up == 1 && input.pre.is_none();
    with_f32(x, |x| {
        with_f32(weight, |wt| {
            let mut run = |bias: Option<&[f32]>| {
                if direct {
                    pointwise(&mut out, x, wt, bias, b, c_in, c_out, h * w);
                    if let Some(add) = &channel_add {
                        out.par_chunks_mut(h * w)
                            .enumerate()
                            .for_each(|(i, o)| o.iter_mut().for_each(|v| *v += add[i]));
                    }
                } else {
                    let g = Geometry {
                        b,
                        c_in,
                        c_out,
                        sh,
                        sw,
                        up,
                        kh,
                        kw,
                        stride,
                        padding,
                        h_out,
                        w_out,
                        pw: (w + 2 * padding).div_ceil(stride),
                    };
                    g.run(&mut out, x, wt, bias, input.pre, channel_add.as_deref());
                }
            };
            match bias {
                Some(bias) => with_f32(bias, |bias| {
                    run(Some(bias));
                    Ok(())
                }),
                None => {
                    run(None);
                    Ok(())
                }
            }
        })
    })?;
    if let Some(r) = output.residual {
        with_f32(r, |r| {
            out.par_chunks_mut(h_out * w_out)
                .zip(r.par_chunks(h_out * w_out))
                .for_each(|(o, r)| o.iter_mut().zip(r).for_each(|(o, &r)| *o += r));
            Ok(())
        })?;
    }
    tensor(out, (b, c_out, h_out, w_out))
}

/// Fills each `row_len`-long row `o` of `dst` with `bias[o]`.
fn fill_bias(dst: &mut [f32], bias: &[f32], row_len: usize) {
    dst.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(i, row)| row.fill(bias[i % bias.len()]));
}

/// 1×1, stride 1: `out[b] (c_out × hw) = W (c_out × c_in) · x[b] (c_in × hw) + bias`, with `wt`
/// stored transposed (`c_in × c_out`).
#[allow(clippy::too_many_arguments)]
fn pointwise(
    out: &mut [f32],
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    c_in: usize,
    c_out: usize,
    hw: usize,
) {
    if let Some(bias) = bias {
        fill_bias(out, bias, hw);
    }
    for bi in 0..b {
        // SAFETY: the views stay within image bi of `x` and `out` and within `wt` (c_out × c_in).
        unsafe {
            gemm(
                c_out,
                hw,
                c_in,
                out.as_mut_ptr().add(bi * c_out * hw),
                1,
                hw as isize,
                bias.is_some(),
                wt.as_ptr(),
                c_out as isize,
                1,
                x.as_ptr().add(bi * c_in * hw),
                1,
                hw as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
        }
    }
}

/// A 1×1 convolution (weight packed by [`pack_weight`]) from NCHW `x: (b, c_in, h, w)` straight into
/// token layout `(b, h·w, c_out)`: diffusers' `proj_in` conv followed by its permute and reshape,
/// without the transposing copy (the gemm reads `x` transposed through strides).
pub fn pointwise_to_tokens(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, c_in, h, w) = x.dims4()?;
    let (taps, w_in, c_out) = weight.dims3()?;
    if taps != 1 || w_in != c_in {
        bail!(
            "pointwise_to_tokens: weight {:?} for input {:?}",
            weight.dims(),
            x.dims()
        );
    }
    let hw = h * w;
    let bias = bias.map(|t| t.to_vec1::<f32>()).transpose()?;
    let mut out = vec![0f32; b * hw * c_out];
    if let Some(bias) = &bias {
        out.par_chunks_mut(c_out)
            .for_each(|row| row.copy_from_slice(bias));
    }
    with_f32(x, |x| {
        with_f32(weight, |wt| {
            for bi in 0..b {
                // SAFETY: tokens (hw × c_out) of image bi = x[bi]ᵀ (hw × c_in, strides 1 and hw) · W
                // (c_in × c_out), all inside their buffers.
                unsafe {
                    gemm(
                        hw,
                        c_out,
                        c_in,
                        out.as_mut_ptr().add(bi * hw * c_out),
                        1,
                        c_out as isize,
                        bias.is_some(),
                        x.as_ptr().add(bi * c_in * hw),
                        hw as isize,
                        1,
                        wt.as_ptr(),
                        1,
                        c_out as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism(),
                    );
                }
            }
            Ok(())
        })
    })?;
    tensor(out, (b, hw, c_out))
}

/// A 1×1 convolution (weight packed by [`pack_weight`]) from tokens `(b, h·w, c_in)` back to NCHW
/// `(b, c_out, h, w)`, plus `residual` (NCHW): diffusers' reshape, permute, `proj_out` conv and residual
/// add, as one gemm per image accumulating onto `residual + bias`.
pub fn tokens_to_pointwise(
    tokens: &Tensor,
    (h, w): (usize, usize),
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    let (b, hw, c_in) = tokens.dims3()?;
    let (taps, w_in, c_out) = weight.dims3()?;
    if taps != 1 || w_in != c_in || hw != h * w || residual.dims() != [b, c_out, h, w] {
        bail!(
            "tokens_to_pointwise: tokens {:?}, weight {:?}, residual {:?}",
            tokens.dims(),
            weight.dims(),
            residual.dims()
        );
    }
    let bias = bias.map(|t| t.to_vec1::<f32>()).transpose()?;
    let mut out = vec![0f32; b * c_out * hw];
    with_f32(residual, |r| {
        out.par_chunks_mut(hw)
            .zip(r.par_chunks(hw))
            .enumerate()
            .for_each(|(i, (o, r))| match &bias {
                Some(bias) => {
                    let v = bias[i % c_out];
                    o.iter_mut().zip(r).for_each(|(o, &r)| *o = r + v);
                }
                None => o.copy_from_slice(r),
            });
        Ok(())
    })?;
    with_f32(tokens, |t| {
        with_f32(weight, |wt| {
            for bi in 0..b {
                // SAFETY: out[bi] (c_out × hw) += Wᵀ (c_out × c_in, strides 1 and c_out) · tokens[bi]ᵀ
                // (c_in × hw, strides 1 and c_in), all inside their buffers.
                unsafe {
                    gemm(
                        c_out,
                        hw,
                        c_in,
                        out.as_mut_ptr().add(bi * c_out * hw),
                        1,
                        hw as isize,
                        true,
                        wt.as_ptr(),
                        c_out as isize,
                        1,
                        t.as_ptr().add(bi * hw * c_in),
                        c_in as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism(),
                    );
                }
            }
            Ok(())
        })
    })?;
    tensor(out, (b, c_out, h, w))
}

/// Sizes of one convolution over phase planes.
struct Geometry {
    b: usize,
    c_in: usize,
    c_out: usize,
    /// Source height and width (before upsampling by `up`).
    sh: usize,
    sw: usize,
    up: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    h_out: usize,
    w_out: usize,
    /// Phase-plane width: the padded width divided by the stride, rounded up.
    pw: usize,
}

impl Geometry {
    /// Output rows per band: as many as [`BAND_BYTES`] allows, at least 8.
    fn band_rows(&self) -> usize {
        let per_row = (self.stride * self.stride * self.c_in + self.c_out) * self.b * self.pw * 4;
        (BAND_BYTES / per_row.max(1)).max(8).min(self.h_out)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        out: &mut [f32],
        x: &[f32],
        wt: &[f32],
        bias: Option<&[f32]>,
        pre: Option<&Affine>,
        channel_add: Option<&[f32]>,
    ) {
        let rows = self.band_rows();
        let mut planes = Vec::new();
        let mut grid = Vec::new();
        let mut o0 = 0;
        while o0 < self.h_out {
            let o1 = (o0 + rows).min(self.h_out);
            self.band(out, x, wt, bias, pre, channel_add, o0, o1, &mut planes, &mut grid);
            o0 = o1;
        }
    }

    /// Output rows `o0..o1`: the phase-plane rows they read, one gemm per tap, the valid part copied
    /// out. `planes` and `grid` are scratch buffers reused across bands.
    #[allow(clippy::too_many_arguments)]
    fn band(
        &self,
        out: &mut [f32],
        x: &[f32],
        wt: &[f32],
        bias: Option<&[f32]>,
        pre: Option<&Affine>,
        channel_add: Option<&[f32]>,
        o0: usize,
        o1: usize,
        planes: &mut Vec<f32>,
        grid: &mut Vec<f32>,
    ) {
        let (s, pw, c_in, c_out) = (self.stride, self.pw, self.c_in, self.c_out);
        let out_rows = o1 - o0;
        // Output row i reads plane rows i + ky/s.
        let plane_rows = out_rows + (self.kh - 1) / s;
        let plane = plane_rows * pw;
        let row = self.b * plane;
        let slack = ((self.kh - 1) / s + 1) * pw + (self.kw - 1) / s + 1;
        planes.clear();
        planes.resize(s * s * c_in * row + slack, 0.0);
        self.fill(&mut planes[..s * s * c_in * row], x, pre, o0, plane_rows);
        grid.clear();
        grid.resize(c_out * row, 0.0);
        if let Some(bias) = bias {
            fill_bias(grid, bias, row);
        }
        // Grid columns past the last image's valid rows are never copied out: leave them uncomputed.
        let n = (self.b - 1) * plane + out_rows * pw;
        for ky in 0..self.kh {
            for kx in 0..self.kw {
                let tap = ky * self.kw + kx;
                let phase = (ky % s) * s + kx % s;
                let offset = phase * c_in * row + (ky / s) * pw + kx / s;
                let read_dst = bias.is_some() || tap > 0;
                // SAFETY: lhs is tap `tap` of the packed weight (c_out × c_in, stored transposed); rhs
                // reads c_in rows of n ≤ row elements from `offset`, which the slack after the last row
                // covers; dst is c_out rows of `row` elements.
                unsafe {
                    gemm(
                        c_out,
                        n,
                        c_in,
                        grid.as_mut_ptr(),
                        1,
                        row as isize,
                        read_dst,
                        wt.as_ptr().add(tap * c_in * c_out),
                        c_out as isize,
                        1,
                        planes.as_ptr().add(offset),
                        1,
                        row as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism(),
                    );
                }
            }
        }
        let (h_out, w_out) = (self.h_out, self.w_out);
        let dst = SendPtr(out.as_mut_ptr());
        let grid = &grid[..];
        (0..self.b * c_out).into_par_iter().for_each(|i| {
            let (bi, o) = (i / c_out, i % c_out);
            let src = &grid[o * row + bi * plane..];
            // SAFETY: rows o0..o1 of image bi, channel o of `out` are this task's alone.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(dst.get().add((i * h_out + o0) * w_out), out_rows * w_out)
            };
            for (y, d) in dst.chunks_exact_mut(w_out).enumerate() {
                let s = &src[y * pw..][..w_out];
                match channel_add {
                    Some(add) => d.iter_mut().zip(s).for_each(|(d, &s)| *d = s + add[i]),
                    None => d.copy_from_slice(s),
                }
            }
        });
    }

    /// Copies the input into zero-padded phase planes `plane_rows` high starting at plane row `yy0`:
    /// row `(phase, c)` of `buf` holds channel `c`'s plane for each image, `phase = py·stride + px`;
    /// the input is upsampled and mapped on the way.
    fn fill(&self, buf: &mut [f32], x: &[f32], pre: Option<&Affine>, yy0: usize, plane_rows: usize) {
        let (s, p, pw, up) = (self.stride, self.padding, self.pw, self.up);
        let (sh, sw) = (self.sh, self.sw);
        let (h, w) = (sh * up, sw * up);
        let plane = plane_rows * pw;
        buf.par_chunks_mut(self.b * plane)
            .enumerate()
            .for_each(|(r, dst)| {
                let (phase, c) = (r / self.c_in, r % self.c_in);
                let (py, px) = (phase / s, phase % s);
                for bi in 0..self.b {
                    let ch = bi * self.c_in + c;
                    let src = &x[ch * sh * sw..][..sh * sw];
                    let dst = &mut dst[bi * plane..][..plane];
                    for (yy, dst) in dst.chunks_exact_mut(pw).enumerate() {
                        // Plane row yy0 + yy holds padded row s·(yy0 + yy) + py, input row that − p.
                        let Some(y) = (s * (yy0 + yy) + py).checked_sub(p).filter(|&y| y < h) else {
                            continue;
                        };
                        let src = &src[(y / up) * sw..][..sw];
                        if s == 1 && up == 1 {
                            let dst = &mut dst[p..p + w];
                            match pre {
                                Some(a) => {
                                    simd::normalize(dst, src, a.mean[ch], a.scale[ch], a.shift[ch], a.silu)
                                }
                                None => dst.copy_from_slice(src),
                            }
                        } else if s == 1 {
                            for (xv, d) in dst[p..p + w].iter_mut().enumerate() {
                                let v = src[xv / up];
                                *d = pre.map_or(v, |a| a.apply(ch, v));
                            }
                        } else {
                            for (xx, d) in dst.iter_mut().enumerate() {
                                if let Some(xv) = (s * xx + px).checked_sub(p).filter(|&xv| xv < w) {
                                    let v = src[xv / up];
                                    *d = pre.map_or(v, |a| a.apply(ch, v));
                                }
                            }
                        }
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};
    use candle_core::Device;

    /// `(b, c_in, h, w, c_out, k, stride, padding)`.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

    const CASES: &[Case] = &[
        // (b, c_in, h, w, c_out, k, stride, padding)
        (2, 5, 9, 7, 6, 3, 1, 1),
        (1, 3, 8, 8, 4, 3, 2, 1),
        (2, 4, 9, 6, 3, 3, 2, 0),
        (2, 4, 6, 5, 7, 1, 1, 0),
        (1, 2, 5, 5, 3, 1, 2, 0),
        (1, 3, 4, 4, 2, 5, 1, 2),
        (3, 2, 3, 3, 2, 3, 1, 1),
    ];

    #[test]
    fn matches_candle_conv2d() {
        for &(b, c_in, h, w, c_out, k, s, p) in CASES {
            let x = rand(&[b, c_in, h, w], 1);
            let wt = rand(&[c_out, c_in, k, k], 2);
            let bias = rand(&[c_out], 3);
            let packed = pack_weight(&wt).unwrap();
            let plain = x.conv2d(&wt, p, s, 1, 1).unwrap();
            let with_bias = plain
                .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
                .unwrap();
            let got = conv2d(
                &x,
                &packed,
                (k, k),
                Some(&bias),
                s,
                p,
                Input::default(),
                Output::default(),
            )
            .unwrap();
            assert!(
                max_diff(&got, &with_bias) < 1e-5,
                "{:?}",
                (b, c_in, h, w, c_out, k, s, p)
            );
            let got = conv2d(
                &x,
                &packed,
                (k, k),
                None,
                s,
                p,
                Input::default(),
                Output::default(),
            )
            .unwrap();
            assert!(
                max_diff(&got, &plain) < 1e-5,
                "{:?}",
                (b, c_in, h, w, c_out, k, s, p)
            );
        }
    }

    #[test]
    fn fused_upsampling_and_input_map_equal_the_separate_ops() {
        for &(b, c_in, h, w, c_out, k, s, p) in CASES {
            let x = rand(&[b, c_in, h, w], 4);
            let wt = pack_weight(&rand(&[c_out, c_in, k, k], 5)).unwrap();
            let n = b * c_in;
            let v = |seed| rand(&[n], seed).to_vec1::<f32>().unwrap();
            let affine = Affine {
                mean: v(6),
                scale: v(7),
                shift: v(8),
                silu: true,
            };
            // The map applied as its own pass, exactly as the fused path computes it.
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let per = h * w;
            let mapped: Vec<f32> = xs
                .iter()
                .enumerate()
                .map(|(i, &e)| affine.apply(i / per, e))
                .collect();
            let mapped = Tensor::from_vec(mapped, (b, c_in, h, w), &Device::Cpu).unwrap();
            let up = mapped.upsample_nearest2d(2 * h, 2 * w).unwrap();
            let want = conv2d(&up, &wt, (k, k), None, s, p, Input::default(), Output::default()).unwrap();
            let got = conv2d(
                &x,
                &wt,
                (k, k),
                None,
                s,
                p,
                Input {
                    up: 2,
                    pre: Some(&affine),
                },
                Output::default(),
            )
            .unwrap();
            assert_eq!(
                max_diff(&got, &want),
                0.0,
                "{:?}",
                (b, c_in, h, w, c_out, k, s, p)
            );
            // Additions on the way out: exactly the separate adds, in the same order.
            let add = rand(&[b, c_out], 16);
            let residual = rand(want.dims(), 17);
            let output = Output {
                channel_add: Some(&add),
                residual: Some(&residual),
            };
            let got = conv2d(
                &x,
                &wt,
                (k, k),
                None,
                s,
                p,
                Input {
                    up: 2,
                    pre: Some(&affine),
                },
                output,
            )
            .unwrap();
            let want = (want
                .broadcast_add(&add.reshape((b, c_out, 1, 1)).unwrap())
                .unwrap()
                + &residual)
                .unwrap();
            assert_eq!(
                max_diff(&got, &want),
                0.0,
                "{:?}",
                (b, c_in, h, w, c_out, k, s, p)
            );
        }
    }

    #[test]
    fn token_layout_projections_match_conv_and_permute() {
        let (b, c, h, w) = (2, 6, 5, 3);
        let x = rand(&[b, c, h, w], 11);
        let wt = rand(&[4, c, 1, 1], 12);
        let bias = rand(&[4], 13);
        let packed = pack_weight(&wt).unwrap();
        let conv = x
            .conv2d(&wt, 0, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        let want = conv
            .permute((0, 2, 3, 1))
            .unwrap()
            .reshape((b, h * w, 4))
            .unwrap();
        let tokens = pointwise_to_tokens(&x, &packed, Some(&bias)).unwrap();
        assert!(max_diff(&tokens, &want) < 1e-5);

        let wt2 = rand(&[c, 4, 1, 1], 14);
        let residual = rand(&[b, c, h, w], 15);
        let image = tokens
            .reshape((b, h, w, 4))
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap()
            .contiguous()
            .unwrap();
        let want = (image.conv2d(&wt2, 0, 1, 1, 1).unwrap() + &residual).unwrap();
        let got = tokens_to_pointwise(&tokens, (h, w), &pack_weight(&wt2).unwrap(), None, &residual).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn bands_give_the_same_result() {
        // Tall enough for several bands of at least 8 rows at a tiny byte budget.
        let x = rand(&[2, 3, 40, 9], 9);
        let wt = pack_weight(&rand(&[4, 3, 3, 3], 10)).unwrap();
        let whole = x.conv2d(&rand(&[4, 3, 3, 3], 10), 1, 1, 1, 1).unwrap();
        let g = Geometry {
            b: 2,
            c_in: 3,
            c_out: 4,
            sh: 40,
            sw: 9,
            up: 1,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
            h_out: 40,
            w_out: 9,
            pw: 11,
        };
        let mut out = vec![0f32; 2 * 4 * 40 * 9];
        let mut planes = Vec::new();
        let mut grid = Vec::new();
        with_f32(&x, |xs| {
            with_f32(&wt, |w| {
                for (o0, o1) in [(0, 13), (13, 21), (21, 40)] {
                    g.band(&mut out, xs, w, None, None, None, o0, o1, &mut planes, &mut grid);
                }
                Ok(())
            })
        })
        .unwrap();
        let banded = Tensor::from_vec(out, (2, 4, 40, 9), &Device::Cpu).unwrap();
        assert!(max_diff(&banded, &whole) < 1e-5);
    }
}
