//! Building blocks the diffusion transformers (FLUX, SD3) share: adaLN modulation, plain layer norm,
//! q/k RMS norms, the tanh-GELU feed-forward, the timestep / pooled-text embedding MLPs and the
//! continuous adaLN output norm.

use crate::layers::nn::{linear, timestep_embedding, Linear};
use crate::weights::Weights;
use candle_core::{DType, Device, Module, Result, Tensor};

/// `nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)`.
#[derive(Debug, Clone)]
pub struct PlainLayerNorm {
    ones: Tensor,
    zeros: Tensor,
}

impl PlainLayerNorm {
    pub fn new(dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            ones: Tensor::ones(dim, dtype, device)?,
            zeros: Tensor::zeros(dim, dtype, device)?,
        })
    }
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(xs, &self.ones, &self.zeros, 1e-6)
    }
}

/// `torch.nn.RMSNorm(head_dim, eps=1e-6)` over the last dimension.
#[derive(Debug, Clone)]
pub struct RmsNorm(Tensor);

impl RmsNorm {
    pub fn new(dim: usize, vb: Weights) -> Result<Self> {
        Ok(Self(vb.get(dim, "weight")?))
    }
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(xs, &self.0, 1e-6)
    }
}

/// `(1 + scale) · x + shift` with `(b, dim)` modulation rows broadcast over the tokens.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?
        .broadcast_add(&shift.unsqueeze(1)?)
}

/// `gate · x` with a `(b, dim)` gate row.
pub fn gated(gate: &Tensor, x: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&gate.unsqueeze(1)?)
}

/// `linear(silu(emb))` cut into `n` chunks of the model width (AdaLayerNormZero's shift, scale, gate …).
pub fn modulation(lin: &Linear, temb: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let emb = lin.forward(&temb.silu()?)?;
    let dim = emb.dim(1)? / n;
    (0..n).map(|i| emb.narrow(1, i * dim, dim)).collect()
}

/// `FeedForward(dim, activation_fn="gelu-approximate")`: linear → tanh-GELU → linear.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    pub fn new(vb: Weights, dim: usize) -> Result<Self> {
        Ok(Self {
            proj: linear(dim, 4 * dim, vb.pp("net.0.proj"))?,
            out: linear(4 * dim, dim, vb.pp("net.2"))?,
        })
    }
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.proj.forward(xs)?.gelu()?)
    }
}

/// `TimestepEmbedding`: linear → SiLU → linear.
#[derive(Debug, Clone)]
pub struct Mlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl Mlp {
    pub fn new(vb: Weights, in_dim: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, dim, vb.pp("linear_1"))?,
            linear_2: linear(dim, dim, vb.pp("linear_2"))?,
        })
    }
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(xs)?.silu()?)
    }
}

/// `CombinedTimestepTextProjEmbeddings` (+ FLUX dev's guidance embedder): the conditioning vector
/// `timestep_embedder(sinusoid(t)) (+ guidance_embedder(sinusoid(g))) + text_embedder(pooled)`.
#[derive(Debug, Clone)]
pub struct TimeTextEmbed {
    timestep_embedder: Mlp,
    guidance_embedder: Option<Mlp>,
    text_embedder: Mlp,
}

impl TimeTextEmbed {
    /// The weights under `time_text_embed` of a model `dim` wide.
    pub fn new(vb: Weights, dim: usize, pooled_dim: usize, guidance: bool) -> Result<Self> {
        Ok(Self {
            timestep_embedder: Mlp::new(vb.pp("timestep_embedder"), 256, dim)?,
            guidance_embedder: guidance
                .then(|| Mlp::new(vb.pp("guidance_embedder"), 256, dim))
                .transpose()?,
            text_embedder: Mlp::new(vb.pp("text_embedder"), pooled_dim, dim)?,
        })
    }

    /// Whether the model takes a guidance value.
    pub fn has_guidance(&self) -> bool {
        self.guidance_embedder.is_some()
    }

    /// `timestep` (and `guidance`) as the model scales them, `pooled` in the model's dtype.
    pub fn forward(&self, timestep: &Tensor, guidance: Option<&Tensor>, pooled: &Tensor) -> Result<Tensor> {
        let dtype = pooled.dtype();
        // `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)`.
        let t = timestep_embedding(&timestep.to_dtype(dtype)?, 256, true, 0.0)?;
        let mut temb = self.timestep_embedder.forward(&t.to_dtype(dtype)?)?;
        match (&self.guidance_embedder, guidance) {
            (Some(embedder), Some(g)) => {
                let g = timestep_embedding(&g.to_dtype(dtype)?, 256, true, 0.0)?;
                temb = (temb + embedder.forward(&g.to_dtype(dtype)?)?)?;
            }
            (Some(_), None) => {
                candle_core::bail!("this transformer has guidance_embeds and needs a guidance value")
            }
            _ => {}
        }
        temb + self.text_embedder.forward(pooled)?
    }
}

/// `AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)`: the plain layer norm of `x`
/// scaled and shifted by `linear(silu(temb))` (scale first, then shift).
#[derive(Debug, Clone)]
pub struct AdaNormContinuous {
    linear: Linear,
}

impl AdaNormContinuous {
    pub fn new(vb: Weights, dim: usize) -> Result<Self> {
        Ok(Self {
            linear: linear(dim, 2 * dim, vb.pp("linear"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, norm: &PlainLayerNorm) -> Result<Tensor> {
        let e = modulation(&self.linear, temb, 2)?;
        modulate(&norm.forward(x)?, &e[1], &e[0])
    }
}
