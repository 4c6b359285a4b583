//! diffusers `UNet2DConditionModel`, built from the checkpoint's own `config.json` (SD 1.x, SD 2.x, SDXL).

use crate::layers::cancel;
use crate::layers::nn::{
    conv2d, group_norm, timestep_embedding, Conv2d, Downsample2D, GroupNorm, ResnetBlock2D, ResnetConfig,
    TimestepEmbedding, Upsample2D,
};
use crate::models::transformer::{Transformer2D, TransformerConfig};
pub use crate::models::unet_config::UNetConfig;
use crate::weights::Weights;
use candle_core::{DType, Module, Result, Tensor, D};

/// SDXL's extra conditioning (`added_cond_kwargs`): pooled text embeddings and the size/crop time ids.
#[derive(Debug, Clone)]
pub struct AddedCond {
    /// `(batch, pooled_dim)`.
    pub text_embeds: Tensor,
    /// `(batch, n_ids)`, e.g. 6 ids: original size, crop top-left, target size.
    pub time_ids: Tensor,
}

#[derive(Debug, Clone)]
struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

#[derive(Debug, Clone)]
struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Transformer2D, ResnetBlock2D)>,
}

/// The denoising UNet. `forward` is pure: no state changes between calls, so it may be shared.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TimestepEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// Builds the model from `config`, reading weights through `vb` (diffusers key names).
    pub fn new(vb: Weights, config: UNetConfig) -> Result<Self> {
        if let Err(what) = config.check_values() {
            candle_core::bail!("invalid UNet config: {what}");
        }
        if let Err(what) = config.check_supported() {
            candle_core::bail!("this UNet config needs features autopipeline does not implement yet: {what}");
        }
        let c = &config;
        let n = c.block_out_channels.len();
        let ch0 = c.block_out_channels[0];
        let time_embed_dim = c.time_embedding_dim.unwrap_or(ch0 * 4);
        let heads = c.heads();
        let layers = c.layers_per_block.expand(n);
        let tlayers = c.transformer_layers_per_block.expand(n);
        let context_dim = c.cross_attention_dim();
        let groups = c.norm_num_groups;
        let resnet = |in_ch, out_ch, scale| ResnetConfig {
            in_channels: in_ch,
            out_channels: out_ch,
            temb_channels: Some(time_embed_dim),
            groups,
            eps: c.norm_eps,
            output_scale_factor: scale,
        };
        let transformer = |ch, heads, layers| TransformerConfig {
            channels: ch,
            heads,
            layers,
            context_dim,
            groups,
            use_linear_projection: c.use_linear_projection,
        };

        let conv_in = conv2d(
            vb.pp("conv_in"),
            c.in_channels,
            ch0,
            c.conv_in_kernel,
            1,
            (c.conv_in_kernel - 1) / 2,
        )?;
        let time_embedding =
            TimestepEmbedding::new(vb.pp("time_embedding"), ch0, time_embed_dim, c.time_cond_proj_dim)?;
        let add_embedding = match (
            c.addition_embed_type.as_deref(),
            c.projection_class_embeddings_input_dim,
        ) {
            (Some("text_time"), Some(dim)) => Some(TimestepEmbedding::new(
                vb.pp("add_embedding"),
                dim,
                time_embed_dim,
                None,
            )?),
            _ => None,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = ch0;
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = c.block_out_channels[i];
            let vb = vb.pp(format!("down_blocks.{i}"));
            let cross = kind == "CrossAttnDownBlock2D";
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers[i] {
                let r_in = if j == 0 { in_ch } else { out_ch };
                resnets.push(ResnetBlock2D::new(
                    vb.pp(format!("resnets.{j}")),
                    resnet(r_in, out_ch, c.resnet_out_scale_factor),
                )?);
                if cross {
                    attentions.push(Transformer2D::new(
                        vb.pp(format!("attentions.{j}")),
                        transformer(out_ch, heads[i], tlayers[i]),
                    )?);
                }
            }
            let downsampler = if i + 1 < n {
                Some(Downsample2D::new(
                    vb.pp("downsamplers.0"),
                    out_ch,
                    c.downsample_padding,
                )?)
            } else {
                None
            };
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
        }

        let last = c.block_out_channels[n - 1];
        let mid_block = match c.mid_block_type.as_deref() {
            Some(_) => {
                let vb = vb.pp("mid_block");
                let first =
                    ResnetBlock2D::new(vb.pp("resnets.0"), resnet(last, last, c.mid_block_scale_factor))?;
                let attn = Transformer2D::new(
                    vb.pp("attentions.0"),
                    transformer(last, heads[n - 1], tlayers[n - 1]),
                )?;
                let second =
                    ResnetBlock2D::new(vb.pp("resnets.1"), resnet(last, last, c.mid_block_scale_factor))?;
                Some(MidBlock {
                    first,
                    layers: vec![(attn, second)],
                })
            }
            None => None,
        };

        let rev_ch: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = heads.iter().rev().copied().collect();
        let rev_layers: Vec<usize> = layers.iter().rev().copied().collect();
        let rev_tlayers: Vec<usize> = match &c.reverse_transformer_layers_per_block {
            Some(v) => v.clone(),
            None => tlayers.iter().rev().copied().collect(),
        };
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = rev_ch[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let prev_out = out_ch;
            out_ch = rev_ch[i];
            let in_ch = rev_ch[(i + 1).min(n - 1)];
            let vb = vb.pp(format!("up_blocks.{i}"));
            let cross = kind == "CrossAttnUpBlock2D";
            let num_layers = rev_layers[i] + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..num_layers {
                let skip = if j == num_layers - 1 { in_ch } else { out_ch };
                let r_in = if j == 0 { prev_out } else { out_ch };
                resnets.push(ResnetBlock2D::new(
                    vb.pp(format!("resnets.{j}")),
                    resnet(r_in + skip, out_ch, c.resnet_out_scale_factor),
                )?);
                if cross {
                    attentions.push(Transformer2D::new(
                        vb.pp(format!("attentions.{j}")),
                        transformer(out_ch, rev_heads[i], rev_tlayers[i]),
                    )?);
                }
            }
            let upsampler = if i + 1 < n {
                Some(Upsample2D::new(vb.pp("upsamplers.0"), out_ch)?)
            } else {
                None
            };
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
        }

        let conv_norm_out = group_norm(groups, ch0, c.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv2d(
            vb.pp("conv_out"),
            ch0,
            c.out_channels,
            c.conv_out_kernel,
            1,
            (c.conv_out_kernel - 1) / 2,
        )?;
        Ok(Self {
            config,
            conv_in,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// The config this model was built from.
    /// The dtype the UNet computes in (its activations').
    pub fn dtype(&self) -> DType {
        self.conv_in.dtype()
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Predicts noise (or v, per the scheduler's `prediction_type`) for `sample` at `timestep`.
    ///
    /// `sample`: `(batch, in_channels, h, w)`; `context`: `(batch, tokens, cross_attention_dim)`.
    ///
    /// Inputs are cast to the weights' dtype (f16/bf16 models take f32 latents); the output is float32
    /// whatever that dtype, so schedulers always step in float32.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond>,
    ) -> Result<Tensor> {
        let t = Tensor::full(timestep as f32, sample.dim(0)?, sample.device())?;
        self.forward_t(sample, &t, context, added)
    }

    /// [`UNet2DConditionModel::forward`] with the timestep as a float32 `(batch,)` tensor on the
    /// sample's device: no host value enters the computation, so it can be captured once as a CUDA
    /// graph and replayed with new values in the same buffers (`cuda::graph`).
    pub fn forward_t(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        added: Option<&AddedCond>,
    ) -> Result<Tensor> {
        self.forward_cond(sample, timesteps, context, added, None)
    }

    /// [`UNet2DConditionModel::forward_t`] with diffusers' `timestep_cond`: the `(batch,
    /// time_cond_proj_dim)` condition UNets with `time_cond_proj_dim` add to their time embedding (LCM's
    /// guidance-scale embedding).
    pub fn forward_cond(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        added: Option<&AddedCond>,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let batch = sample.dim(0)?;
        if timesteps.dims() != [batch] {
            candle_core::bail!(
                "UNet timesteps of shape {:?} for a batch of {batch}",
                timesteps.dims()
            )
        }
        let dtype = self.dtype();
        if sample.dtype() != dtype {
            let cast = added
                .map(|a| -> Result<AddedCond> {
                    Ok(AddedCond {
                        text_embeds: a.text_embeds.to_dtype(dtype)?,
                        time_ids: a.time_ids.clone(),
                    })
                })
                .transpose()?;
            let cond = timestep_cond.map(|c| c.to_dtype(dtype)).transpose()?;
            return self
                .forward_cond(
                    &sample.to_dtype(dtype)?,
                    timesteps,
                    &context.to_dtype(dtype)?,
                    cast.as_ref(),
                    cond.as_ref(),
                )?
                .to_dtype(DType::F32);
        }
        let context = &context.to_dtype(dtype)?;
        let c = &self.config;
        let t_emb = timestep_embedding(
            timesteps,
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift,
        )?
        .to_dtype(sample.dtype())?;
        let mut emb = self.time_embedding.forward_cond(&t_emb, timestep_cond)?;
        if let Some(add_embedding) = &self.add_embedding {
            let Some(added) = added else {
                candle_core::bail!(
                    "this UNet (addition_embed_type text_time) needs text_embeds and time_ids"
                );
            };
            let dim = c.addition_time_embed_dim.unwrap_or(0);
            let ids = added.time_ids.flatten_all()?;
            let time_embeds = timestep_embedding(&ids, dim, c.flip_sin_to_cos, c.freq_shift)?
                .reshape((added.text_embeds.dim(0)?, ()))?
                .to_dtype(sample.dtype())?;
            let add = Tensor::cat(&[&added.text_embeds, &time_embeds], D::Minus1)?;
            emb = (emb + add_embedding.forward(&add)?)?;
        }

        let sample = if c.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        let mut xs = self.conv_in.forward(&sample)?;
        let mut residuals = vec![xs.clone()];
        for block in &self.down_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                cancel::check()?;
                xs = resnet.forward(&xs, Some(&emb))?;
                if let Some(attn) = block.attentions.get(j) {
                    xs = attn.forward(&xs, context)?;
                }
                residuals.push(xs.clone());
            }
            if let Some(down) = &block.downsampler {
                xs = down.forward(&xs)?;
                residuals.push(xs.clone());
            }
        }
        if let Some(mid) = &self.mid_block {
            xs = mid.first.forward(&xs, Some(&emb))?;
            for (attn, resnet) in &mid.layers {
                cancel::check()?;
                xs = resnet.forward(&attn.forward(&xs, context)?, Some(&emb))?;
            }
        }
        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                cancel::check()?;
                let skip = residuals.pop().expect("one residual per up-block resnet");
                xs = resnet.forward(&Tensor::cat(&[&xs, &skip], 1)?, Some(&emb))?;
                if let Some(attn) = block.attentions.get(j) {
                    xs = attn.forward(&xs, context)?;
                }
            }
            if let Some(up) = &block.upsampler {
                // Upsample to the next skip connection's size: this is what makes odd latent sizes work.
                let size = residuals
                    .last()
                    .map(|r| (r.dim(2).unwrap_or(0), r.dim(3).unwrap_or(0)));
                xs = up.forward(&xs, size)?;
            }
        }
        self.conv_out
            .forward_with(&xs, 1, Some(&self.conv_norm_out.with_silu()))
    }
}
