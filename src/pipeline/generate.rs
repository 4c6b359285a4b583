//! One generation, for every task and family, as diffusers' pipelines run it: resolve defaults, encode
//! the prompt, set the timesteps (truncated by `strength` for img2img/inpaint), prepare latents (with
//! the generator draws in diffusers' order), denoise, decode, paste back a cropped inpaint.

use super::conditioning::{crop_region, image_tensor, mask_tensor, overlay, round_down, CropBox};
use super::denoise::{Denoise, Guidance, NoHooks, StepHooks};
use super::{sd, sdxl, Pipeline, RunOutput, RunParams, Trace};
use crate::components::vae::DecodeOptions;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::registry::{Family, Task};
use crate::rng::Generator;
use crate::schedulers::{self, div_s, mul_s, Scheduler};
use candle_core::{DType, Device, Tensor};

/// Largest side we accept, in pixels: beyond this the activations cannot fit anyway, and refusing early
/// beats an allocation abort inside the host process.
pub(crate) const MAX_SIDE: usize = 8192;
/// Most images one run may produce.
pub(crate) const MAX_IMAGES: usize = 64;
/// Most denoising steps one run may take.
pub(crate) const MAX_STEPS: usize = 1000;

/// Settings resolved from the params and the pipeline's defaults.
pub(super) struct Settings {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance_scale: f64,
    pub strength: f64,
    pub batch: usize,
}

/// diffusers' per-pipeline defaults: `(guidance_scale, strength)`.
fn defaults(family: Family, task: Task) -> (f64, f64) {
    match (family, task) {
        (Family::StableDiffusion, Task::Text2Image) => (7.5, 1.0),
        (Family::StableDiffusion, Task::Image2Image) => (7.5, 0.8),
        (Family::StableDiffusion, Task::Inpaint) => (7.5, 1.0),
        (Family::StableDiffusionXl, Task::Text2Image) => (5.0, 1.0),
        (Family::StableDiffusionXl, Task::Image2Image) => (5.0, 0.3),
        (Family::StableDiffusionXl, Task::Inpaint) => (7.5, 0.9999),
    }
}

