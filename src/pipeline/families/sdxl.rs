//! Stable Diffusion XL (`StableDiffusionXLPipeline`, `…Img2ImgPipeline`, `…InpaintPipeline`). Its
//! conditioning (`encode_prompt` and `_get_add_time_ids`): both text encoders' penultimate hidden states
//! concatenated, the second encoder's pooled projection, and the size/crop (or aesthetic-score) time ids.

use super::family::{
    Conditioning, Denoiser, FamilyPipeline, GuidanceMode, LatentNorm, ModelCond, RunDefaults, Settings,
};
use super::unet;
use crate::error::{Error, Result};
use crate::models::unet::AddedCond;
use crate::pipeline::components::Components;
use crate::pipeline::components::LoadContext;
use crate::pipeline::memory::RunShape;
use crate::pipeline::prompt::{repeat_batch, tokenize, TokenizedFor};
use crate::pipeline::{Pipeline, RunParams, Trace};
use crate::registry::{Family, Task};
use candle_core::{DType, Tensor, D};
use serde_json::Value;

/// The `stable-diffusion-xl` family.
pub struct StableDiffusionXl;

/// The SDXL VAE's latent → RGB factors (see `unet::SD_LATENT_RGB`).
const SDXL_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3920, 0.4054, 0.4549],
    [-0.2634, -0.0196, 0.0653],
    [0.0568, 0.1687, -0.0755],
    [-0.3112, -0.2359, -0.2076],
];

impl FamilyPipeline for StableDiffusionXl {
    fn family(&self) -> Family {
        Family::StableDiffusionXl
    }

    fn load(
        &self,
        ctx: &LoadContext<'_>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Components> {
        // diffusers' SDXL pipelines move a `force_upcast` VAE to float32 for every encode and decode of
        // a half-precision run.
        unet::load(ctx, true, progress)
    }

    fn config_keys(&self, task: Task) -> Vec<(&'static str, Value)> {
        match task {
            Task::Text2Image => vec![("force_zeros_for_empty_prompt", Value::Bool(true))],
            _ => vec![
                ("requires_aesthetics_score", Value::Bool(false)),
                ("force_zeros_for_empty_prompt", Value::Bool(true)),
            ],
        }
    }

    fn defaults(&self, task: Task) -> RunDefaults {
        let (guidance_scale, strength) = match task {
            Task::Text2Image => (5.0, 1.0),
            Task::Image2Image => (5.0, 0.3),
            Task::Inpaint => (7.5, 0.9999),
        };
        RunDefaults {
            guidance_scale,
            strength,
            num_inference_steps: 50,
        }
    }

    fn check_task(&self, c: &Components, task: Task) -> Result<()> {
        unet::check_task(c, task)
    }

    fn default_size(&self, c: &Components) -> usize {
        unet::default_size(c)
    }

    fn guidance(&self, s: &Settings, params: &RunParams) -> GuidanceMode {
        unet::cfg_mode(s, params)
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
        encode(p, params, s, guidance, trace, warnings)
    }

    fn denoiser<'a>(&self, c: &'a Components) -> Result<&'a dyn Denoiser> {
        Ok(c.unet()?)
    }

    fn latent_norm(&self, c: &Components) -> LatentNorm {
        // The SDXL pipelines apply a VAE's per-channel `latents_mean` / `latents_std` when it has them.
        let cfg = c.vae.config();
        match (&cfg.latents_mean, &cfg.latents_std) {
            (Some(mean), Some(std)) => LatentNorm::Stats {
                scaling: cfg.scaling_factor,
                mean: mean.clone(),
                std: std.clone(),
            },
            _ => LatentNorm::Scale {
                scaling: cfg.scaling_factor,
                shift: cfg.shift_factor.unwrap_or(0.0),
            },
        }
    }

    fn vae_sample_dtype(&self, c: &Components) -> Option<DType> {
        unet::upcast_sample_dtype(c)
    }

    fn preview_factors(&self) -> Option<&'static [[f32; 3]]> {
        Some(&SDXL_LATENT_RGB)
    }

    fn estimate_bytes(&self, c: &Components, run: RunShape) -> u128 {
        unet::estimate_bytes(c, run)
    }
}

/// diffusers' defaults for the refiner-style aesthetic conditioning.
const AESTHETIC_SCORE: f64 = 6.0;
const NEGATIVE_AESTHETIC_SCORE: f64 = 2.5;

/// `Some(s)` unless `s` is empty, like Python's `a or b`.
fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|v| !v.is_empty())
}

/// Encodes `[text, text_2]` with both encoders: `(hidden states concatenated, pooled projection)`.
fn encode_pair(
    p: &Pipeline,
    texts: [&str; 2],
    clip_skip: Option<usize>,
    warnings: &mut Vec<String>,
) -> Result<(Tensor, Tensor)> {
    let c = &**p.components();
    let second = c.text_encoder_2.as_ref().ok_or_else(|| {
        Error::InvalidModel("an SDXL checkpoint needs text_encoder_2 and tokenizer_2".into())
    })?;
    let mut hidden = Vec::with_capacity(2);
    let mut pooled = None;
    for (enc, text, which) in [
        (&c.text_encoder, texts[0], TokenizedFor::First),
        (second, texts[1], TokenizedFor::Second),
    ] {
        let ids = tokenize(enc, text, &c.device, warnings)?;
        let out = enc.model.forward(&ids)?;
        let n = out.hidden_states.len();
        // SDXL always uses a pre-final-norm hidden state: the penultimate, or `clip_skip` earlier.
        let idx = n.checked_sub(clip_skip.unwrap_or(0) + 2).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "clip_skip is too large for a text encoder with {} layers",
                n - 1
            ))
        })?;
        hidden.push(out.hidden_states[idx].clone());
        if which == TokenizedFor::Second {
            pooled = Some(out.pooled);
        }
    }
    Ok((
        Tensor::cat(&hidden, D::Minus1)?,
        pooled.expect("second encoder ran"),
    ))
}

