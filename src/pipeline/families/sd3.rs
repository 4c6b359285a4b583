//! Stable Diffusion 3 / 3.5 (`StableDiffusion3Pipeline`, `StableDiffusion3Img2ImgPipeline`,
//! `StableDiffusion3InpaintPipeline`): two CLIP encoders with projections (penultimate hidden states,
//! concatenated, zero-padded to T5's width, then T5's sequence after them; their pooled projections
//! concatenated) condition an `SD3Transformer2DModel`; CFG by batch doubling, skip-layer guidance;
//! flow matching with the scheduler's own spacing and shift; the 16-channel VAE's scaling and shift.
//! A checkpoint saved without T5 (`text_encoder_3: [null, null]`) puts zeros in its place.

use super::dit::{self, MAX_SEQUENCE_LENGTH};
use super::family::{
    flow_strength_start, or_prompt, refuse_others, Conditioning, Denoiser, FamilyPipeline, GuidanceMode,
    LatentNorm, ModelCond, RunDefaults, ScheduleArgs, Settings, SizeRule, SkipLayerGuidance,
};
use crate::error::{Error, Result};
use crate::models::sd3::SD3Transformer2DModel;
use crate::pipeline::components::{load_scheduler, Components, LoadContext, Loader, Models, TextEncoder};
use crate::pipeline::memory::RunShape;
use crate::pipeline::prompt::{repeat_batch, tokenize};
use crate::pipeline::{Pipeline, RunParams, Trace};
use crate::registry::{Family, Task};
use crate::schedulers::{calculate_shift, SchedulerConfig};
use candle_core::{DType, Tensor, D};
use serde_json::Value;

/// The `stable-diffusion-3` family.
pub struct StableDiffusion3;

/// Their default T5 prompt length.
const DEFAULT_SEQUENCE_LENGTH: usize = 256;

impl Denoiser for SD3Transformer2DModel {
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &ModelCond) -> candle_core::Result<Tensor> {
        self.forward_skipping(x, t, cond, &[])
    }

    fn forward_skipping(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &ModelCond,
        skip: &[usize],
    ) -> candle_core::Result<Tensor> {
        let pooled = cond
            .pooled
            .as_ref()
            .ok_or_else(|| candle_core::Error::msg("SD3 conditioning without pooled projections"))?;
        // The pipeline passes the scheduler's timesteps as they are, in the latents' dtype.
        let t = t.to_dtype(x.dtype())?;
        SD3Transformer2DModel::forward(self, x, &t, &cond.context, pooled, skip)
    }
}

impl FamilyPipeline for StableDiffusion3 {
    fn family(&self) -> Family {
        Family::StableDiffusion3
    }

    fn load(
        &self,
        ctx: &LoadContext<'_>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Components> {
        let scheduler = load_scheduler(ctx.source, ctx.index)?;
        // diffusers' `text_encoder_3=None` saves as `[null, null]`: the pipeline runs with zeros for T5.
        let with_t5 = !ctx.index.null_components.iter().any(|n| n == "text_encoder_3");
        let mut loader = Loader::new(ctx, if with_t5 { 5 } else { 4 }, progress);
        let text_encoder = loader.text_encoder("tokenizer", "text_encoder", true)?;
        let text_encoder_2 = loader.text_encoder("tokenizer_2", "text_encoder_2", true)?;
        let t5 = if with_t5 {
            Some(loader.t5_encoder("tokenizer_3", "text_encoder_3")?)
        } else {
            None
        };
        let transformer = loader.sd3_transformer()?;
        let vae = loader.vae(false)?;
        let cfg = transformer.config();
        let name = ctx.source.display_name();
        let projection = |e: &TextEncoder| {
            let c = e.model.config();
            c.projection_dim.unwrap_or(c.hidden_size)
        };
        let projections = projection(&text_encoder) + projection(&text_encoder_2);
        if projections != cfg.pooled_projection_dim {
            return Err(Error::InvalidModel(format!(
                "{name}: the transformer's pooled_projection_dim {} is not text_encoder's and text_encoder_2's \
                 projection_dim together ({projections})",
                cfg.pooled_projection_dim
            )));
        }
        let clip_width = text_encoder.model.config().hidden_size + text_encoder_2.model.config().hidden_size;
        if clip_width > cfg.joint_attention_dim {
            return Err(Error::InvalidModel(format!(
                "{name}: the CLIP encoders' hidden states together ({clip_width}) are wider than the transformer's \
                 joint_attention_dim {} they are padded to",
                cfg.joint_attention_dim
            )));
        }
        if let Some(t5) = &t5 {
            let d = t5.model.config().d_model;
            if d != cfg.joint_attention_dim {
                return Err(Error::InvalidModel(format!(
                    "{name}: the transformer's joint_attention_dim {} does not match text_encoder_3's d_model {d}",
                    cfg.joint_attention_dim
                )));
            }
        }
        let latent_ch = vae.config().latent_channels;
        if cfg.in_channels != latent_ch || cfg.out_channels() != latent_ch {
            return Err(Error::Unsupported(format!(
                "{name}: the transformer takes {} input channels and the VAE has {latent_ch} latent channels: SD3 \
                 inpainting transformers (33 channels) and mismatched VAEs are not supported",
                cfg.in_channels
            )));
        }
        Ok(loader.finish(
            Models {
                text_encoder,
                text_encoder_2: Some(text_encoder_2),
                unet: None,
                t5,
                flux_transformer: None,
                sd3_transformer: Some(transformer),
                vae,
            },
            scheduler,
        ))
    }

