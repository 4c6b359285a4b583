//! diffusers' `FluxTransformer2DModel` (FLUX.1 (dev) and (schnell)), built from its `config.json`:
//! timestep (+ guidance) + pooled-text conditioning, double-stream blocks (image and text tokens with
//! their own weights, one joint attention), single-stream blocks (one token sequence, attention and MLP
//! in parallel), rotary position embeddings over `axes_dims_rope`, and the 2×2 latent packing of the
//! FLUX pipelines.

use super::dit::{
    gated, modulate, modulation, AdaNormContinuous, FeedForward, PlainLayerNorm, RmsNorm, TimeTextEmbed,
};
use crate::layers::nn::{attention, linear, Linear};
use crate::weights::Weights;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use serde::Deserialize;

/// The `config.json` of a `FluxTransformer2DModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct FluxConfig {
    #[serde(default = "one")]
    pub patch_size: usize,
    #[serde(default = "default_in")]
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default = "default_layers")]
    pub num_layers: usize,
    #[serde(default = "default_single_layers")]
    pub num_single_layers: usize,
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_joint")]
    pub joint_attention_dim: usize,
    #[serde(default = "default_pooled")]
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub guidance_embeds: bool,
    #[serde(default = "default_axes")]
    pub axes_dims_rope: Vec<usize>,
}

fn one() -> usize {
    1
}
fn default_in() -> usize {
    64
}
fn default_layers() -> usize {
    19
}
fn default_single_layers() -> usize {
    38
}
fn default_head_dim() -> usize {
    128
}
fn default_heads() -> usize {
    24
}
fn default_joint() -> usize {
    4096
}
fn default_pooled() -> usize {
    768
}
fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}

impl FluxConfig {
    /// `num_attention_heads · attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Refuses configs the FLUX pipelines cannot run, naming the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.patch_size != 1 {
            return Err(format!(
                "patch_size {} is not supported: the FLUX pipelines pack 2×2 latent patches themselves and \
                 expect patch_size 1",
                self.patch_size
            ));
        }
        if self.in_channels == 0 || !self.in_channels.is_multiple_of(4) {
            return Err(format!(
                "in_channels {} is not 4 × the latent channels (FLUX packs 2×2 latent patches)",
                self.in_channels
            ));
        }
        if self.out_channels() != self.in_channels {
            return Err(format!(
                "out_channels {} differs from in_channels {}: the FLUX pipelines step the prediction on the \
                 input latents",
                self.out_channels(),
                self.in_channels
            ));
        }
        for (name, v) in [
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
        ] {
            if v == 0 || v > 1 << 16 {
                return Err(format!("{name} {v} is out of range"));
            }
        }
        if self.num_layers + self.num_single_layers > 1024 {
            return Err("more than 1024 transformer blocks".into());
        }
        let axes: usize = self.axes_dims_rope.iter().sum();
        if self.axes_dims_rope.len() != 3 || axes != self.attention_head_dim {
            return Err(format!(
                "axes_dims_rope {:?} must be three dimensions summing to attention_head_dim {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.axes_dims_rope.iter().any(|d| d % 2 == 1) {
            return Err(format!(
                "axes_dims_rope {:?} must all be even (rotary pairs)",
                self.axes_dims_rope
            ));
        }
        Ok(())
    }
}

/// The rotary embedding's cos and sin, `(tokens, head_dim / 2)` each: diffusers' `FluxPosEmbed`
/// without the pairwise repeat (candle's interleaved `rope_i` rotates pairs itself).
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// For `ids` rows of `(axis0, axis1, axis2)` positions: per axis of `d` dimensions, frequencies
    /// `θ^(−2k/d)` and angles `pos · freq`, computed in float64 as diffusers does, then float32.
    pub fn new(ids: &[[f32; 3]], axes: &[usize], dtype: DType, device: &Device) -> Result<Self> {
        let half: usize = axes.iter().sum::<usize>() / 2;
        let mut cos = Vec::with_capacity(ids.len() * half);
        let mut sin = Vec::with_capacity(ids.len() * half);
        for row in ids {
            for (axis, &d) in axes.iter().enumerate() {
                let pos = row[axis] as f64;
                for k in (0..d).step_by(2) {
                    let freq = 1.0 / 10000f64.powf(k as f64 / d as f64);
                    let angle = pos * freq;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let n = ids.len();
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?,
        })
    }

    /// Rotates `(b, tokens, heads, head_dim)` and returns `(b, heads, tokens, head_dim)`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.transpose(1, 2)?.contiguous()?;
        candle_nn::rotary_emb::rope_i(&x, &self.cos, &self.sin)
    }
}

