//! What the UNet families (SD 1.x/2.x, SDXL, LCM) share: their component set (CLIP text encoders, a
//! `UNet2DConditionModel`, an `AutoencoderKL`), the UNet as the loop's [`Denoiser`], the task checks
//! on its input channels, and its activation-memory estimate.

use super::family::{Conditioning, Denoiser, GuidanceMode, ModelCond, Settings};
use crate::error::{Error, Result};
use crate::models::unet::UNet2DConditionModel;
use crate::pipeline::components::LoadContext;
use crate::pipeline::components::{load_scheduler, Components, Loader, Models};
use crate::pipeline::memory::RunShape;
use crate::pipeline::prompt::{encode_sd, repeat_batch, tokenize};
use crate::pipeline::{Pipeline, RunParams, Trace};
use crate::registry::Task;
use candle_core::{DType, Tensor};

impl Denoiser for UNet2DConditionModel {
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &ModelCond) -> candle_core::Result<Tensor> {
        self.forward_cond(
            x,
            t,
            &cond.context,
            cond.added.as_ref(),
            cond.timestep_cond.as_ref(),
        )
    }
}

/// Loads tokenizer + text_encoder (+ tokenizer_2 + text_encoder_2 when listed), unet and vae, and checks
/// that the UNet's cross-attention width is the encoders' hidden size (both, concatenated, for SDXL).
pub(super) fn load(
    ctx: &LoadContext<'_>,
    upcast_vae: bool,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Components> {
    let scheduler = load_scheduler(ctx.source, ctx.index)?;
    let has_second = ctx.index.component("text_encoder_2").is_some();
    let mut loader = Loader::new(ctx, if has_second { 4 } else { 3 }, progress);
    let text_encoder = loader.text_encoder("tokenizer", "text_encoder", false)?;
    let text_encoder_2 = if has_second {
        Some(loader.text_encoder("tokenizer_2", "text_encoder_2", true)?)
    } else {
        None
    };
    let unet = loader.unet()?;
    let vae = loader.vae(upcast_vae)?;
    let ctx_dim = text_encoder.model.config().hidden_size
        + text_encoder_2
            .as_ref()
            .map_or(0, |t| t.model.config().hidden_size);
    if unet.config().cross_attention_dim() != ctx_dim {
        return Err(Error::InvalidModel(format!(
            "unet cross_attention_dim {} does not match the text encoders' hidden size {ctx_dim}",
            unet.config().cross_attention_dim()
        )));
    }
    Ok(loader.finish(
        Models {
            text_encoder,
            text_encoder_2,
            unet: Some(unet),
            t5: None,
            flux_transformer: None,
            sd3_transformer: None,
            vae,
        },
        scheduler,
    ))
}

/// Refuses a task the UNet cannot run: text2img / img2img need as many input channels as latents;
/// inpainting takes those (latent blending) or `2·latents + 1` (mask and masked-image latents).
pub(super) fn check_task(c: &Components, task: Task) -> Result<()> {
    let unet_in = c.unet()?.config().in_channels;
    let latent_ch = c.vae.config().latent_channels;
    match task {
        Task::Text2Image | Task::Image2Image if unet_in != latent_ch => Err(Error::Unsupported(format!(
            "the UNet of this checkpoint takes {unet_in} input channels (an inpainting UNet), so it cannot run \
             {}; load it for the inpaint task instead (diffusers fails here with a tensor shape error)",
            task.name()
        ))),
        Task::Inpaint if unet_in != latent_ch && unet_in != 2 * latent_ch + 1 => {
            Err(Error::Unsupported(format!(
                "the UNet takes {unet_in} input channels; inpainting needs {latent_ch} (blending) or {} (mask + \
                 masked image)",
                2 * latent_ch + 1
            )))
        }
        _ => Ok(()),
    }
}

/// Default output side: `unet.sample_size × vae_scale_factor`.
pub(super) fn default_size(c: &Components) -> usize {
    c.unet
        .as_ref()
        .map_or(0, |u| u.config().sample_size * c.vae_scale_factor())
}

/// A lower bound on the run's peak activation memory: the largest of the VAE decoder's full-resolution
/// output and, per UNet down block, its feature map, its GEGLU projection (8 × channels per token) and
/// one attention chunk's f32 scores; times two for a layer's input and output living together.
pub(super) fn estimate_bytes(c: &Components, run: RunShape) -> u128 {
    let f32b = 4u128;
    let (w, h) = (run.width as u128, run.height as u128);
    let batch = run.batch as u128;
    let mut largest = crate::pipeline::memory::vae_decode_bytes(&c.vae, run);
    let Some(unet) = c.unet.as_ref() else {
        return 2 * largest;
    };
    // Activations are in the UNet's compute dtype (f32 on the CPU, whatever the pipeline's dtype).
    let act = unet.dtype().size_in_bytes() as u128;
    let unet_batch = batch * if run.cfg { 2 } else { 1 };
    let cfg = unet.config();
    let f = c.vae_scale_factor().max(1) as u128;
    let heads = cfg.heads();
    for (i, kind) in cfg.down_block_types.iter().enumerate() {
        let ch = cfg.block_out_channels.get(i).copied().unwrap_or(1) as u128;
        let scale = f << i.min(16);
        let tokens = (w / scale).max(1) * (h / scale).max(1);
        largest = largest.max(unet_batch * ch * tokens * act);
        if kind.starts_with("CrossAttn") {
            largest = largest.max(unet_batch * tokens * ch * 8 * act);
            let heads = heads.get(i).copied().unwrap_or(1) as u128;
            largest = largest.max(unet_batch * heads * tokens * f32b);
        }
    }
    2 * largest
}

/// The dtype the VAE's posterior samples are drawn in when the VAE runs upcast (SDXL's
/// `force_upcast`): float32.
pub(super) fn upcast_sample_dtype(c: &Components) -> Option<DType> {
    c.vae.config().force_upcast.unwrap_or(true).then_some(DType::F32)
}

/// Classifier-free guidance by batch doubling when `guidance_scale > 1` (diffusers'
/// `do_classifier_free_guidance`), else none: the SD and SDXL pipelines' rule.
pub(super) fn cfg_mode(s: &Settings, params: &RunParams) -> GuidanceMode {
    if s.guidance_scale > 1.0 {
        GuidanceMode::BatchCfg {
            scale: s.guidance_scale,
            rescale: params.guidance_rescale,
        }
    } else {
        GuidanceMode::None
    }
}

/// SD 1.x / 2.x latent → RGB factors (rows: latent channel; columns: R, G, B), the well-known fit
/// used by ComfyUI's and A1111's cheap previewers; the input is the scaled latents the UNet sees.
pub(super) const SD_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// One CLIP encoder's prompt embeddings, with the negative (or empty) prompt's first when the guidance
/// mode needs one (`StableDiffusionPipeline.encode_prompt`; the LCM pipelines call it without CFG).
pub(super) fn encode_clip(
    p: &Pipeline,
    params: &RunParams,
    s: &Settings,
    guidance: GuidanceMode,
    trace: Option<&mut Trace>,
    warnings: &mut Vec<String>,
) -> Result<Conditioning> {
    let do_cfg = guidance.needs_negative();
    let c = &**p.components();
    let device = &c.device;
    let ids = tokenize(&c.text_encoder, &params.prompt, device, warnings)?;
    let prompt_embeds = encode_sd(&c.text_encoder, &ids, params.clip_skip)?;
    let negative = if do_cfg {
        let neg = params.negative_prompt.as_deref().unwrap_or("");
        let ids = tokenize(&c.text_encoder, neg, device, warnings)?;
        // diffusers applies clip_skip to the prompt only; the negative uses last_hidden_state.
        Some(encode_sd(&c.text_encoder, &ids, None)?)
    } else {
        None
    };
    if let Some(trace) = trace {
        trace.prompt_embeds = Some(prompt_embeds.clone());
        trace.negative_prompt_embeds = negative.clone();
    }
    let pos = repeat_batch(&prompt_embeds, s.batch)?;
    let context = match &negative {
        Some(neg) => Tensor::cat(&[&repeat_batch(neg, s.batch)?, &pos], 0)?,
        None => pos,
    };
    Ok(Conditioning {
        guidance,
        cond: ModelCond::context(context),
        negative: None,
        skip_layer: None,
    })
}
