//! Multi-head attention that never holds more than a block of the score matrix.
//!
//! Work is split into tasks of (batch, head, block of query rows). A task computes its block's scores
//! against every key with one matrix multiplication, takes the softmax of each row in place and
//! multiplies by the values straight into the output, so a task's scores (at most 4 MiB) stay in
//! cache and memory use does not grow with the sequence length squared: one block per thread. Heads are read and written
//! in place through strides: no head split, transpose or copy of q, k, v or the output.

use super::{simd, tensor, with_f32, SendPtr};
use candle_core::{bail, Result, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Score elements per task: 1 Mi f32 = 4 MiB per thread, 256 query rows against SD 1.5's 4096 keys at
/// 512². Measured on the SD 1.5 UNet step at 512² (one thread, Zen 5): 16 Ki 14.2 s, 64 Ki 11.0 s,
/// 256 Ki 10.1 s, 1 Mi 9.9–10.3 s, 4 Mi 10.7 s, 16 Mi 11.9 s — larger blocks amortise the packing of
/// the keys over more rows until the scores no longer stay in cache.
const BLOCK_SCORES: usize = 1 << 20;

/// `softmax(q·kᵀ · scale)·v` per head, for `q: (b, lq, heads·d)` and `k, v: (b, lk, heads·d)`, all f32
/// on the CPU; returns `(b, lq, heads·d)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32) -> Result<Tensor> {
    let (b, lq, inner) = q.dims3()?;
    let (kb, lk, k_inner) = k.dims3()?;
    if v.dims3()? != (kb, lk, k_inner)
        || kb != b
        || k_inner != inner
        || heads == 0
        || !inner.is_multiple_of(heads)
    {
        bail!(
            "attention shapes do not agree: q {:?}, k {:?}, v {:?}, {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let d = inner / heads;
    let threads = rayon::current_num_threads().max(1);
    // Rows per block: as many as the score budget allows, but enough blocks to keep every thread busy.
    let mut rows = (BLOCK_SCORES / lk.max(1)).clamp(1, lq.max(1));
    while rows > 8 && b * heads * lq.div_ceil(rows) < 4 * threads {
        rows /= 2;
    }
    let blocks = lq.div_ceil(rows);
    let mut out = vec![0f32; b * lq * inner];
    let dst = SendPtr(out.as_mut_ptr());
    with_f32(q, |q| {
        with_f32(k, |k| {
            with_f32(v, |v| {
                (0..b * heads * blocks).into_par_iter().for_each_init(
                    Vec::new,
                    |scores: &mut Vec<f32>, task| {
                        let (bh, blk) = (task / blocks, task % blocks);
                        let (bi, h) = (bh / heads, bh % heads);
                        let r0 = blk * rows;
                        let m = rows.min(lq - r0);
                        scores.resize(m * lk, 0.0);
                        let is = inner as isize;
                        // SAFETY: every pointer stays inside its buffer: rows r0..r0+m of batch bi, columns
                        // h·d..(h+1)·d; the output region is this task's alone.
                        unsafe {
                            let q_ptr = q.as_ptr().add((bi * lq + r0) * inner + h * d);
                            let k_ptr = k.as_ptr().add(bi * lk * inner + h * d);
                            let v_ptr = v.as_ptr().add(bi * lk * inner + h * d);
                            let o_ptr = dst.get().add((bi * lq + r0) * inner + h * d);
                            // scores (m × lk) = scale · q_blk (m × d) · k_hᵀ (d × lk)
                            gemm(
                                m,
                                lk,
                                d,
                                scores.as_mut_ptr(),
                                1,
                                lk as isize,
                                false,
                                q_ptr,
                                1,
                                is,
                                k_ptr,
                                is,
                                1,
                                0.0,
                                scale,
                                false,
                                false,
                                false,
                                Parallelism::None,
                            );
                            simd::softmax_rows(scores, lk);
                            // out_blk (m × d) = probs (m × lk) · v_h (lk × d)
                            gemm(
                                m,
                                d,
                                lk,
                                o_ptr,
                                1,
                                is,
                                false,
                                scores.as_ptr(),
                                1,
                                lk as isize,
                                v_ptr,
                                1,
                                is,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                Parallelism::None,
                            );
                        }
                    },
                );
                Ok(())
            })
        })
    })?;
    tensor(out, (b, lq, inner))
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

    /// The textbook computation with candle ops.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
        let (b, lq, inner) = q.dims3().unwrap();
        let lk = k.dim(1).unwrap();
        let d = inner / heads;
        let split = |t: &Tensor, l| {
            t.reshape((b, l, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(q, lq), split(k, lk), split(v, lk));
        let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        p.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, lq, inner))
            .unwrap()
    }

    #[test]
    fn matches_the_textbook_computation() {
        for (b, lq, lk, heads, d) in [(2, 300, 77, 3, 8), (1, 1000, 1000, 2, 5), (2, 7, 7, 1, 16)] {
            let q = rand(&[b, lq, heads * d], 1);
            let k = rand(&[b, lk, heads * d], 2);
            let v = rand(&[b, lk, heads * d], 3);
            let got = attention(&q, &k, &v, heads, 1.0 / (d as f32).sqrt()).unwrap();
            let want = reference(&q, &k, &v, heads);
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
            assert!(diff < 1e-5, "{b}x{lq}x{lk} heads {heads}: {diff}");
        }
    }
}