    fn config_keys(&self, _task: Task) -> Vec<(&'static str, Value)> {
        Vec::new()
    }

    fn defaults(&self, task: Task) -> RunDefaults {
        match task {
            Task::Text2Image => RunDefaults {
                guidance_scale: 7.0,
                strength: 1.0,
                num_inference_steps: 28,
            },
            Task::Image2Image | Task::Inpaint => RunDefaults {
                guidance_scale: 7.0,
                strength: 0.6,
                num_inference_steps: 50,
            },
        }
    }

    fn check_task(&self, c: &Components, _task: Task) -> Result<()> {
        transformer(c).map(|_| ())
    }

    fn check_scheduler(&self, cfg: &SchedulerConfig) -> Result<()> {
        dit::require_flow_match("SD3", cfg)
    }

    fn check_params(&self, c: &Components, task: Task, params: &RunParams) -> Result<()> {
        refuse_others(
            Family::StableDiffusion3,
            params,
            &[
                "max_sequence_length",
                "prompt_3",
                "negative_prompt_3",
                "skip_guidance_layers",
            ],
        )?;
        dit::check_max_sequence_length(params.max_sequence_length)?;
        let t = transformer(c)?;
        let m = c.vae_scale_factor() * t.config().patch_size;
        if task == Task::Text2Image {
            let size = self.default_size(c);
            let (w, h) = (params.width.unwrap_or(size), params.height.unwrap_or(size));
            if !w.is_multiple_of(m) || !h.is_multiple_of(m) {
                return Err(Error::InvalidArgument(format!(
                    "`height` and `width` have to be divisible by {m} but are {h} and {w}. You can use height {} and \
                     width {}.",
                    h - h % m,
                    w - w % m
                )));
            }
        }
        if let Some(layers) = &params.skip_guidance_layers {
            if task != Task::Text2Image {
                return Err(Error::InvalidArgument(format!(
                    "skip_guidance_layers is an argument of StableDiffusion3Pipeline (text2img) only, not of the {} \
                     pipeline",
                    task.name()
                )));
            }
            let n = t.config().num_layers;
            if let Some(l) = layers.iter().find(|&&l| l >= n) {
                return Err(Error::InvalidArgument(format!(
                    "skip_guidance_layers names layer {l}, but the transformer has {n} (0..={})",
                    n - 1
                )));
            }
        }
        for (name, v) in [
            ("skip_layer_guidance_scale", params.skip_layer_guidance_scale),
            ("skip_layer_guidance_start", params.skip_layer_guidance_start),
            ("skip_layer_guidance_stop", params.skip_layer_guidance_stop),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(Error::InvalidArgument(format!("{name} must be a finite number")));
            }
        }
        Ok(())
    }

    fn default_size(&self, c: &Components) -> usize {
        c.sd3_transformer
            .as_ref()
            .map_or(0, |t| t.config().sample_size * c.vae_scale_factor())
    }

    fn size_rule(&self, c: &Components) -> SizeRule {
        let patch = c.sd3_transformer.as_ref().map_or(1, |t| t.config().patch_size);
        SizeRule {
            // Image inputs become whole patches of latents (diffusers rounds to the VAE scale factor only
            // and then fails in the patch embedding; where it works the sizes agree).
            multiple: c.vae_scale_factor() * patch,
            round_down: false,
            // StableDiffusion3Img2ImgPipeline: `height or default_sample_size * vae_scale_factor`.
            img2img_default_size: true,
        }
    }

    fn schedule_args(&self, c: &Components, cfg: &SchedulerConfig, s: &Settings) -> ScheduleArgs {
        // The scheduler's own spacing; `mu` only for dynamically shifting schedulers, from the latent
        // patch count and the SD3 pipelines' defaults (max_shift 1.16).
        if !cfg.use_dynamic_shifting {
            return ScheduleArgs::default();
        }
        let patch = c.sd3_transformer.as_ref().map_or(1, |t| t.config().patch_size);
        let f = c.vae_scale_factor();
        let seq = (s.height / f / patch) * (s.width / f / patch);
        ScheduleArgs {
            sigmas: None,
            mu: Some(calculate_shift(
                seq,
                cfg.base_image_seq_len,
                cfg.max_image_seq_len,
                cfg.base_shift.unwrap_or(0.5),
                cfg.max_shift.unwrap_or(1.16),
            )),
        }
    }

    fn strength_start(&self, n: usize, strength: f64, order: usize) -> (usize, usize) {
        flow_strength_start(n, strength, order)
    }

    fn guidance(&self, s: &Settings, _params: &RunParams) -> GuidanceMode {
        if s.guidance_scale > 1.0 {
            GuidanceMode::BatchCfg {
                scale: s.guidance_scale,
                rescale: 0.0,
            }
        } else {
            GuidanceMode::None
        }
    }

    fn encode_prompt(
        &self,
        p: &Pipeline,
        params: &RunParams,
        s: &Settings,
        guidance: GuidanceMode,
        trace: Option<&mut Trace>,
        warnings: &mut Vec<String>,
    ) -> Result<Conditioning> {
        let c = &**p.components();
        let max_len = params.max_sequence_length.unwrap_or(DEFAULT_SEQUENCE_LENGTH);
        let prompt = params.prompt.as_str();
        let (embeds, pooled) = encode(
            c,
            [
                prompt,
                or_prompt(params.prompt_2.as_deref(), prompt),
                or_prompt(params.prompt_3.as_deref(), prompt),
            ],
            params.clip_skip,
            max_len,
            warnings,
        )?;
        let negative = if guidance.needs_negative() {
            let neg = params.negative_prompt.as_deref().unwrap_or("");
            Some(encode(
                c,
                [
                    neg,
                    or_prompt(params.negative_prompt_2.as_deref(), neg),
                    or_prompt(params.negative_prompt_3.as_deref(), neg),
                ],
                // diffusers encodes the negative prompt without clip_skip.
                None,
                max_len,
                warnings,
            )?)
        } else {
            None
        };
        if let Some(trace) = trace {
            trace.prompt_embeds = Some(embeds.clone());
            trace.pooled_prompt_embeds = Some(pooled.clone());
            if let Some((e, p)) = &negative {
                trace.negative_prompt_embeds = Some(e.clone());
                trace.negative_pooled_prompt_embeds = Some(p.clone());
            }
        }
        let b = s.batch;
        let positive = ModelCond {
            pooled: Some(repeat_batch(&pooled, b)?),
            ..ModelCond::context(repeat_batch(&embeds, b)?)
        };
        let cond = match &negative {
            Some((ne, np)) => ModelCond {
                pooled: Some(Tensor::cat(
                    &[&repeat_batch(np, b)?, positive.pooled.as_ref().unwrap_or(&pooled)],
                    0,
                )?),
                ..ModelCond::context(Tensor::cat(&[&repeat_batch(ne, b)?, &positive.context], 0)?)
            },
            None => positive.clone(),
        };
        let skip_layer = match (&params.skip_guidance_layers, guidance) {
            (Some(layers), GuidanceMode::BatchCfg { .. }) => Some(SkipLayerGuidance {
                layers: layers.clone(),
                scale: params.skip_layer_guidance_scale.unwrap_or(2.8),
                start: params.skip_layer_guidance_start.unwrap_or(0.01),
                stop: params.skip_layer_guidance_stop.unwrap_or(0.2),
                steps: s.steps,
                cond: positive,
            }),
            _ => None,
        };
        Ok(Conditioning {
            guidance,
            cond,
            negative: None,
            skip_layer,
        })
    }

    fn denoiser<'a>(&self, c: &'a Components) -> Result<&'a dyn Denoiser> {
        Ok(transformer(c)?)
    }

    fn scales_model_input(&self) -> bool {
        false
    }

    fn latent_channels(&self, c: &Components) -> usize {
        c.sd3_transformer
            .as_ref()
            .map_or(c.vae.config().latent_channels, |t| t.config().in_channels)
    }

    fn latent_norm(&self, c: &Components) -> LatentNorm {
        dit::scale_shift_norm(c)
    }

    fn decode_norm(&self, c: &Components, task: Task) -> LatentNorm {
        // StableDiffusion3InpaintPipeline decodes `latents / scaling_factor`, without the shift its
        // encode subtracted (the text2img and img2img pipelines add it back).
        match task {
            Task::Inpaint => LatentNorm::Scale {
                scaling: c.vae.config().scaling_factor,
                shift: 0.0,
            },
            _ => self.latent_norm(c),
        }
    }

    fn preview_factors(&self) -> Option<&'static [[f32; 3]]> {
        None
    }

    fn estimate_bytes(&self, c: &Components, run: RunShape) -> u128 {
        let decode = crate::pipeline::memory::vae_decode_bytes(&c.vae, run);
        let Some(t) = c.sd3_transformer.as_ref() else {
            return 2 * decode;
        };
        let cfg = t.config();
        let f = (c.vae_scale_factor() * cfg.patch_size).max(1) as u128;
        let tokens = (run.width as u128 / f).max(1) * (run.height as u128 / f).max(1)
            + 77
            + MAX_SEQUENCE_LENGTH as u128;
        let batch = run.batch as u128 * if run.cfg { 2 } else { 1 };
        let act = t.dtype().size_in_bytes() as u128;
        // The feed-forward's 4× hidden layer of the joint sequence, next to its input.
        let block = batch * tokens * 4 * cfg.inner_dim() as u128 * act;
        2 * decode.max(block)
    }
}

