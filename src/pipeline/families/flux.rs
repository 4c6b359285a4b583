//! FLUX.1 (dev) and (schnell) (`FluxPipeline`, `FluxImg2ImgPipeline`, `FluxInpaintPipeline`): CLIP's
//! pooled embedding and T5's sequence condition a `FluxTransformer2DModel`; flow matching with the
//! pipeline's own sigmas (`linspace(1, 1/n, n)`) shifted by `mu` for the image's token count; latents
//! packed 2×2 into tokens around each model call (the loop itself works on `(b, 16, h, w)` latents:
//! every scheduler and blending step is elementwise, so packing commutes with it); distilled guidance
//! as model input ((dev)), true CFG as a second pass with a negative prompt.

use super::dit::{self, MAX_SEQUENCE_LENGTH};
use super::family::{
    Conditioning, Denoiser, FamilyPipeline, GuidanceMode, LatentNorm, ModelCond, RunDefaults, ScheduleArgs,
    Settings, SizeRule,
};
use crate::error::{Error, Result};
use crate::models::flux::{
    latent_image_ids, pack_latents, unpack_latents, FluxInputs, FluxTransformer2DModel,
};
use crate::pipeline::components::{load_scheduler, Components, LoadContext, Loader, Models, T5TextEncoder};
use crate::pipeline::memory::RunShape;
use crate::pipeline::prompt::{repeat_batch, tokenize};
use crate::pipeline::{Pipeline, RunParams, Trace};
use crate::registry::{Family, Task};
use crate::schedulers::SchedulerConfig;
use candle_core::Tensor;
use serde_json::Value;

/// The `flux` family.
pub struct Flux;

/// diffusers' FLUX pipelines' `default_sample_size` (latent pixels per side before packing).
const DEFAULT_SAMPLE_SIZE: usize = 128;

impl Denoiser for FluxTransformer2DModel {
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &ModelCond) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pooled = cond
            .pooled
            .as_ref()
            .ok_or_else(|| candle_core::Error::msg("FLUX conditioning without pooled projections"))?;
        // The pipeline passes `t / 1000` in the latents' dtype and the model multiplies by 1000 in its
        // own: the same float round trip here.
        let t = t.to_dtype(x.dtype())?;
        let t = t.broadcast_div(&Tensor::new(1000f32, t.device())?.to_dtype(t.dtype())?)?;
        let timestep = (t.to_dtype(self.dtype())? * 1000.0)?;
        let guidance = cond
            .guidance
            .as_ref()
            .map(|g| g.to_dtype(self.dtype())? * 1000.0)
            .transpose()?;
        let ids = latent_image_ids(h / 2, w / 2);
        let out = FluxTransformer2DModel::forward(
            self,
            &pack_latents(x)?,
            &ids,
            &FluxInputs {
                context: &cond.context,
                pooled,
                timestep: &timestep,
                guidance: guidance.as_ref(),
            },
        )?;
        unpack_latents(&out, h, w)
    }
}

impl FamilyPipeline for Flux {
    fn family(&self) -> Family {
        Family::Flux
    }