/// diffusers' `FluxAttention` projections of one token stream: q, k, v (with bias) and the q/k
/// RMS norms.
#[derive(Debug, Clone)]
struct Qkv {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
}

impl Qkv {
    fn new(vb: &Weights, prefix: &str, norms: (&str, &str), dim: usize, head_dim: usize) -> Result<Self> {
        let inner = dim;
        Ok(Self {
            q: linear(dim, inner, vb.pp(format!("{prefix}q_proj")))?,
            k: linear(dim, inner, vb.pp(format!("{prefix}k_proj")))?,
            v: linear(dim, inner, vb.pp(format!("{prefix}v_proj")))?,
            norm_q: RmsNorm::new(head_dim, vb.pp(norms.0))?,
            norm_k: RmsNorm::new(head_dim, vb.pp(norms.1))?,
        })
    }

    /// The image stream's projections are named `to_q`, `to_k`, `to_v`.
    fn new_image(vb: &Weights, dim: usize, head_dim: usize) -> Result<Self> {
        Ok(Self {
            q: linear(dim, dim, vb.pp("to_q"))?,
            k: linear(dim, dim, vb.pp("to_k"))?,
            v: linear(dim, dim, vb.pp("to_v"))?,
            norm_q: RmsNorm::new(head_dim, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(head_dim, vb.pp("norm_k"))?,
        })
    }

    /// `(q, k, v)` as `(b, tokens, heads, head_dim)`, q and k normalised.
    fn project(&self, xs: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, _) = xs.dims3()?;
        let split = |t: Tensor| t.reshape((b, l, heads, ()));
        let q = self.norm_q.forward(&split(self.q.forward(xs)?)?)?;
        let k = self.norm_k.forward(&split(self.k.forward(xs)?)?)?;
        let v = split(self.v.forward(xs)?)?;
        Ok((q, k, v))
    }
}

/// Joint attention over `(q, k, v)` in `(b, tokens, heads, head_dim)`: RoPE on q and k, then
/// scaled-dot-product attention; `(b, tokens, heads · head_dim)`.
fn joint_attention(q: &Tensor, k: &Tensor, v: &Tensor, rope: &Rope) -> Result<Tensor> {
    let (b, l, heads, d) = q.dims4()?;
    let flat = |t: Tensor| -> Result<Tensor> { t.transpose(1, 2)?.contiguous()?.reshape((b, l, heads * d)) };
    let q = flat(rope.apply(q)?)?;
    let k = flat(rope.apply(k)?)?;
    let v = v.reshape((b, l, heads * d))?;
    attention(&q, &k, &v, heads)
}

/// `FluxTransformerBlock`: the double-stream block.
#[derive(Debug, Clone)]
struct DoubleBlock {
    norm1: Linear,
    norm1_context: Linear,
    image: Qkv,
    context: Qkv,
    to_out: Linear,
    to_add_out: Linear,
    ff: FeedForward,
    ff_context: FeedForward,
}

