//! Stable Diffusion 1.x / 2.x prompt conditioning (`StableDiffusionPipeline.encode_prompt`).

use super::generate::{Conditioning, Settings};
use super::prompt::{encode_sd, repeat_batch, tokenize};
use super::{Pipeline, RunParams, Trace};
use crate::error::Result;
use candle_core::Tensor;

/// Prompt embeddings, with the negative (or empty) prompt's first under CFG.
pub(super) fn encode(
    p: &Pipeline,
    params: &RunParams,
    s: &Settings,
    do_cfg: bool,
    trace: Option<&mut Trace>,
    warnings: &mut Vec<String>,
) -> Result<Conditioning> {
    let c = &*p.components;
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
    Ok(Conditioning { context, added: None })
}