fn transformer(c: &Components) -> Result<&SD3Transformer2DModel> {
    c.sd3_transformer
        .as_ref()
        .ok_or_else(|| Error::Unsupported("this pipeline's components have no SD3 transformer".into()))
}

/// One CLIP encoder's `(hidden states, pooled projection)` as `_get_clip_prompt_embeds` takes them:
/// the penultimate layer's hidden states (no final layer norm), `clip_skip` layers earlier.
fn clip(
    enc: &TextEncoder,
    text: &str,
    clip_skip: Option<usize>,
    c: &Components,
    warnings: &mut Vec<String>,
) -> Result<(Tensor, Tensor)> {
    let ids = tokenize(enc, text, &c.device, warnings)?;
    let out = enc.model.forward(&ids)?;
    let n = out.hidden_states.len();
    let back = 2 + clip_skip.unwrap_or(0);
    if back > n {
        return Err(Error::InvalidArgument(format!(
            "clip_skip {} exceeds the text encoder's {} layers",
            clip_skip.unwrap_or(0),
            n - 1
        )));
    }
    Ok((out.hidden_states[n - back].clone(), out.pooled))
}

/// `StableDiffusion3Pipeline.encode_prompt` for one set of prompts (CLIP-L, CLIP-G, T5): the joint
/// `(1, 77 + max_len, joint_attention_dim)` sequence and the `(1, pooled_projection_dim)` pooled.
fn encode(
    c: &Components,
    prompts: [&str; 3],
    clip_skip: Option<usize>,
    max_len: usize,
    warnings: &mut Vec<String>,
) -> Result<(Tensor, Tensor)> {
    let t = transformer(c)?;
    let joint = t.config().joint_attention_dim;
    let second = c
        .text_encoder_2
        .as_ref()
        .ok_or_else(|| Error::Unsupported("this pipeline's components have no text_encoder_2".into()))?;
    let (h1, p1) = clip(&c.text_encoder, prompts[0], clip_skip, c, warnings)?;
    let (h2, p2) = clip(second, prompts[1], clip_skip, c, warnings)?;
    let clip_hidden = Tensor::cat(&[&h1, &h2], D::Minus1)?;
    let width = clip_hidden.dim(D::Minus1)?;
    let clip_hidden = clip_hidden.pad_with_zeros(D::Minus1, 0, joint - width)?;
    let t5 = match &c.t5 {
        Some(t5) => dit::encode_t5(t5, prompts[2], max_len, &c.device, warnings)?,
        // `text_encoder_3=None`: zeros of T5's shape.
        None => Tensor::zeros((1, max_len, joint), DType::F32, &c.device)?,
    };
    let embeds = Tensor::cat(&[&clip_hidden.to_dtype(t5.dtype())?, &t5], 1)?;
    let pooled = Tensor::cat(&[&p1, &p2], D::Minus1)?;
    Ok((embeds.to_dtype(c.dtype)?, pooled.to_dtype(c.dtype)?))
}