impl DoubleBlock {
    fn new(vb: Weights, dim: usize, head_dim: usize) -> Result<Self> {
        let attn = vb.pp("attn");
        Ok(Self {
            norm1: linear(dim, 6 * dim, vb.pp("norm1.linear"))?,
            norm1_context: linear(dim, 6 * dim, vb.pp("norm1_context.linear"))?,
            image: Qkv::new_image(&attn, dim, head_dim)?,
            context: Qkv::new(&attn, "add_", ("norm_added_q", "norm_added_k"), dim, head_dim)?,
            to_out: linear(dim, dim, attn.pp("to_out.0"))?,
            to_add_out: linear(dim, dim, attn.pp("to_add_out"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            ff_context: FeedForward::new(vb.pp("ff_context"), dim)?,
        })
    }

    /// `(context, hidden)` after the block.
    fn forward(
        &self,
        hidden: &Tensor,
        context: &Tensor,
        temb: &Tensor,
        rope: &Rope,
        m: &Shared,
    ) -> Result<(Tensor, Tensor)> {
        let h = modulation(&self.norm1, temb, 6)?;
        let c = modulation(&self.norm1_context, temb, 6)?;
        // AdaLayerNormZero's chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        let norm_h = modulate(&m.norm.forward(hidden)?, &h[0], &h[1])?;
        let norm_c = modulate(&m.norm.forward(context)?, &c[0], &c[1])?;
        let (q, k, v) = self.image.project(&norm_h, m.heads)?;
        let (cq, ck, cv) = self.context.project(&norm_c, m.heads)?;
        // Text tokens first, as diffusers concatenates them.
        let q = Tensor::cat(&[&cq, &q], 1)?;
        let k = Tensor::cat(&[&ck, &k], 1)?;
        let v = Tensor::cat(&[&cv, &v], 1)?;
        let out = joint_attention(&q, &k, &v, rope)?;
        let lt = context.dim(1)?;
        let lh = hidden.dim(1)?;
        let attn_c = self.to_add_out.forward(&out.narrow(1, 0, lt)?.contiguous()?)?;
        let attn_h = self.to_out.forward(&out.narrow(1, lt, lh)?.contiguous()?)?;

        let hidden = (hidden + gated(&h[2], &attn_h)?)?;
        let ff = self
            .ff
            .forward(&modulate(&m.norm.forward(&hidden)?, &h[3], &h[4])?)?;
        let hidden = (&hidden + gated(&h[5], &ff)?)?;

        let context = (context + gated(&c[2], &attn_c)?)?;
        let ff = self
            .ff_context
            .forward(&modulate(&m.norm.forward(&context)?, &c[3], &c[4])?)?;
        let context = (&context + gated(&c[5], &ff)?)?;
        Ok((context, hidden))
    }
}

/// `FluxSingleTransformerBlock`: one stream, attention and MLP side by side.
#[derive(Debug, Clone)]
struct SingleBlock {
    norm: Linear,
    qkv: Qkv,
    proj_mlp: Linear,
    proj_out: Linear,
}

impl SingleBlock {
    fn new(vb: Weights, dim: usize, head_dim: usize) -> Result<Self> {
        Ok(Self {
            norm: linear(dim, 3 * dim, vb.pp("norm.linear"))?,
            qkv: Qkv::new_image(&vb.pp("attn"), dim, head_dim)?,
            proj_mlp: linear(dim, 4 * dim, vb.pp("proj_mlp"))?,
            proj_out: linear(5 * dim, dim, vb.pp("proj_out"))?,
        })
    }

    /// The joint `[text; image]` sequence after the block.
    fn forward(&self, xs: &Tensor, temb: &Tensor, rope: &Rope, m: &Shared) -> Result<Tensor> {
        // AdaLayerNormZeroSingle: shift, scale, gate.
        let e = modulation(&self.norm, temb, 3)?;
        let normed = modulate(&m.norm.forward(xs)?, &e[0], &e[1])?;
        let mlp = self.proj_mlp.forward(&normed)?.gelu()?;
        let (q, k, v) = self.qkv.project(&normed, m.heads)?;
        let attn = joint_attention(&q, &k, &v, rope)?;
        let out = self.proj_out.forward(&Tensor::cat(&[&attn, &mlp], D::Minus1)?)?;
        xs + gated(&e[2], &out)?
    }
}

/// What every block reads besides its own weights.
#[derive(Debug, Clone)]
struct Shared {
    norm: PlainLayerNorm,
    heads: usize,
}

/// The model's inputs besides the latents.
pub struct FluxInputs<'a> {
    /// T5 embeddings `(b, text_len, joint_attention_dim)`.
    pub context: &'a Tensor,
    /// CLIP's pooled embedding `(b, pooled_projection_dim)`.
    pub pooled: &'a Tensor,
    /// Timesteps `(b,)` as the model embeds them (sigma × 1000).
    pub timestep: &'a Tensor,
    /// Distilled guidance `(b,)`, × 1000 (dev); `None` for models without a guidance embedding.
    pub guidance: Option<&'a Tensor>,
}

/// A loaded `FluxTransformer2DModel`.
#[derive(Debug, Clone)]
pub struct FluxTransformer2DModel {
    config: FluxConfig,
    x_embedder: Linear,
    context_embedder: Linear,
    time_text_embed: TimeTextEmbed,
    double: Vec<DoubleBlock>,
    single: Vec<SingleBlock>,
    norm_out: AdaNormContinuous,
    proj_out: Linear,
    shared: Shared,
    dtype: DType,
}

impl FluxTransformer2DModel {
    /// Builds the model from `config` and the weights under `vb` (diffusers' names).
    pub fn new(vb: Weights, config: FluxConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let c = &config;
        let dim = c.inner_dim();
        let hd = c.attention_head_dim;
        let double = (0..c.num_layers)
            .map(|i| DoubleBlock::new(vb.pp(format!("transformer_blocks.{i}")), dim, hd))
            .collect::<Result<Vec<_>>>()?;
        let single = (0..c.num_single_layers)
            .map(|i| SingleBlock::new(vb.pp(format!("single_transformer_blocks.{i}")), dim, hd))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            x_embedder: linear(c.in_channels, dim, vb.pp("x_embedder"))?,
            context_embedder: linear(c.joint_attention_dim, dim, vb.pp("context_embedder"))?,
            time_text_embed: TimeTextEmbed::new(
                vb.pp("time_text_embed"),
                dim,
                c.pooled_projection_dim,
                c.guidance_embeds,
            )?,
            double,
            single,
            norm_out: AdaNormContinuous::new(vb.pp("norm_out"), dim)?,
            proj_out: linear(
                dim,
                c.patch_size * c.patch_size * c.out_channels(),
                vb.pp("proj_out"),
            )?,
            shared: Shared {
                norm: PlainLayerNorm::new(dim, vb.dtype(), vb.device())?,
                heads: c.num_attention_heads,
            },
            dtype: vb.dtype(),
            config,
        })
    }

    pub fn config(&self) -> &FluxConfig {
        &self.config
    }

    /// The dtype the model computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The prediction for packed latents `(b, image_tokens, in_channels)` at image positions
    /// `img_ids` (text positions are all zero in the FLUX pipelines).
    pub fn forward(&self, packed: &Tensor, img_ids: &[[f32; 3]], inputs: &FluxInputs<'_>) -> Result<Tensor> {
        let dtype = self.dtype;
        let device = packed.device();
        let mut hidden = self.x_embedder.forward(&packed.to_dtype(dtype)?)?;
        let pooled = inputs.pooled.to_dtype(dtype)?;
        let temb = self
            .time_text_embed
            .forward(inputs.timestep, inputs.guidance, &pooled)?;
        let mut context = self.context_embedder.forward(&inputs.context.to_dtype(dtype)?)?;
        let text_len = context.dim(1)?;
        let mut ids = vec![[0f32; 3]; text_len];
        ids.extend_from_slice(img_ids);
        let rope = Rope::new(&ids, &self.config.axes_dims_rope, DType::F32, device)?;
        let rope = Rope {
            cos: rope.cos.to_dtype(dtype)?,
            sin: rope.sin.to_dtype(dtype)?,
        };
        for block in &self.double {
            crate::layers::cancel::check()?;
            (context, hidden) = block.forward(&hidden, &context, &temb, &rope, &self.shared)?;
        }
        let image_len = hidden.dim(1)?;
        let mut joint = Tensor::cat(&[&context, &hidden], 1)?;
        for block in &self.single {
            crate::layers::cancel::check()?;
            joint = block.forward(&joint, &temb, &rope, &self.shared)?;
        }
        let hidden = joint.narrow(1, text_len, image_len)?;
        let hidden = self.norm_out.forward(&hidden, &temb, &self.shared.norm)?;
        self.proj_out.forward(&hidden)?.to_dtype(DType::F32)
    }
}

