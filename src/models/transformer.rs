//! diffusers `Transformer2DModel` as the UNet uses it: group norm, projection in, `BasicTransformerBlock`s
//! (self-attention, cross-attention, GEGLU feed-forward), projection out, residual.

use crate::layers::nn::{
    attention, attention_takes_views, conv2d, group_norm, linear, linear_no_bias, linear_stacked_no_bias,
    Conv2d, GroupNorm, Linear,
};
use crate::weights::Weights;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::LayerNorm;

/// diffusers `Attention` with the plain processor: q from `xs`, k/v from `context` (or `xs`).
#[derive(Debug, Clone)]
pub struct CrossAttention {
    projections: Projections,
    to_out: Linear,
    heads: usize,
    inner: usize,
}

/// How q, k and v are projected. Numerically the same either way: each output column is the same dot
/// product of an input row and a weight row. Stacked where our CUDA attention kernel takes the column
/// views in place ([`attention_takes_views`]); apart elsewhere (the CPU's float32 weights are packed
/// for our gemm one by one, and the other attention paths want q, k, v contiguous).
#[derive(Debug, Clone)]
enum Projections {
    /// Three weights.
    Apart { q: Linear, k: Linear, v: Linear },
    /// Self-attention through one stacked `(3·inner, dim)` weight: one matmul instead of three (fewer
    /// launches and a wider one), q, k, v column views of its output.
    Qkv(Linear),
    /// Cross-attention: q from the hidden states, k and v through one stacked `(2·inner, context_dim)`
    /// weight.
    QAndKv { q: Linear, kv: Linear },
}

impl CrossAttention {
    /// Self-attention (`attn1`): q, k, v all from the hidden states.
    pub fn new_self(vb: Weights, dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let stack = attention_takes_views(&vb, head_dim);
        Self::new_self_with(vb, dim, heads, head_dim, stack)
    }

    fn new_self_with(vb: Weights, dim: usize, heads: usize, head_dim: usize, stack: bool) -> Result<Self> {
        let inner = heads * head_dim;
        let parts = ["to_q", "to_k", "to_v"].map(|p| (inner, vb.pp(p)));
        let stacked = match stack {
            true => linear_stacked_no_bias(dim, &parts, "weight")?,
            false => None,
        };
        let projections = match stacked {
            Some(qkv) => Projections::Qkv(qkv),
            None => Self::apart(&vb, dim, dim, inner)?,
        };
        Self::with(vb, projections, dim, heads, inner)
    }

    /// Cross-attention (`attn2`): q from the hidden states, k and v from a `context_dim` context.
    pub fn new_cross(
        vb: Weights,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let stack = attention_takes_views(&vb, head_dim);
        Self::new_cross_with(vb, query_dim, context_dim, heads, head_dim, stack)
    }

    fn new_cross_with(
        vb: Weights,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        stack: bool,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let parts = ["to_k", "to_v"].map(|p| (inner, vb.pp(p)));
        let stacked = match stack {
            true => linear_stacked_no_bias(context_dim, &parts, "weight")?,
            false => None,
        };
        let projections = match stacked {
            Some(kv) => Projections::QAndKv {
                q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
                kv,
            },
            None => Self::apart(&vb, query_dim, context_dim, inner)?,
        };
        Self::with(vb, projections, query_dim, heads, inner)
    }

    fn apart(vb: &Weights, query_dim: usize, context_dim: usize, inner: usize) -> Result<Projections> {
        Ok(Projections::Apart {
            q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
        })
    }

    fn with(
        vb: Weights,
        projections: Projections,
        query_dim: usize,
        heads: usize,
        inner: usize,
    ) -> Result<Self> {
        Ok(Self {
            projections,
            to_out: linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            inner,
        })
    }

    /// `self(xs, context) + residual`, the residual added as the output projection writes. `context` is
    /// `None` for self-attention, the encoder's hidden states for cross-attention.
    pub fn forward_add(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = self.inner;
        let (q, k, v) = match (&self.projections, context) {
            (Projections::Apart { q, k, v }, context) => {
                let context = context.unwrap_or(xs);
                (q.forward(xs)?, k.forward(context)?, v.forward(context)?)
            }
            (Projections::Qkv(qkv), None) => {
                let qkv = qkv.forward(xs)?;
                (
                    qkv.narrow(D::Minus1, 0, n)?,
                    qkv.narrow(D::Minus1, n, n)?,
                    qkv.narrow(D::Minus1, 2 * n, n)?,
                )
            }
            (Projections::QAndKv { q, kv }, Some(context)) => {
                let kv = kv.forward(context)?;
                (
                    q.forward(xs)?,
                    kv.narrow(D::Minus1, 0, n)?,
                    kv.narrow(D::Minus1, n, n)?,
                )
            }
            (_, context) => candle_core::bail!(
                "internal error: {} attention called {} a context",
                if context.is_some() { "self" } else { "cross" },
                if context.is_some() { "with" } else { "without" }
            ),
        };
        self.to_out
            .forward_add(&attention(&q, &k, &v, self.heads)?, residual)
    }
}

