//! diffusers' `SD3Transformer2DModel` (Stable Diffusion 3 and 3.5), built from its `config.json`:
//! patch embedding with a cropped 2-D sin-cos position table, timestep + pooled-text conditioning, joint
//! (MMDiT) blocks over `[image; text]` tokens, the last one context-pre-only, 3.5's q/k RMS norms and
//! 3.5 Medium's second, image-only attention (MMDiT-X), and skip-layer guidance's skipped blocks.

use super::dit::{
    gated, modulate, modulation, AdaNormContinuous, FeedForward, PlainLayerNorm, RmsNorm, TimeTextEmbed,
};
use crate::layers::nn::{attention, linear, Linear};
use crate::weights::Weights;
use candle_core::{DType, Device, Module, Result, Tensor};
use serde::Deserialize;

/// The `config.json` of an `SD3Transformer2DModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct Sd3Config {
    #[serde(default = "d_sample")]
    pub sample_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_ch")]
    pub in_channels: usize,
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_joint")]
    pub joint_attention_dim: usize,
    #[serde(default = "d_caption")]
    pub caption_projection_dim: usize,
    #[serde(default = "d_pooled")]
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default)]
    pub pos_embed_max_size: Option<usize>,
    #[serde(default)]
    pub dual_attention_layers: Vec<usize>,
    #[serde(default)]
    pub qk_norm: Option<String>,
}

fn d_sample() -> usize {
    128
}
fn d_patch() -> usize {
    2
}
fn d_ch() -> usize {
    16
}
fn d_layers() -> usize {
    18
}
fn d_head_dim() -> usize {
    64
}
fn d_heads() -> usize {
    18
}
fn d_joint() -> usize {
    4096
}
fn d_caption() -> usize {
    1152
}
fn d_pooled() -> usize {
    2048
}

impl Sd3Config {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Refuses configs the SD3 pipelines cannot run, naming the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            ("caption_projection_dim", self.caption_projection_dim),
            ("pooled_projection_dim", self.pooled_projection_dim),
        ] {
            if v == 0 || v > 1 << 16 {
                return Err(format!("{name} {v} is out of range"));
            }
        }
        if self.patch_size > 16 {
            return Err(format!("patch_size {} is out of range", self.patch_size));
        }
        if self.num_layers == 0 || self.num_layers > 1024 {
            return Err(format!("num_layers {} is out of range", self.num_layers));
        }
        if self.caption_projection_dim != self.inner_dim() {
            return Err(format!(
                "caption_projection_dim {} differs from num_attention_heads × attention_head_dim = {}: the joint \
                 attention projects the text stream at the model's width",
                self.caption_projection_dim,
                self.inner_dim()
            ));
        }
        if let Some(&l) = self.dual_attention_layers.iter().find(|&&l| l >= self.num_layers) {
            return Err(format!(
                "dual_attention_layers names layer {l}, but the model has {} layers",
                self.num_layers
            ));
        }
        match self.qk_norm.as_deref() {
            None | Some("rms_norm") => {}
            Some(other) => return Err(format!("qk_norm {other:?} is not supported (only \"rms_norm\")")),
        }
        match self.pos_embed_max_size {
            Some(m) if m == 0 || m > 1 << 12 => Err(format!("pos_embed_max_size {m} is out of range")),
            _ => Ok(()),
        }
    }
}

/// `PatchEmbed`: a `patch_size`-strided convolution, as a matmul over flattened patches, plus the
/// position table (cropped to the centre when `pos_embed_max_size` is set).
#[derive(Debug, Clone)]
struct PatchEmbed {
    /// `(inner, in_channels · p · p)`.
    weight: Tensor,
    bias: Tensor,
    /// `(max · max, inner)` (SD3's `pos_embed_max_size` table) or `(grid · grid, inner)`.
    table: Tensor,
    /// The table's side in patches.
    side: usize,
    /// Whether the table is cropped (`pos_embed_max_size`) rather than recomputed per size.
    cropped: bool,
    base_size: usize,
    p: usize,
}

impl PatchEmbed {
    fn new(vb: Weights, c: &Sd3Config) -> Result<Self> {
        let dim = c.inner_dim();
        let p = c.patch_size;
        let weight = vb
            .get((dim, c.in_channels, p, p), "proj.weight")?
            .reshape((dim, c.in_channels * p * p))?;
        let bias = vb.get(dim, "proj.bias")?;
        let base_size = c.sample_size / p;
        let (side, cropped) = match c.pos_embed_max_size {
            Some(m) => (m, true),
            None => (base_size, false),
        };
        // diffusers saves the table with the weights when it is cropped (a persistent buffer).
        let table = if cropped && vb.contains_tensor("pos_embed") {
            vb.get((1, side * side, dim), "pos_embed")?.squeeze(0)?
        } else {
            sincos_table(dim, side, side, base_size, vb.device())?.to_dtype(vb.dtype())?
        };
        Ok(Self {
            weight,
            bias,
            table,
            side,
            cropped,
            base_size,
            p,
        })
    }