/// diffusers' `_pack_latents`: `(b, c, h, w)` → `(b, (h/2)·(w/2), 4c)`, each token a 2×2 patch with
/// the channel outermost.
pub fn pack_latents(latents: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    latents
        .reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((b, (h / 2) * (w / 2), c * 4))
}

/// diffusers' `_unpack_latents`: the inverse of [`pack_latents`] for latents of `h×w`.
pub fn unpack_latents(packed: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c4) = packed.dims3()?;
    let c = c4 / 4;
    packed
        .reshape((b, h / 2, w / 2, c, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .contiguous()?
        .reshape((b, c, h, w))
}

/// diffusers' `_prepare_latent_image_ids`: `(0, row, column)` of each packed token, row-major.
pub fn latent_image_ids(h2: usize, w2: usize) -> Vec<[f32; 3]> {
    (0..h2)
        .flat_map(|r| (0..w2).map(move |c| [0.0, r as f32, c as f32]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_and_orders_channels_outermost() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4, 6))
            .unwrap();
        let p = pack_latents(&x).unwrap();
        assert_eq!(p.dims(), &[2, 6, 12]);
        // Token 0 of batch 0: channel 0's patch (0,0),(0,1),(1,0),(1,1), then channel 1's.
        let row = p.get(0).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&row[..5], &[0.0, 1.0, 6.0, 7.0, 24.0]);
        let back = unpack_latents(&p, 4, 6).unwrap();
        let diff = (back - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn image_ids_are_row_major() {
        assert_eq!(
            latent_image_ids(2, 3),
            vec![
                [0., 0., 0.],
                [0., 0., 1.],
                [0., 0., 2.],
                [0., 1., 0.],
                [0., 1., 1.],
                [0., 1., 2.]
            ]
        );
    }
}