fn settings(p: &Pipeline, params: &RunParams) -> Result<Settings> {
    let (default_guidance, default_strength) = defaults(p.family, p.task);
    let f = p.components.vae_scale_factor();
    let (width, height) = match p.task {
        Task::Text2Image => {
            let size = p.default_size();
            let (w, h) = (params.width.unwrap_or(size), params.height.unwrap_or(size));
            if w == 0 || h == 0 || !w.is_multiple_of(8) || !h.is_multiple_of(8) {
                return Err(Error::InvalidArgument(format!(
                    "`height` and `width` have to be divisible by 8 but are {h} and {w}."
                )));
            }
            (w, h)
        }
        Task::Image2Image => {
            // img2img takes its size from the image (diffusers has no width/height here); an explicit
            // size resizes the image first.
            let img = params.image.as_ref().ok_or_else(|| need("image", p.task))?;
            let w = round_down(params.width.unwrap_or(img.width as usize), f);
            let h = round_down(params.height.unwrap_or(img.height as usize), f);
            (w, h)
        }
        Task::Inpaint => {
            let size = p.default_size();
            (
                round_down(params.width.unwrap_or(size), f),
                round_down(params.height.unwrap_or(size), f),
            )
        }
    };
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!(
            "the image is smaller than the VAE scale factor {f}: nothing to generate"
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
    let strength = params.strength.unwrap_or(default_strength);
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::InvalidArgument(format!(
            "The value of strength should in [0.0, 1.0] but is {strength}"
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
    Ok(Settings {
        width,
        height,
        steps,
        guidance_scale,
        strength,
        batch,
    })
}

fn need(what: &str, task: Task) -> Error {
    Error::InvalidArgument(format!("the {} task needs an input {what}", task.name()))
}

/// Text embeddings and extra UNet conditioning for a run, CFG-concatenated (negative first).
pub(super) struct Conditioning {
    pub context: Tensor,
    pub added: Option<crate::components::unet::AddedCond>,
}

/// Draws `shape` from the run's generator (diffusers `randn_tensor`) in the dtype diffusers draws it in
/// (`None`: the pipeline's), recording it in the trace.
fn randn(
    rng: &mut Generator,
    shape: &[usize],
    dtype: Option<DType>,
    device: &Device,
    trace: Option<&mut Trace>,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let t = Tensor::from_vec(rng.randn_in(n, dtype.unwrap_or(rng.dtype()))?, shape, device)?;
    if let Some(trace) = trace {
        trace.noise.push(t.clone());
    }
    Ok(t)
}

/// The trace to record into, when recording.
fn rec(t: &mut Trace, on: bool) -> Option<&mut Trace> {
    on.then_some(t)
}

/// Repeats a `(1, …)` tensor `n` times along the batch.
fn repeat(t: &Tensor, n: usize) -> Result<Tensor> {
    Ok(if n == 1 {
        t.clone()
    } else {
        Tensor::cat(&vec![t; n], 0)?
    })
}

/// `vae.encode(image).latent_dist.sample(generator) · scaling_factor` (diffusers `_encode_vae_image`).
fn encode_image(
    p: &Pipeline,
    image: &Tensor,
    vae_opts: DecodeOptions,
    rng: &mut Generator,
    trace: Option<&mut Trace>,
) -> Result<Tensor> {
    let vae = &p.components.vae;
    let dist = vae.encode_with(image, vae_opts)?;
    // diffusers samples in the VAE's dtype: SDXL pipelines move a `force_upcast` VAE to float32 before
    // encoding, SD pipelines keep it in the pipeline's dtype.
    let upcast = p.family == Family::StableDiffusionXl && vae.config().force_upcast.unwrap_or(true);
    let noise = randn(
        rng,
        dist.mean.dims(),
        upcast.then_some(DType::F32),
        image.device(),
        trace,
    )?;
    let latents = dist.sample_with(&noise)?;
    let cfg = vae.config();
    if let Some((mean, std)) = latent_stats(p, latents.device())? {
        // SDXL-family VAEs with per-channel statistics: (z − mean) · scaling / std.
        return Ok(mul_s(&latents.broadcast_sub(&mean)?, cfg.scaling_factor as f32)?.broadcast_div(&std)?);
    }
    let latents = match cfg.shift_factor {
        Some(shift) => (latents - shift)?,
        None => latents,
    };
    mul_s(&latents, cfg.scaling_factor as f32)
}

/// The VAE's per-channel `latents_mean` / `latents_std` as `(1, c, 1, 1)` tensors, which only the SDXL
/// pipelines apply (diffusers' SD pipelines ignore them).
fn latent_stats(p: &Pipeline, device: &Device) -> Result<Option<(Tensor, Tensor)>> {
    let cfg = p.components.vae.config();
    match (&cfg.latents_mean, &cfg.latents_std, p.family) {
        (Some(mean), Some(std), Family::StableDiffusionXl) => {
            let t = |v: &Vec<f64>| -> Result<Tensor> {
                let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                let n = v.len();
                Ok(Tensor::from_vec(v, (1, n, 1, 1), device)?)
            };
            Ok(Some((t(mean)?, t(std)?)))
        }
        _ => Ok(None),
    }
}

/// Four-channel inpainting: after each step, everything outside the mask is replaced by the original
/// image's latents noised to the next timestep (clean at the last step).
struct BlendHooks {
    image_latents: Tensor,
    noise: Tensor,
    mask: Tensor,
    timesteps: Vec<f64>,
}

impl StepHooks for BlendHooks {
    fn after_step(&mut self, i: usize, latents: Tensor, scheduler: &dyn Scheduler) -> Result<Tensor> {
        let proper = match self.timesteps.get(i + 1) {
            Some(&next) => scheduler.add_noise(&self.image_latents, &self.noise, next)?,
            None => self.image_latents.clone(),
        };
        let keep = (1.0 - &self.mask)?;
        Ok((keep.broadcast_mul(&proper)? + self.mask.broadcast_mul(&latents)?)?)
    }
}

/// Nine-channel inpainting UNets take the mask and the masked image's latents as extra input channels.
struct ExtraChannels(Tensor);

impl StepHooks for ExtraChannels {
    fn extra_unet_channels(&self) -> Option<&Tensor> {
        Some(&self.0)
    }
}

pub(super) fn run(
    p: &Pipeline,
    params: &RunParams,
    progress: &mut super::control::RunControl<'_>,
    trace: &mut Trace,
    trace_on: bool,
) -> Result<RunOutput> {
    let c = &*p.components;
    let device = &c.device;
    let unet_in = c.unet.config().in_channels;
    let latent_ch = c.vae.config().latent_channels;
    let inpaint_unet = unet_in == 2 * latent_ch + 1;
    match p.task {
        Task::Text2Image | Task::Image2Image if unet_in != latent_ch => {
            return Err(Error::Unsupported(format!(
                "the UNet of this checkpoint takes {unet_in} input channels (an inpainting UNet), so it cannot run \
                 {}; load it for the inpaint task instead (diffusers fails here with a tensor shape error)",
                p.task.name()
            )))
        }
        Task::Inpaint if unet_in != latent_ch && !inpaint_unet => {
            return Err(Error::Unsupported(format!(
                "the UNet takes {unet_in} input channels; inpainting needs {latent_ch} (blending) or {} (mask + \
                 masked image)",
                2 * latent_ch + 1
            )))
        }
        _ => {}
    }
    let s = settings(p, params)?;
    // The run's scheduler (the checkpoint's, or the one `params.scheduler` names), checked before any work.
    let scheduler_config = schedulers::select(
        &c.scheduler(),
        params.scheduler.as_deref(),
        params.scheduler_config.as_ref(),
    )?;
    let mut warnings = Vec::new();
    let do_cfg = s.guidance_scale > 1.0;
    // Images built by hand through the public fields may disagree with their size; the crops index by it.
    for img in [&params.image, &params.mask].into_iter().flatten() {
        img.validate()?;
    }
    // Refuse runs whose activations cannot fit before allocating anything (an abort would take the host down).
    crate::memory::check_run(
        c,
        crate::memory::RunShape {
            width: s.width,
            height: s.height,
            batch: s.batch,
            cfg: do_cfg,
            vae: params.vae_options(),
        },
    )?;

    // 1. Prompt conditioning.
    let cond = match p.family {
        Family::StableDiffusion => sd::encode(p, params, &s, do_cfg, rec(trace, trace_on), &mut warnings)?,
        Family::StableDiffusionXl => {
            sdxl::encode(p, params, &s, do_cfg, rec(trace, trace_on), &mut warnings)?
        }
    };

    // 2. Timesteps, truncated by strength for img2img / inpaint (diffusers `get_timesteps`).
    let mut scheduler = schedulers::build(&scheduler_config)?;
    scheduler.set_timesteps(s.steps)?;
    let mut timesteps = scheduler.timesteps().to_vec();
    if p.task != Task::Text2Image {
        let (start, remaining) = schedulers::strength_start(s.steps, s.strength, scheduler.order());
        if remaining < 1 || start >= timesteps.len() {
            return Err(Error::InvalidArgument(format!(
                "After adjusting the num_inference_steps by strength parameter: {}, the number of pipeline steps is \
                 {remaining} which is < 1 and not appropriate for this pipeline.",
                s.strength
            )));
        }
        timesteps.drain(..start);
        scheduler.set_begin_index(start);
    }

    // 3. Latents (and the inpaint mask), drawing from the generator in diffusers' order.
    let mut rng = Generator::new(params.rng, params.seed, device, p.components.dtype);
    let f = c.vae_scale_factor();
    let shape = [s.batch, latent_ch, s.height / f, s.width / f];
    let mut crop_box: Option<CropBox> = None;
    let (latents, mut hooks): (Tensor, Box<dyn StepHooks>) = match p.task {
        Task::Text2Image => {
            let noise = randn(&mut rng, &shape, None, device, rec(trace, trace_on))?;
            (
                mul_s(&noise, scheduler.init_noise_sigma() as f32)?,
                Box::new(NoHooks),
            )
        }
        Task::Image2Image => {
            let img = params.image.as_ref().ok_or_else(|| need("image", p.task))?;
            let image = image_tensor(img, s.width, s.height, None, device)?;
            let init = repeat(
                &encode_image(p, &image, params.vae_options(), &mut rng, rec(trace, trace_on))?,
                s.batch,
            )?;
            let noise = randn(&mut rng, init.dims(), None, device, rec(trace, trace_on))?;
            (
                scheduler.add_noise(&init, &noise, timesteps[0])?,
                Box::new(NoHooks),
            )
        }
        Task::Inpaint => {
            let img = params.image.as_ref().ok_or_else(|| need("image", p.task))?;
            let mask_img = params.mask.as_ref().ok_or_else(|| need("mask", p.task))?;
            if let Some(pad) = params.padding_mask_crop {
                crop_box = Some(crop_region(mask_img, s.width, s.height, pad)?);
            }
            let image = image_tensor(img, s.width, s.height, crop_box, device)?;
            let mask = mask_tensor(mask_img, s.width, s.height, crop_box, device)?;
            let strength_max = s.strength == 1.0;
            let image_latents = if !inpaint_unet || !strength_max {
                Some(repeat(
                    &encode_image(p, &image, params.vae_options(), &mut rng, rec(trace, trace_on))?,
                    s.batch,
                )?)
            } else {
                None
            };
            let noise = randn(&mut rng, &shape, None, device, rec(trace, trace_on))?;
            let latents = match (&image_latents, strength_max) {
                (Some(il), false) => scheduler.add_noise(il, &noise, timesteps[0])?,
                _ => mul_s(&noise, scheduler.init_noise_sigma() as f32)?,
            };
            // The masked image: pixels to repaint set to 0 (mid-grey in [-1, 1] terms).
            let keep = mask.lt(0.5)?.to_dtype(image.dtype())?;
            let masked_image = image.broadcast_mul(&keep)?;
            let mask_latent = crate::components::nn::nearest_resize(&mask, s.height / f, s.width / f)?;
            let masked_latents = repeat(
                &encode_image(
                    p,
                    &masked_image,
                    params.vae_options(),
                    &mut rng,
                    rec(trace, trace_on),
                )?,
                s.batch,
            )?;
            let mask_latent = repeat(&mask_latent, s.batch)?;
            let hooks: Box<dyn StepHooks> = if inpaint_unet {
                let extra = Tensor::cat(&[&mask_latent, &masked_latents], 1)?;
                let extra = if do_cfg {
                    Tensor::cat(&[&extra, &extra], 0)?
                } else {
                    extra
                };
                Box::new(ExtraChannels(extra))
            } else {
                Box::new(BlendHooks {
                    image_latents: image_latents.expect("encoded for 4-channel UNets"),
                    noise,
                    mask: mask_latent,
                    timesteps: timesteps.clone(),
                })
            };
            (latents, hooks)
        }
    };

    // 4. Denoise.
    let guidance = do_cfg.then_some(Guidance {
        scale: s.guidance_scale,
        rescale: params.guidance_rescale,
    });
    let denoise = Denoise {
        unet: &c.unet,
        context: &cond.context,
        added: cond.added.as_ref(),
        guidance,
        timesteps: &timesteps,
    };
    let latents = denoise.run(
        latents,
        scheduler.as_mut(),
        &mut rng,
        hooks.as_mut(),
        progress,
        rec(trace, trace_on),
    )?;

    // 5. Decode, and paste a cropped inpaint back into the original.
    let image = decode(p, &latents, params.vae_options(), rec(trace, trace_on))?;
    let mut images = Image::from_tensor01(&image, params.output_channels)?;
    if let (Some(b), Some(orig), Some(mask)) = (crop_box, &params.image, &params.mask) {
        images = images
            .iter()
            .map(|g| overlay(orig, mask, g, b, params.output_channels))
            .collect::<Result<_>>()?;
    }
    Ok(RunOutput { images, warnings })
}

/// VAE decode of final latents and diffusers' postprocess: `(x / 2 + 0.5).clamp(0, 1)`.
fn decode(
    p: &Pipeline,
    latents: &Tensor,
    vae_opts: DecodeOptions,
    trace: Option<&mut Trace>,
) -> Result<Tensor> {
    let vae = &p.components.vae;
    let cfg = vae.config();
    let z = if let Some((mean, std)) = latent_stats(p, latents.device())? {
        div_s(&latents.broadcast_mul(&std)?, cfg.scaling_factor as f32)?.broadcast_add(&mean)?
    } else {
        let z = div_s(latents, cfg.scaling_factor as f32)?;
        match cfg.shift_factor {
            Some(shift) => (z + shift)?,
            None => z,
        }
    };
    let image = vae.decode_with(&z, vae_opts)?;
    let image = (div_s(&image, 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    if let Some(trace) = trace {
        trace.image = Some(image.clone());
    }
    Ok(image)
}