    /// `(b, c, h, w)` latents → `(b, (h/p)·(w/p), inner)` tokens with positions added.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.p;
        let (hp, wp) = (h / p, w / p);
        let patches = x
            .reshape((b, c, hp, p, wp, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, hp * wp, c * p * p))?;
        let tokens = patches
            .broadcast_matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let pos = if self.cropped {
            if hp > self.side || wp > self.side {
                candle_core::bail!(
                    "{}x{} latent patches exceed the transformer's pos_embed_max_size {}: the image is too large \
                     for this model",
                    hp,
                    wp,
                    self.side
                );
            }
            let (top, left) = ((self.side - hp) / 2, (self.side - wp) / 2);
            self.table
                .reshape((self.side, self.side, ()))?
                .narrow(0, top, hp)?
                .narrow(1, left, wp)?
                .contiguous()?
                .reshape((hp * wp, ()))?
        } else if (hp, wp) == (self.side, self.side) {
            self.table.clone()
        } else {
            sincos_table(self.table.dim(1)?, hp, wp, self.base_size, x.device())?
                .to_dtype(self.table.dtype())?
        };
        tokens.broadcast_add(&pos)
    }
}

/// diffusers' `get_2d_sincos_pos_embed(dim, (h, w), base_size)`: row-major over `h × w` patches; the
/// first half of each row encodes the column, the second the row, each as `[sin, cos]` of
/// `pos · 10000^(−k/(dim/4))`, positions `arange(n) / (n / base_size)` in float32, angles in float64.
fn sincos_table(dim: usize, h: usize, w: usize, base_size: usize, device: &Device) -> Result<Tensor> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let coord = |i: usize, n: usize| (i as f32 / (n as f32 / base_size as f32)) as f64;
    let mut data = Vec::with_capacity(h * w * dim);
    for r in 0..h {
        for c in 0..w {
            for pos in [coord(c, w), coord(r, h)] {
                data.extend(omega.iter().map(|o| (pos * o).sin() as f32));
                data.extend(omega.iter().map(|o| (pos * o).cos() as f32));
            }
        }
    }
    Tensor::from_vec(data, (h * w, 4 * quarter), device)
}

/// q, k, v projections (with bias) of one stream, and its optional q/k RMS norms.
#[derive(Debug, Clone)]
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
}

impl Projections {
    fn new(vb: &Weights, names: [&str; 5], dim: usize, head_dim: usize, qk_norm: bool) -> Result<Self> {
        Ok(Self {
            q: linear(dim, dim, vb.pp(names[0]))?,
            k: linear(dim, dim, vb.pp(names[1]))?,
            v: linear(dim, dim, vb.pp(names[2]))?,
            norm_q: qk_norm
                .then(|| RmsNorm::new(head_dim, vb.pp(names[3])))
                .transpose()?,
            norm_k: qk_norm
                .then(|| RmsNorm::new(head_dim, vb.pp(names[4])))
                .transpose()?,
        })
    }

    /// `(q, k, v)` as `(b, tokens, heads · head_dim)`, q and k normalised per head.
    fn project(&self, xs: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, dim) = xs.dims3()?;
        let norm = |t: Tensor, n: &Option<RmsNorm>| -> Result<Tensor> {
            match n {
                Some(n) => n
                    .forward(&t.reshape((b, l, heads, dim / heads))?)?
                    .reshape((b, l, dim)),
                None => Ok(t),
            }
        };
        Ok((
            norm(self.q.forward(xs)?, &self.norm_q)?,
            norm(self.k.forward(xs)?, &self.norm_k)?,
            self.v.forward(xs)?,
        ))
    }
}

/// One `JointTransformerBlock`.
#[derive(Debug, Clone)]
struct JointBlock {
    /// AdaLayerNormZero (6 chunks) or, with dual attention, SD35AdaLayerNormZeroX (9 chunks).
    norm1: Linear,
    /// AdaLayerNormZero of the text stream; `None` in the context-pre-only last block.
    norm1_context: Option<Linear>,
    /// The last block's AdaLayerNormContinuous of the text stream.
    norm1_context_pre_only: Option<AdaNormContinuous>,
    image: Projections,
    context: Projections,
    to_out: Linear,
    to_add_out: Option<Linear>,
    /// MMDiT-X: a second, image-only attention with its own modulation.
    attn2: Option<(Projections, Linear)>,
    ff: FeedForward,
    ff_context: Option<FeedForward>,
}