    fn load(
        &self,
        ctx: &LoadContext<'_>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Components> {
        let scheduler = load_scheduler(ctx.source, ctx.index)?;
        let mut loader = Loader::new(ctx, 4, progress);
        let text_encoder = loader.text_encoder("tokenizer", "text_encoder", false)?;
        let t5 = loader.t5_encoder("tokenizer_2", "text_encoder_2")?;
        let transformer = loader.flux_transformer()?;
        let vae = loader.vae(false)?;
        let cfg = transformer.config();
        let name = ctx.source.display_name();
        let clip_dim = text_encoder.model.config().hidden_size;
        if clip_dim != cfg.pooled_projection_dim {
            return Err(Error::InvalidModel(format!(
                "{name}: the transformer's pooled_projection_dim {} does not match text_encoder's hidden_size \
                 {clip_dim} (FLUX pools CLIP's last hidden state)",
                cfg.pooled_projection_dim
            )));
        }
        let t5_dim = t5.model.config().d_model;
        if t5_dim != cfg.joint_attention_dim {
            return Err(Error::InvalidModel(format!(
                "{name}: the transformer's joint_attention_dim {} does not match text_encoder_2's d_model {t5_dim}",
                cfg.joint_attention_dim
            )));
        }
        let latent_ch = vae.config().latent_channels;
        if cfg.in_channels != 4 * latent_ch {
            return Err(Error::Unsupported(format!(
                "{name}: the transformer takes {} input channels, not 4 × the VAE's {latent_ch} latent channels: \
                 FluxPipeline packs 2×2 latent patches; FLUX Fill, Depth, Canny and Kontext checkpoints (extra \
                 conditioning channels) are other pipelines, not supported yet",
                cfg.in_channels
            )));
        }
        Ok(loader.finish(
            Models {
                text_encoder,
                text_encoder_2: None,
                unet: None,
                t5: Some(t5),
                flux_transformer: Some(transformer),
                sd3_transformer: None,
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
                guidance_scale: 3.5,
                strength: 1.0,
                num_inference_steps: 28,
            },
            Task::Image2Image | Task::Inpaint => RunDefaults {
                guidance_scale: 7.0,
                strength: 0.6,
                num_inference_steps: 28,
            },
        }
    }

    fn check_task(&self, c: &Components, _task: Task) -> Result<()> {
        transformer(c).map(|_| ())
    }

    fn check_scheduler(&self, cfg: &SchedulerConfig) -> Result<()> {
        dit::require_flow_match("FLUX", cfg)
    }

    fn check_params(&self, _c: &Components, _task: Task, params: &RunParams) -> Result<()> {
        super::family::refuse_others(Family::Flux, params, &["max_sequence_length", "true_cfg_scale"])?;
        dit::check_max_sequence_length(params.max_sequence_length)?;
        if params.max_sequence_length == Some(0) {
            return Err(Error::InvalidArgument(
                "`max_sequence_length` must be at least 1 (T5's end-of-sequence token)".into(),
            ));
        }
        if let Some(s) = params.true_cfg_scale {
            if !s.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "true_cfg_scale must be a finite number, not {s}"
                )));
            }
        }
        if params.clip_skip.is_some() {
            return Err(Error::InvalidArgument(
                "the FLUX pipelines take no clip_skip (they use CLIP's pooled output)".into(),
            ));
        }
        if params.guidance_rescale != 0.0 {
            return Err(Error::InvalidArgument(
                "the FLUX pipelines take no guidance_rescale".into(),
            ));
        }
        Ok(())
    }

    fn default_size(&self, c: &Components) -> usize {
        DEFAULT_SAMPLE_SIZE * c.vae_scale_factor()
    }

    fn size_rule(&self, c: &Components) -> SizeRule {
        SizeRule {
            multiple: 2 * c.vae_scale_factor(),
            round_down: true,
            img2img_default_size: true,
        }
    }

    fn schedule_args(&self, c: &Components, cfg: &SchedulerConfig, s: &Settings) -> ScheduleArgs {
        let f = c.vae_scale_factor();
        let image_seq_len = (s.height / f / 2) * (s.width / f / 2);
        let n = s.steps;
        // `np.linspace(1.0, 1 / n, n)`: start + i·step, the last value exactly the end.
        let end = 1.0 / n as f64;
        let step = if n > 1 { (end - 1.0) / (n - 1) as f64 } else { 0.0 };
        let sigmas = (0..n)
            .map(|i| if i + 1 == n { end } else { 1.0 + i as f64 * step })
            .collect();
        ScheduleArgs {
            // Schedulers with `use_flow_sigmas` make their own (diffusers passes None then).
            sigmas: (!cfg.use_flow_sigmas).then_some(sigmas),
            mu: Some(cfg.flow_mu(image_seq_len)),
        }
    }

    fn accepts_custom_timesteps(&self) -> bool {
        false
    }

    fn strength_start(&self, n: usize, strength: f64, order: usize) -> (usize, usize) {
        super::family::flow_strength_start(n, strength, order)
    }

    fn guidance(&self, s: &Settings, params: &RunParams) -> GuidanceMode {
        let scale = params.true_cfg_scale.unwrap_or(1.0);
        let _ = s;
        if scale > 1.0 && params.negative_prompt.is_some() {
            GuidanceMode::SeparateCfg { scale }
        } else {
            GuidanceMode::Embedded
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
        let max_len = params.max_sequence_length.unwrap_or(MAX_SEQUENCE_LENGTH);
        let (embeds, pooled) = encode(c, &params.prompt, params.prompt_2.as_deref(), max_len, warnings)?;
        let negative = if guidance.needs_negative() {
            let neg = params.negative_prompt.as_deref().unwrap_or("");
            Some(encode(
                c,
                neg,
                params.negative_prompt_2.as_deref(),
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
        // `torch.full([1], guidance_scale, dtype=float32).expand(batch)` for guidance-distilled models.
        let guidance_value = if transformer(c)?.config().guidance_embeds {
            Some(Tensor::full(s.guidance_scale as f32, s.batch, &c.device)?)
        } else {
            None
        };
        let cond_of = |(e, p): &(Tensor, Tensor)| -> Result<ModelCond> {
            Ok(ModelCond {
                pooled: Some(repeat_batch(p, s.batch)?),
                guidance: guidance_value.clone(),
                ..ModelCond::context(repeat_batch(e, s.batch)?)
            })
        };
        Ok(Conditioning {
            guidance,
            cond: cond_of(&(embeds, pooled))?,
            negative: negative.as_ref().map(cond_of).transpose()?,
            skip_layer: None,
        })
    }

    fn denoiser<'a>(&self, c: &'a Components) -> Result<&'a dyn Denoiser> {
        Ok(transformer(c)?)
    }

    fn scales_model_input(&self) -> bool {
        false
    }

    fn latent_channels(&self, c: &Components) -> usize {
        c.flux_transformer
            .as_ref()
            .map_or(c.vae.config().latent_channels, |t| t.config().in_channels / 4)
    }

    fn latent_norm(&self, c: &Components) -> LatentNorm {
        dit::scale_shift_norm(c)
    }

    fn preview_factors(&self) -> Option<&'static [[f32; 3]]> {
        None
    }

    fn estimate_bytes(&self, c: &Components, run: RunShape) -> u128 {
        let decode = crate::pipeline::memory::vae_decode_bytes(&c.vae, run);
        let Some(t) = c.flux_transformer.as_ref() else {
            return 2 * decode;
        };
        let cfg = t.config();
        let f = (2 * c.vae_scale_factor()).max(1) as u128;
        let tokens =
            (run.width as u128 / f).max(1) * (run.height as u128 / f).max(1) + MAX_SEQUENCE_LENGTH as u128;
        let act = t.dtype().size_in_bytes() as u128;
        // A single-stream block holds the joint sequence's attention output and 4× MLP side by side
        // (5 × the width) next to its input.
        let block = run.batch as u128 * tokens * 5 * cfg.inner_dim() as u128 * act;
        2 * decode.max(block)
    }
}

