//! 2-D convolution as a few large matrix multiplications over shifted views of one padded copy of the
//! input, with no im2col matrix.
//!
//! The input is copied once into zero-padded planes (for stride `s`, split into `s²` phase planes:
//! `plane[py][px][y][x] = padded[s·y + py][s·x + px]`), channel rows laid end to end across the batch.
//! On that layout the input patch seen by kernel tap `(ky, kx)` is the same matrix shifted by a
//! constant offset, so the convolution is one gemm per tap — `out (c_out × pixels) += W_tap (c_out ×
//! c_in) · shifted input (c_in × pixels)` — accumulating into an output grid as wide as the padded
//! planes. The few grid columns and rows that fall in the padding are dropped when the result is copied
//! out. A 1×1 convolution with stride 1 is one gemm per image, straight from and into NCHW.
//!
//! Weights are laid out once, when the model loads, as `(kh·kw, c_in, c_out)` ([`pack_weight`]): the
//! gemm packs its operands in panels along `c_out`, which that layout makes contiguous reads.

use super::{tensor, with_f32, SendPtr};
use candle_core::{bail, Result, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// A `(c_out, c_in, kh, kw)` f32 CPU weight as `(kh·kw, c_in, c_out)`, the layout [`conv2d`] takes.
pub fn pack_weight(weight: &Tensor) -> Result<Tensor> {
    let (c_out, c_in, kh, kw) = weight.dims4()?;
    let taps = kh * kw;
    // Element (o, c, tap) goes to row tap·c_in + c, column o. Tasks take 8 input channels each, read
    // each output channel's 8·taps contiguous weights and append them to 8·taps rows.
    const CB: usize = 8;
    let mut out = vec![0f32; weight.elem_count()];
    let dst = SendPtr(out.as_mut_ptr());
    with_f32(weight, |w| {
        (0..c_in.div_ceil(CB)).into_par_iter().for_each(|blk| {
            let (c0, c1) = (blk * CB, (blk * CB + CB).min(c_in));
            for o in 0..c_out {
                let src = &w[(o * c_in + c0) * taps..(o * c_in + c1) * taps];
                for (i, &v) in src.iter().enumerate() {
                    let (c, tap) = (c0 + i / taps, i % taps);
                    // SAFETY: rows tap·c_in + c for c in c0..c1 belong to this task alone.
                    unsafe { *dst.get().add((tap * c_in + c) * c_out + o) = v };
                }
            }
        });
        Ok(())
    })?;
    tensor(out, (taps, c_in, c_out))
}

/// `torch.nn.functional.conv2d` with symmetric `padding`, square `stride`, no dilation or groups, for
/// `x: (b, c_in, h, w)` and a `(kh, kw)` kernel packed by [`pack_weight`], all f32 on the CPU.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    (kh, kw): (usize, usize),
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (b, c_in, h, w) = x.dims4()?;
    let (taps, w_in, c_out) = weight.dims3()?;
    if taps != kh * kw || w_in != c_in || stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        bail!(
            "conv2d: input {:?} does not fit weight {:?} with stride {stride}, padding {padding}",
            x.dims(),
            weight.dims()
        );
    }
    let h_out = (h + 2 * padding - kh) / stride + 1;
    let w_out = (w + 2 * padding - kw) / stride + 1;
    let mut out = vec![0f32; b * c_out * h_out * w_out];
    with_f32(x, |x| {
        with_f32(weight, |wt| {
            let mut run = |bias: Option<&[f32]>| {
                if kh == 1 && kw == 1 && stride == 1 && padding == 0 {
                    pointwise(&mut out, x, wt, bias, b, c_in, c_out, h * w);
                } else {
                    let g = Geometry::new(b, c_in, h, w, kh, kw, stride, padding);
                    shifted(&mut out, x, wt, bias, &g, c_out, h_out, w_out);
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

/// Sizes of the padded phase planes of one convolution.
struct Geometry {
    b: usize,
    c_in: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    /// Phase-plane height and width: the padded size divided by the stride, rounded up.
    ph: usize,
    pw: usize,
}

impl Geometry {
    #[allow(clippy::too_many_arguments)]
    fn new(
        b: usize,
        c_in: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        let ph = (h + 2 * padding).div_ceil(stride);
        let pw = (w + 2 * padding).div_ceil(stride);
        Self {
            b,
            c_in,
            h,
            w,
            kh,
            kw,
            stride,
            padding,
            ph,
            pw,
        }
    }

    fn plane(&self) -> usize {
        self.ph * self.pw
    }

    /// Length of one channel row: that channel's plane for every image of the batch.
    fn row(&self) -> usize {
        self.b * self.plane()
    }

    /// Elements past the last row that the shifted views of the last grid columns read (zeros).
    fn slack(&self) -> usize {
        ((self.kh - 1) / self.stride + 1) * self.pw + (self.kw - 1) / self.stride + 1
    }

    /// Copies NCHW `x` into zero-padded phase planes: row `(phase, c)` holds channel `c`'s plane for
    /// each image, `phase = py·stride + px`.
    fn planes(&self, x: &[f32]) -> Vec<f32> {
        let (s, p, row, plane) = (self.stride, self.padding, self.row(), self.plane());
        let mut buf = vec![0f32; s * s * self.c_in * row + self.slack()];
        buf[..s * s * self.c_in * row]
            .par_chunks_mut(row)
            .enumerate()
            .for_each(|(r, dst)| {
                let (phase, c) = (r / self.c_in, r % self.c_in);
                let (py, px) = (phase / s, phase % s);
                for bi in 0..self.b {
                    let src = &x[(bi * self.c_in + c) * self.h * self.w..][..self.h * self.w];
                    let dst = &mut dst[bi * plane..][..plane];
                    for yy in 0..self.ph {
                        // Input row of plane row yy: s·yy + py in padded coordinates.
                        let Some(y) = (s * yy + py).checked_sub(p).filter(|&y| y < self.h) else {
                            continue;
                        };
                        let src = &src[y * self.w..][..self.w];
                        let dst = &mut dst[yy * self.pw..][..self.pw];
                        if s == 1 {
                            dst[p..p + self.w].copy_from_slice(src);
                        } else {
                            for (xx, d) in dst.iter_mut().enumerate() {
                                if let Some(x) = (s * xx + px).checked_sub(p).filter(|&x| x < self.w) {
                                    *d = src[x];
                                }
                            }
                        }
                    }
                }
            });
        buf
    }
}

/// Any kernel size, stride and padding: one accumulating gemm per tap over the phase planes, then the
/// valid part of the grid copied out to NCHW.
#[allow(clippy::too_many_arguments)]
fn shifted(
    out: &mut [f32],
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &Geometry,
    c_out: usize,
    h_out: usize,
    w_out: usize,
) {
    let planes = g.planes(x);
    let (row, s) = (g.row(), g.stride);
    let mut grid = vec![0f32; c_out * row];
    if let Some(bias) = bias {
        fill_bias(&mut grid, bias, row);
    }
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let tap = ky * g.kw + kx;
            let phase = (ky % s) * s + kx % s;
            let offset = phase * g.c_in * row + (ky / s) * g.pw + kx / s;
            let read_dst = bias.is_some() || tap > 0;
            // SAFETY: lhs is tap `tap` of the packed weight (c_out × c_in, stored transposed); rhs reads
            // c_in rows of `row` elements from `offset`, which the slack after the last row covers.
            unsafe {
                gemm(
                    c_out,
                    row,
                    g.c_in,
                    grid.as_mut_ptr(),
                    1,
                    row as isize,
                    read_dst,
                    wt.as_ptr().add(tap * g.c_in * c_out),
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
    drop(planes);
    let plane = g.plane();
    let dst = SendPtr(out.as_mut_ptr());
    (0..g.b * c_out).into_par_iter().for_each(|i| {
        let (bi, o) = (i / c_out, i % c_out);
        let src = &grid[o * row + bi * plane..];
        // SAFETY: image bi, channel o of `out` is this task's alone.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst.get().add(i * h_out * w_out), h_out * w_out) };
        for (y, d) in dst.chunks_exact_mut(w_out).enumerate() {
            d.copy_from_slice(&src[y * g.pw..][..w_out]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut g = crate::rng::TorchCpuGenerator::new(seed);
        let n = shape.iter().product();
        Tensor::from_vec(g.randn(n), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_candle_conv2d() {
        // (b, c_in, h, w, c_out, k, stride, padding)
        for (b, c_in, h, w, c_out, k, s, p) in [
            (2, 5, 9, 7, 6, 3, 1, 1),
            (1, 3, 8, 8, 4, 3, 2, 1),
            (2, 4, 9, 6, 3, 3, 2, 0),
            (2, 4, 6, 5, 7, 1, 1, 0),
            (1, 2, 5, 5, 3, 1, 2, 0),
            (1, 3, 4, 4, 2, 5, 1, 2),
            (3, 2, 3, 3, 2, 3, 1, 1),
        ] {
            let x = rand(&[b, c_in, h, w], 1);
            let wt = rand(&[c_out, c_in, k, k], 2);
            let bias = rand(&[c_out], 3);
            let want = x
                .conv2d(&wt, p, s, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c_out, 1, 1)).unwrap())
                .unwrap();
            for with_bias in [true, false] {
                let packed = pack_weight(&wt).unwrap();
                let got = conv2d(&x, &packed, (k, k), with_bias.then_some(&bias), s, p).unwrap();
                let want = if with_bias {
                    want.clone()
                } else {
                    x.conv2d(&wt, p, s, 1, 1).unwrap()
                };
                assert_eq!(got.dims(), want.dims());
                let diff: f32 = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(diff < 1e-5, "{:?}: {diff}", (b, c_in, h, w, c_out, k, s, p));
            }
        }
    }
}
