//! diffusers `Transformer2DModel` as the UNet uses it: group norm, projection in, `BasicTransformerBlock`s
//! (self-attention, cross-attention, GEGLU feed-forward), projection out, residual.

use super::nn::{attention, conv2d, group_norm, linear, linear_no_bias, Conv2d, GroupNorm, Linear};
use super::weights::Weights;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::LayerNorm;

/// diffusers `Attention` with the plain processor: q from `xs`, k/v from `context` (or `xs`).
#[derive(Debug, Clone)]
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl CrossAttention {
    pub fn new(
        vb: Weights,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        self.forward_add(xs, context, None)
    }

    /// `self(xs, context) + residual`, the residual added as the output projection writes.
    pub fn forward_add(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
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
        if super::cpu::fast_path(&h) {
            return self.out.forward_add(&super::cpu::geglu(&h)?, Some(residual));
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
            attn1: CrossAttention::new(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2").vb())?,
            attn2: CrossAttention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3").vb())?,
            ff: GegluFeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.attn1.forward_add(&self.norm1.forward(xs)?, None, Some(xs))?;
        let xs = self
            .attn2
            .forward_add(&self.norm2.forward(&xs)?, Some(context), Some(&xs))?;
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