impl JointBlock {
    fn new(vb: Weights, c: &Sd3Config, pre_only: bool, dual: bool) -> Result<Self> {
        let dim = c.inner_dim();
        let hd = c.attention_head_dim;
        let qk = c.qk_norm.is_some();
        let attn = vb.pp("attn");
        let attn2 = if dual {
            let a = vb.pp("attn2");
            Some((
                Projections::new(&a, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], dim, hd, qk)?,
                linear(dim, dim, a.pp("to_out.0"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            norm1: linear(dim, if dual { 9 } else { 6 } * dim, vb.pp("norm1.linear"))?,
            norm1_context: (!pre_only)
                .then(|| linear(dim, 6 * dim, vb.pp("norm1_context.linear")))
                .transpose()?,
            norm1_context_pre_only: pre_only
                .then(|| AdaNormContinuous::new(vb.pp("norm1_context"), dim))
                .transpose()?,
            image: Projections::new(&attn, ["to_q", "to_k", "to_v", "norm_q", "norm_k"], dim, hd, qk)?,
            context: Projections::new(
                &attn,
                [
                    "add_q_proj",
                    "add_k_proj",
                    "add_v_proj",
                    "norm_added_q",
                    "norm_added_k",
                ],
                dim,
                hd,
                qk,
            )?,
            to_out: linear(dim, dim, attn.pp("to_out.0"))?,
            to_add_out: (!pre_only)
                .then(|| linear(dim, dim, attn.pp("to_add_out")))
                .transpose()?,
            attn2,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            ff_context: (!pre_only)
                .then(|| FeedForward::new(vb.pp("ff_context"), dim))
                .transpose()?,
        })
    }

    /// `(context, hidden)` after the block (`context` is `None` after the context-pre-only block).
    fn forward(
        &self,
        hidden: &Tensor,
        context: &Tensor,
        temb: &Tensor,
        m: &Shared,
    ) -> Result<(Option<Tensor>, Tensor)> {
        let chunks = if self.attn2.is_some() { 9 } else { 6 };
        let h = modulation(&self.norm1, temb, chunks)?;
        let normed = m.norm.forward(hidden)?;
        // Chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp (+ shift, scale, gate
        // of the second attention, on the same normalised input).
        let norm_h = modulate(&normed, &h[0], &h[1])?;
        let (norm_c, c) = match (&self.norm1_context, &self.norm1_context_pre_only) {
            (Some(lin), _) => {
                let c = modulation(lin, temb, 6)?;
                (modulate(&m.norm.forward(context)?, &c[0], &c[1])?, Some(c))
            }
            (None, Some(cont)) => (cont.forward(context, temb, &m.norm)?, None),
            (None, None) => candle_core::bail!("internal error: a joint block without a text-stream norm"),
        };
        let (q, k, v) = self.image.project(&norm_h, m.heads)?;
        let (cq, ck, cv) = self.context.project(&norm_c, m.heads)?;
        // Image tokens first, as diffusers' JointAttnProcessor concatenates them.
        let q = Tensor::cat(&[&q, &cq], 1)?;
        let k = Tensor::cat(&[&k, &ck], 1)?;
        let v = Tensor::cat(&[&v, &cv], 1)?;
        let out = attention(&q, &k, &v, m.heads)?;
        let (lh, lc) = (hidden.dim(1)?, context.dim(1)?);
        let attn_h = self.to_out.forward(&out.narrow(1, 0, lh)?.contiguous()?)?;
        let mut hidden = (hidden + gated(&h[2], &attn_h)?)?;
        if let Some((proj, to_out)) = &self.attn2 {
            let norm_h2 = modulate(&normed, &h[6], &h[7])?;
            let (q, k, v) = proj.project(&norm_h2, m.heads)?;
            let out2 = to_out.forward(&attention(&q, &k, &v, m.heads)?)?;
            hidden = (&hidden + gated(&h[8], &out2)?)?;
        }
        let ff = self
            .ff
            .forward(&modulate(&m.norm.forward(&hidden)?, &h[3], &h[4])?)?;
        let hidden = (&hidden + gated(&h[5], &ff)?)?;

        let context = match (c, &self.to_add_out, &self.ff_context) {
            (Some(c), Some(to_add_out), Some(ff_context)) => {
                let attn_c = to_add_out.forward(&out.narrow(1, lh, lc)?.contiguous()?)?;
                let context = (context + gated(&c[2], &attn_c)?)?;
                let ff = ff_context.forward(&modulate(&m.norm.forward(&context)?, &c[3], &c[4])?)?;
                Some((&context + gated(&c[5], &ff)?)?)
            }
            _ => None,
        };
        Ok((context, hidden))
    }
}

#[derive(Debug, Clone)]
struct Shared {
    norm: PlainLayerNorm,
    heads: usize,
}

/// A loaded `SD3Transformer2DModel`.
#[derive(Debug, Clone)]
pub struct SD3Transformer2DModel {
    config: Sd3Config,
    pos_embed: PatchEmbed,
    time_text_embed: TimeTextEmbed,
    context_embedder: Linear,
    blocks: Vec<JointBlock>,
    norm_out: AdaNormContinuous,
    proj_out: Linear,
    shared: Shared,
    dtype: DType,
}

impl SD3Transformer2DModel {
    /// Builds the model from `config` and the weights under `vb` (diffusers' names).
    pub fn new(vb: Weights, config: Sd3Config) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let c = &config;
        let dim = c.inner_dim();
        let blocks = (0..c.num_layers)
            .map(|i| {
                JointBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    c,
                    i + 1 == c.num_layers,
                    c.dual_attention_layers.contains(&i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pos_embed: PatchEmbed::new(vb.pp("pos_embed"), c)?,
            time_text_embed: TimeTextEmbed::new(
                vb.pp("time_text_embed"),
                dim,
                c.pooled_projection_dim,
                false,
            )?,
            context_embedder: linear(
                c.joint_attention_dim,
                c.caption_projection_dim,
                vb.pp("context_embedder"),
            )?,
            blocks,
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

    pub fn config(&self) -> &Sd3Config {
        &self.config
    }

    /// The dtype the model computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The prediction for `(b, c, h, w)` latents at `timestep` (`(b,)`, as the pipeline passes the
    /// scheduler's timesteps), with `context` `(b, tokens, joint_attention_dim)` and `pooled`
    /// `(b, pooled_projection_dim)`; the blocks in `skip_layers` are left out (skip-layer guidance).
    /// Float32 `(b, out_channels, h, w)`.
    pub fn forward(
        &self,
        x: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        skip_layers: &[usize],
    ) -> Result<Tensor> {
        let dtype = self.dtype;
        let (b, _, h, w) = x.dims4()?;
        let mut hidden = self.pos_embed.forward(&x.to_dtype(dtype)?)?;
        let temb = self
            .time_text_embed
            .forward(timestep, None, &pooled.to_dtype(dtype)?)?;
        let mut context = Some(self.context_embedder.forward(&context.to_dtype(dtype)?)?);
        for (i, block) in self.blocks.iter().enumerate() {
            if skip_layers.contains(&i) {
                continue;
            }
            crate::layers::cancel::check()?;
            let Some(ctx) = context.as_ref() else {
                candle_core::bail!("internal error: a joint block after the context-pre-only one");
            };
            let (next, out) = block.forward(&hidden, ctx, &temb, &self.shared)?;
            hidden = out;
            context = next;
            // diffusers runs every block; one after the pre-only (last) block cannot exist.
            if context.is_none() && i + 1 < self.blocks.len() {
                candle_core::bail!("internal error: the context-pre-only block is not the last");
            }
        }
        let hidden = self.norm_out.forward(&hidden, &temb, &self.shared.norm)?;
        let out = self.proj_out.forward(&hidden)?;
        // Unpatchify: `(b, h/p · w/p, p·p·c)` → `(b, c, h, w)` (diffusers' einsum "nhwpqc->nchpwq").
        let p = self.config.patch_size;
        let oc = self.config.out_channels();
        out.reshape((b, h / p, w / p, p, p, oc))?
            .permute((0, 5, 1, 3, 2, 4))?
            .contiguous()?
            .reshape((b, oc, h, w))?
            .to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_table_matches_diffusers_layout() {
        // get_2d_sincos_pos_embed(8, (2, 3), base_size=2): token (r, c) = [sin/cos of the column | of the row].
        let t = sincos_table(8, 2, 3, 2, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[6, 8]);
        let rows = t.to_vec2::<f32>().unwrap();
        // Token 0 is position (0, 0): sin 0 = 0, cos 0 = 1 in both halves.
        assert_eq!(rows[0], vec![0., 0., 1., 1., 0., 0., 1., 1.]);
        // Token 4 is (1, 1): column coordinate 1 / (3 / 2) = 2/3, row coordinate 1 / (2 / 2) = 1.
        let col = (1f32 / (3f32 / 2f32)) as f64;
        assert!((rows[4][0] - col.sin() as f32).abs() < 1e-7);
        assert!((rows[4][4] - 1f64.sin() as f32).abs() < 1e-7);
        assert!((rows[4][5] - (1.0f64 / 100.0).sin() as f32).abs() < 1e-7);
    }
}