/// `FeedForward` with GEGLU: `proj` gives value and gate halves; out = value · gelu(gate) (exact erf gelu).
#[derive(Debug, Clone)]
struct GegluFeedForward {
    proj: Linear,
    out: Linear,
}

impl GegluFeedForward {
    fn new(vb: Weights, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }
}

impl GegluFeedForward {
    /// `self(xs) + residual`.
    fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Some(gated) = self.proj.geglu_fused(xs)? {
            return self.out.forward_add(&gated, Some(residual));
        }
        let h = self.proj.forward(xs)?;
        if crate::kernels::cpu::fast_path(&h) {
            return self
                .out
                .forward_add(&crate::kernels::cpu::geglu(&h)?, Some(residual));
        }
        let half = h.dim(D::Minus1)? / 2;
        let value = h.narrow(D::Minus1, 0, half)?;
        let gate = h.narrow(D::Minus1, half, half)?.gelu_erf()?;
        self.out.forward_add(&(value * gate)?, Some(residual))
    }
}

#[derive(Debug, Clone)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
}

impl BasicTransformerBlock {
    fn new(vb: Weights, dim: usize, context_dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1").vb())?,
            attn1: CrossAttention::new_self(vb.pp("attn1"), dim, heads, head_dim)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2").vb())?,
            attn2: CrossAttention::new_cross(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3").vb())?,
            ff: GegluFeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        // Self-attention at the UNet's finest level is its longest piece (4096 tokens at 512²): a
        // cancellation point before each part keeps a cancel's wait to one of them.
        crate::layers::cancel::check()?;
        let xs = self.attn1.forward_add(&self.norm1.forward(xs)?, None, Some(xs))?;
        crate::layers::cancel::check()?;
        let xs = self
            .attn2
            .forward_add(&self.norm2.forward(&xs)?, Some(context), Some(&xs))?;
        crate::layers::cancel::check()?;
        self.ff.forward_add(&self.norm3.forward(&xs)?, &xs)
    }
}

#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// Shape parameters of one [`Transformer2D`].
#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
}