/// `_get_add_time_ids`, with diffusers' checks against the UNet's `add_embedding` width.
fn time_ids(p: &Pipeline, s: &Settings, negative: bool) -> Result<Vec<f64>> {
    let c = &**p.components();
    let (h, w) = (s.height as f64, s.width as f64);
    let aesthetics = p.task() != Task::Text2Image
        && p.config()
            .get("requires_aesthetics_score")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
    let ids = if aesthetics {
        let score = if negative {
            NEGATIVE_AESTHETIC_SCORE
        } else {
            AESTHETIC_SCORE
        };
        vec![h, w, 0.0, 0.0, score]
    } else {
        vec![h, w, 0.0, 0.0, h, w]
    };
    let cfg = c.unet()?.config();
    let time_dim = cfg.addition_time_embed_dim.unwrap_or(0);
    let projection = c
        .text_encoder_2
        .as_ref()
        .map_or(0, |t| t.model.config().projection_dim.unwrap_or(0));
    let passed = time_dim * ids.len() + projection;
    let expected = cfg.projection_class_embeddings_input_dim.unwrap_or(passed);
    if expected == passed {
        return Ok(ids);
    }
    let head = format!(
        "Model expects an added time embedding vector of length {expected}, but a vector of {passed} was created."
    );
    let tail = if p.task() == Task::Text2Image {
        " The model has an incorrect config. Please check `unet.config.time_embedding_type` and \
         `text_encoder_2.config.projection_dim`."
            .to_string()
    } else if expected > passed && expected - passed == time_dim {
        format!(
            " Please make sure to enable `requires_aesthetics_score` with \
             `pipe.register_to_config(requires_aesthetics_score=True)` to make sure `aesthetic_score` {AESTHETIC_SCORE:?} \
             and `negative_aesthetic_score` {NEGATIVE_AESTHETIC_SCORE:?} is correctly used by the model."
        )
    } else if passed > expected && passed - expected == time_dim {
        format!(
            " Please make sure to disable `requires_aesthetics_score` with \
             `pipe.register_to_config(requires_aesthetics_score=False)` to make sure `target_size` ({}, {}) is \
             correctly used by the model.",
            s.height, s.width
        )
    } else {
        " The model has an incorrect config. Please check `unet.config.time_embedding_type` and \
         `text_encoder_2.config.projection_dim`."
            .to_string()
    };
    Err(Error::InvalidArgument(head + &tail))
}

/// Prompt embeddings, pooled embeddings and time ids, negative first under CFG.
fn encode(
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
    let pos_ids = time_ids(p, s, false)?;
    let neg_ids = time_ids(p, s, true)?;

    let prompt_2 = non_empty(&params.prompt_2).unwrap_or(&params.prompt);
    let (embeds, pooled) = encode_pair(p, [&params.prompt, prompt_2], params.clip_skip, warnings)?;
    let force_zeros = p
        .config()
        .get("force_zeros_for_empty_prompt")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let negative = if !do_cfg {
        None
    } else if params.negative_prompt.is_none() && force_zeros {
        Some((embeds.zeros_like()?, pooled.zeros_like()?))
    } else {
        let neg = non_empty(&params.negative_prompt).unwrap_or("");
        let neg_2 = non_empty(&params.negative_prompt_2).unwrap_or(neg);
        // The negative prompt never uses clip_skip in diffusers.
        Some(encode_pair(p, [neg, neg_2], None, warnings)?)
    };
    if let Some(trace) = trace {
        trace.prompt_embeds = Some(embeds.clone());
        trace.pooled_prompt_embeds = Some(pooled.clone());
        trace.negative_prompt_embeds = negative.as_ref().map(|n| n.0.clone());
        trace.negative_pooled_prompt_embeds = negative.as_ref().map(|n| n.1.clone());
    }
    let b = s.batch;
    let ids_row = |v: &[f64]| -> Result<Tensor> {
        let row = Tensor::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), device)?.unsqueeze(0)?;
        repeat_batch(&row, b)
    };
    let (context, text_embeds, time_ids) = match &negative {
        Some((neg, neg_pooled)) => (
            Tensor::cat(&[&repeat_batch(neg, b)?, &repeat_batch(&embeds, b)?], 0)?,
            Tensor::cat(&[&repeat_batch(neg_pooled, b)?, &repeat_batch(&pooled, b)?], 0)?,
            Tensor::cat(&[&ids_row(&neg_ids)?, &ids_row(&pos_ids)?], 0)?,
        ),
        None => (
            repeat_batch(&embeds, b)?,
            repeat_batch(&pooled, b)?,
            ids_row(&pos_ids)?,
        ),
    };
    Ok(Conditioning {
        guidance,
        cond: ModelCond {
            context,
            added: Some(AddedCond {
                text_embeds,
                time_ids,
            }),
            timestep_cond: None,
            pooled: None,
            guidance: None,
        },
        negative: None,
        skip_layer: None,
    })
}