/// The loaded FLUX transformer.
fn transformer(c: &Components) -> Result<&FluxTransformer2DModel> {
    c.flux_transformer
        .as_ref()
        .ok_or_else(|| Error::Unsupported("this pipeline's components have no FLUX transformer".into()))
}

fn t5(c: &Components) -> Result<&T5TextEncoder> {
    c.t5.as_ref()
        .ok_or_else(|| Error::Unsupported("this pipeline's components have no T5 encoder".into()))
}

/// `FluxPipeline.encode_prompt` for one prompt: T5's `(1, max_len, d)` sequence of `prompt_2` (or
/// `prompt`) and CLIP's pooled `(1, hidden)` of `prompt`.
fn encode(
    c: &Components,
    prompt: &str,
    prompt_2: Option<&str>,
    max_len: usize,
    warnings: &mut Vec<String>,
) -> Result<(Tensor, Tensor)> {
    let ids = tokenize(&c.text_encoder, prompt, &c.device, warnings)?;
    let pooled = c.text_encoder.model.forward(&ids)?.pooled;
    let text = super::family::or_prompt(prompt_2, prompt);
    let embeds = dit::encode_t5(t5(c)?, text, max_len, &c.device, warnings)?;
    Ok((embeds.to_dtype(c.dtype)?, pooled.to_dtype(c.dtype)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn img2img_strength_truncates_as_the_flux_pipelines() {
        // n = 4, strength 0.6: init 2.4, t_start = int(1.6) = 1 (SD's pipelines: 4 − int(2.4) = 2).
        assert_eq!(Flux.strength_start(4, 0.6, 1), (1, 3));
        assert_eq!(crate::schedulers::strength_start(4, 0.6, 1), (2, 2));
        assert_eq!(Flux.strength_start(28, 1.0, 1), (0, 28));
        assert_eq!(Flux.strength_start(10, 0.05, 1), (9, 1));
        assert_eq!(Flux.strength_start(10, 0.0, 1), (10, 0));
    }
}