/// diffusers `Transformer2DModel` (continuous input).
#[derive(Debug, Clone)]
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    pub fn new(vb: Weights, c: TransformerConfig) -> Result<Self> {
        let ch = c.channels;
        let proj = |name: &str| -> Result<Projection> {
            if c.use_linear_projection {
                Ok(Projection::Linear(linear(ch, ch, vb.pp(name))?))
            } else {
                Ok(Projection::Conv(conv2d(vb.pp(name), ch, ch, 1, 1, 0)?))
            }
        };
        let head_dim = ch / c.heads;
        let blocks = (0..c.layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    ch,
                    c.context_dim,
                    c.heads,
                    head_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: group_norm(c.groups, ch, 1e-6, vb.pp("norm"))?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let residual = xs;
        let normed = self.norm.forward(xs)?;
        let to_tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let mut tokens = match &self.proj_in {
            // Float32 on the CPU: the 1×1 conv writes tokens directly, no permuting copy.
            Projection::Conv(conv) if conv.token_projection(&normed) => conv.to_tokens(&normed)?,
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        if let Projection::Conv(conv) = &self.proj_out {
            if conv.token_projection(&tokens) {
                return conv.from_tokens(&tokens, (h, w), residual);
            }
        }
        let to_image = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous();
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(&tokens)?)?,
            Projection::Linear(lin) => to_image(&lin.forward(&tokens)?)?,
        };
        out + residual
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    const HEADS: usize = 2;
    const HEAD_DIM: usize = 8;
    const DIM: usize = 12;
    const CONTEXT: usize = 20;

    /// A safetensors file with random `to_q` / `to_k` / `to_v` / `to_out.0` weights of an attention whose
    /// k and v read `kv_dim` values; also returns the tensors by name.
    fn attention_file(tag: &str, kv_dim: usize) -> (std::path::PathBuf, HashMap<String, Tensor>) {
        let inner = HEADS * HEAD_DIM;
        let shapes = [
            ("to_q.weight", vec![inner, DIM]),
            ("to_k.weight", vec![inner, kv_dim]),
            ("to_v.weight", vec![inner, kv_dim]),
            ("to_out.0.weight", vec![DIM, inner]),
            ("to_out.0.bias", vec![DIM]),
        ];
        let tensors: HashMap<String, Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, (name, shape))| (name.to_string(), (rand(shape, 10 + i as u64) * 0.3).unwrap()))
            .collect();
        let path = std::env::temp_dir().join(format!(
            "autopipeline-attn-{}-{tag}.safetensors",
            std::process::id()
        ));
        candle_core::safetensors::save(&tensors, &path).unwrap();
        (path, tensors)
    }

    /// The attention from the separate weights, in f64, as diffusers' processor computes it.
    fn reference(w: &HashMap<String, Tensor>, xs: &Tensor, context: &Tensor) -> Tensor {
        let proj = |name: &str, x: &Tensor| {
            let w = w[name].to_dtype(DType::F64).unwrap();
            x.broadcast_matmul(&w.t().unwrap()).unwrap()
        };
        let (q, k, v) = (
            proj("to_q.weight", xs),
            proj("to_k.weight", context),
            proj("to_v.weight", context),
        );
        let out = proj("to_out.0.weight", &attention(&q, &k, &v, HEADS).unwrap());
        out.broadcast_add(&w["to_out.0.bias"].to_dtype(DType::F64).unwrap())
            .unwrap()
    }

    /// Stacked projections (asked for, as where our CUDA attention runs; weights not packed: f64 here)
    /// give what three separate ones give, and what the packed float32 CPU path (never stacked) gives,
    /// for self- and cross-attention.
    #[test]
    fn stacked_projections_match_separate_ones() {
        let xs = rand(&[2, 5, DIM], 1);
        let context = rand(&[2, 7, CONTEXT], 2);
        for cross in [false, true] {
            let kv_dim = if cross { CONTEXT } else { DIM };
            let (path, w) = attention_file(if cross { "cross" } else { "self" }, kv_dim);
            let build = |dtype| {
                let vb = Weights::open(std::slice::from_ref(&path), dtype, &Device::Cpu).unwrap();
                if cross {
                    CrossAttention::new_cross_with(vb, DIM, CONTEXT, HEADS, HEAD_DIM, true).unwrap()
                } else {
                    CrossAttention::new_self_with(vb, DIM, HEADS, HEAD_DIM, true).unwrap()
                }
            };
            let (stacked, packed) = (build(DType::F64), build(DType::F32));
            assert!(matches!(
                (&stacked.projections, cross),
                (Projections::Qkv(_), false) | (Projections::QAndKv { .. }, true)
            ));
            assert!(matches!(packed.projections, Projections::Apart { .. }));
            let ctx = cross.then_some(&context);
            let run = |a: &CrossAttention, dtype| {
                let ctx = ctx.map(|c| c.to_dtype(dtype).unwrap());
                a.forward_add(&xs.to_dtype(dtype).unwrap(), ctx.as_ref(), None)
                    .unwrap()
            };
            let x64 = xs.to_dtype(DType::F64).unwrap();
            let want = reference(&w, &x64, &ctx.unwrap_or(&xs).to_dtype(DType::F64).unwrap());
            let scale = max_diff(&want, &want.zeros_like().unwrap());
            let d_stacked = max_diff(&run(&stacked, DType::F64), &want);
            let d_packed = max_diff(&run(&packed, DType::F32), &want);
            assert!(
                d_stacked <= 1e-6 * scale,
                "stacked {d_stacked} (values up to {scale})"
            );
            assert!(
                d_packed <= 1e-5 * scale,
                "packed {d_packed} (values up to {scale})"
            );
            // A self-attention given a context (or the reverse) is a caller's bug, reported as one.
            let wrong = if cross { None } else { Some(&xs) };
            assert!(stacked
                .forward_add(
                    &x64,
                    wrong.map(|c| c.to_dtype(DType::F64).unwrap()).as_ref(),
                    None
                )
                .is_err());
            std::fs::remove_file(&path).ok();
        }
    }
}
