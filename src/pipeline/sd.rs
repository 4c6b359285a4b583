//! Stable Diffusion 1.x / 2.x: `StableDiffusionPipeline` (and, as they land, its img2img and inpaint
//! siblings) as named steps over the shared loop.

use super::denoise::{Denoise, Guidance, NoHooks};
use super::prompt::{encode_sd, repeat_batch, tokenize};
use super::{Pipeline, RunOutput, RunParams, Trace};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::registry::Task;
use crate::rng::TorchCpuGenerator;
use crate::schedulers::{self, div_s, mul_s};
use candle_core::Tensor;

/// Largest side we accept, in pixels: beyond this the attention and activations cannot fit anyway,
/// and refusing early beats an allocation abort inside the host process.
pub(crate) const MAX_SIDE: usize = 8192;
/// Most images one run may produce.
pub(crate) const MAX_IMAGES: usize = 64;
/// Most denoising steps one run may take.
pub(crate) const MAX_STEPS: usize = 1000;

/// Settings resolved from the params and the pipeline's defaults.
pub(super) struct Resolved {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance_scale: f64,
    pub batch: usize,
}

/// diffusers' defaults and `check_inputs`, with our size limits.
pub(super) fn resolve(p: &Pipeline, params: &RunParams, default_guidance: f64) -> Result<Resolved> {
    let size = p.default_size();
    let width = params.width.unwrap_or(size);
    let height = params.height.unwrap_or(size);
    if width == 0 || height == 0 || !width.is_multiple_of(8) || !height.is_multiple_of(8) {
        return Err(Error::InvalidArgument(format!(
            "`height` and `width` have to be divisible by 8 but are {height} and {width}."
        )));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::InvalidArgument(format!(
            "{width}x{height} exceeds the largest supported side of {MAX_SIDE} pixels"
        )));
    }
    let steps = params.num_inference_steps.unwrap_or(50);
    if steps == 0 || steps > MAX_STEPS {
        return Err(Error::InvalidArgument(format!(
            "num_inference_steps must be 1..={MAX_STEPS}, not {steps}"
        )));
    }
    let guidance_scale = params.guidance_scale.unwrap_or(default_guidance);
    if !guidance_scale.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "guidance_scale must be a finite number, not {guidance_scale}"
        )));
    }
    if !(0.0..=1.0).contains(&params.guidance_rescale) {
        return Err(Error::InvalidArgument(format!(
            "guidance_rescale must be in [0, 1], not {}",
            params.guidance_rescale
        )));
    }
    let batch = params.num_images_per_prompt;
    if batch == 0 || batch > MAX_IMAGES {
        return Err(Error::InvalidArgument(format!(
            "num_images_per_prompt must be 1..={MAX_IMAGES}, not {batch}"
        )));
    }
    if !matches!(params.output_channels, 3 | 4) {
        return Err(Error::InvalidArgument(format!(
            "output_channels must be 3 (RGB) or 4 (RGBA), not {}",
            params.output_channels
        )));
    }
    Ok(Resolved {
        width,
        height,
        steps,
        guidance_scale,
        batch,
    })
}

/// Draws `shape` from the run's generator (diffusers `randn_tensor`), recording it in the trace.
pub(super) fn randn(
    rng: &mut TorchCpuGenerator,
    shape: &[usize],
    device: &candle_core::Device,
    trace: &mut Trace,
    trace_on: bool,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let t = Tensor::from_vec(rng.randn(n), shape, device)?;
    if trace_on {
        trace.noise.push(t.clone());
    }
    Ok(t)
}

/// VAE decode of final latents and diffusers' postprocess: `(x / 2 + 0.5).clamp(0, 1)`.
pub(super) fn decode(p: &Pipeline, latents: &Tensor, trace: &mut Trace, trace_on: bool) -> Result<Tensor> {
    let vae = &p.components.vae;
    let cfg = vae.config();
    let mut z = div_s(latents, cfg.scaling_factor as f32)?;
    if let Some(shift) = cfg.shift_factor {
        z = (z + shift)?;
    }
    let image = vae.decode(&z)?;
    let image = (div_s(&image, 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    if trace_on {
        trace.image = Some(image.clone());
    }
    Ok(image)
}

pub(super) fn run(
    p: &Pipeline,
    params: &RunParams,
    progress: &mut dyn FnMut(usize, usize) -> bool,
    trace: &mut Trace,
    trace_on: bool,
) -> Result<RunOutput> {
    if p.task != Task::Text2Image {
        return Err(Error::Unsupported(format!(
            "{} runs are not implemented yet in this build",
            p.task.name()
        )));
    }
    let c = &*p.components;
    let unet_in = c.unet.config().in_channels;
    let latent_ch = c.vae.config().latent_channels;
    if unet_in != latent_ch {
        return Err(Error::Unsupported(format!(
            "the UNet of this checkpoint takes {unet_in} input channels (an inpainting UNet), so it cannot \
             run {}; load it for the inpaint task instead (diffusers fails here with a tensor shape error)",
            p.task.name()
        )));
    }
    let r = resolve(p, params, 7.5)?;
    let device = &c.device;
    let mut warnings = Vec::new();

    // 1. Prompt embeddings (negative first under CFG, as diffusers concatenates them).
    let do_cfg = r.guidance_scale > 1.0;
    let ids = tokenize(&c.text_encoder, &params.prompt, device, &mut warnings)?;
    let prompt_embeds = encode_sd(&c.text_encoder, &ids, params.clip_skip)?;
    let negative = if do_cfg {
        let neg = params.negative_prompt.as_deref().unwrap_or("");
        let ids = tokenize(&c.text_encoder, neg, device, &mut warnings)?;
        // diffusers applies clip_skip to the prompt only; the negative uses last_hidden_state.
        Some(encode_sd(&c.text_encoder, &ids, None)?)
    } else {
        None
    };
    if trace_on {
        trace.prompt_embeds = Some(prompt_embeds.clone());
        trace.negative_prompt_embeds = negative.clone();
    }
    let pos = repeat_batch(&prompt_embeds, r.batch)?;
    let context = match &negative {
        Some(neg) => Tensor::cat(&[&repeat_batch(neg, r.batch)?, &pos], 0)?,
        None => pos,
    };

    // 2. Timesteps.
    let mut scheduler = schedulers::build(&c.scheduler)?;
    scheduler.set_timesteps(r.steps)?;
    let timesteps = scheduler.timesteps().to_vec();

    // 3. Initial latents from the run's generator.
    let mut rng = TorchCpuGenerator::new(params.seed);
    let f = c.vae_scale_factor();
    let shape = [r.batch, latent_ch, r.height / f, r.width / f];
    let noise = randn(&mut rng, &shape, device, trace, trace_on)?;
    let latents = mul_s(&noise, scheduler.init_noise_sigma() as f32)?;

    // 4. Denoise.
    let guidance = do_cfg.then_some(Guidance {
        scale: r.guidance_scale,
        rescale: params.guidance_rescale,
    });
    let denoise = Denoise {
        unet: &c.unet,
        context: &context,
        added: None,
        guidance,
        timesteps: &timesteps,
    };
    let latents = denoise.run(
        latents,
        scheduler.as_mut(),
        &mut rng,
        &mut NoHooks,
        progress,
        trace_on.then_some(&mut *trace),
    )?;

    // 5. Decode.
    let image = decode(p, &latents, trace, trace_on)?;
    Ok(RunOutput {
        images: Image::from_tensor01(&image, params.output_channels)?,
        warnings,
    })
}
