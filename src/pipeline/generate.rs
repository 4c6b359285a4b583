//! One generation, for every task and family, as diffusers' pipelines run it: resolve defaults, encode
//! the prompt, set the timesteps (truncated by `strength` for img2img/inpaint), prepare latents (with
//! the generator draws in diffusers' order), denoise, decode, paste back a cropped inpaint.

use super::conditioning::{crop_region, image_tensor, mask_tensor, overlay, round_down, CropBox};
use super::denoise::{Denoise, NoHooks, StepHooks};
use super::families::{FamilyPipeline, Settings};
use super::{Pipeline, RunOutput, RunParams, Trace};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::models::vae::DecodeOptions;
use crate::registry::Task;
use crate::rng::Generator;
use crate::schedulers::{self, mul_s, Scheduler};
use candle_core::{DType, Device, Tensor};

/// Largest side we accept, in pixels: beyond this the activations cannot fit anyway, and refusing early
/// beats an allocation abort inside the host process.
pub(crate) const MAX_SIDE: usize = 8192;
/// Most images one run may produce.
pub(crate) const MAX_IMAGES: usize = 64;
/// Most denoising steps one run may take.
pub(crate) const MAX_STEPS: usize = 1000;

fn settings(
    p: &Pipeline,
    fam: &dyn FamilyPipeline,
    params: &RunParams,
    warnings: &mut Vec<String>,
) -> Result<Settings> {
    let defaults = fam.defaults(p.task);
    let rule = fam.size_rule(&p.components);
    let f = rule.multiple;
    let (width, height) = match p.task {
        _ if rule.round_down => {
            // FLUX: every task makes the given (or default) size, rounded down to whole packed latents
            // with diffusers' warning; img2img resizes its input to it.
            if p.task == Task::Image2Image && params.image.is_none() {
                return Err(need("image", p.task));
            }
            let size = p.default_size();
            let (w, h) = (params.width.unwrap_or(size), params.height.unwrap_or(size));
            if !w.is_multiple_of(f) || !h.is_multiple_of(f) {
                warnings.push(format!(
                    "`height` and `width` have to be divisible by {f} but are {h} and {w}. Dimensions will be \
                     resized accordingly"
                ));
            }
            (round_down(w, f), round_down(h, f))
        }
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
            let (dw, dh) = if rule.img2img_default_size {
                (p.default_size(), p.default_size())
            } else {
                (img.width as usize, img.height as usize)
            };
            let w = round_down(params.width.unwrap_or(dw), f);
            let h = round_down(params.height.unwrap_or(dh), f);
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
    // Custom timesteps or sigmas set the step count, as in diffusers' `retrieve_timesteps`.
    let custom = params.timesteps.as_ref().or(params.sigmas.as_ref()).map(Vec::len);
    let steps = custom
        .or(params.num_inference_steps)
        .or(p.run_defaults.num_inference_steps)
        .unwrap_or(defaults.num_inference_steps);
    if steps == 0 || steps > MAX_STEPS {
        return Err(Error::InvalidArgument(format!(
            "num_inference_steps must be 1..={MAX_STEPS}, not {steps}"
        )));
    }
    let guidance_scale = (params.guidance_scale)
        .or(p.run_defaults.guidance_scale)
        .unwrap_or(defaults.guidance_scale);
    if !guidance_scale.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "guidance_scale must be a finite number, not {guidance_scale}"
        )));
    }
    let strength = (params.strength)
        .or(p.run_defaults.strength)
        .unwrap_or(defaults.strength);
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

/// `vae.encode(image).latent_dist.sample(generator)`, normalised into the denoiser's latent space
/// (diffusers `_encode_vae_image`).
fn encode_image(
    p: &Pipeline,
    fam: &dyn FamilyPipeline,
    image: &Tensor,
    vae_opts: DecodeOptions,
    rng: &mut Generator,
    trace: Option<&mut Trace>,
) -> Result<Tensor> {
    let c = &*p.components;
    let dist = c.vae.encode_with(image, vae_opts)?;
    // diffusers samples in the VAE's dtype: SDXL pipelines move a `force_upcast` VAE to float32 before
    // encoding, SD pipelines keep it in the pipeline's dtype.
    let noise = randn(
        rng,
        dist.mean.dims(),
        fam.vae_sample_dtype(c),
        image.device(),
        trace,
    )?;
    let latents = dist.sample_with(&noise)?;
    fam.latent_norm(c).normalize(&latents)
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
    let fam = p.family_impl();
    let c = &*p.components;
    let device = &c.device;
    fam.check_task(c, p.task)?;
    fam.check_params(c, p.task, params)?;
    if params.timesteps.is_some() && !fam.accepts_custom_timesteps() {
        return Err(Error::InvalidArgument(format!(
            "the {} pipelines take custom `sigmas`, not `timesteps`",
            fam.family().name()
        )));
    }
    let mut warnings = Vec::new();
    let s = settings(p, fam, params, &mut warnings)?;
    // The run's scheduler (the checkpoint's, or the one `params.scheduler` names), checked before any work.
    let scheduler_config = schedulers::select(
        &c.scheduler(),
        params.scheduler.as_deref(),
        params.scheduler_config.as_ref(),
    )?;
    fam.check_scheduler(&scheduler_config)?;
    let guidance = fam.guidance(&s, params);
    // Images built by hand through the public fields may disagree with their size; the crops index by it.
    for img in [&params.image, &params.mask].into_iter().flatten() {
        img.validate()?;
    }
    // Refuse runs whose activations cannot fit before allocating anything (an abort would take the host down).
    let shape = crate::pipeline::memory::RunShape {
        width: s.width,
        height: s.height,
        batch: s.batch,
        cfg: guidance.doubles_batch(),
        vae: params.vae_options(),
    };
    crate::pipeline::memory::check_run(
        shape,
        fam.estimate_bytes(c, shape),
        c.pending_weight_bytes() as u128,
        device.is_cpu(),
    )?;

    // 1. Prompt conditioning.
    let cond = fam.encode_prompt(p, params, &s, guidance, rec(trace, trace_on), &mut warnings)?;

    // 2. Timesteps, truncated by strength for img2img / inpaint (diffusers `get_timesteps`), unless the
    //    family's scheduler takes the strength itself.
    // The scheduler the caller chose or configured: its bad values are the caller's argument errors.
    let caller_chose = params.scheduler.is_some()
        || params
            .scheduler_config
            .as_ref()
            .is_some_and(|v| v.as_object().is_some_and(|m| !m.is_empty()));
    let blame = |e: Error| {
        if caller_chose {
            schedulers::caller_error(e)
        } else {
            e
        }
    };
    let mut scheduler = schedulers::build(&scheduler_config).map_err(blame)?;
    let img2img_like = p.task != Task::Text2Image;
    let strength_in_scheduler = img2img_like && fam.strength_in_scheduler();
    let steps = if strength_in_scheduler {
        // LCM img2img: `set_timesteps(n, strength=…)` (custom timesteps are cut by strength there too;
        // custom sigmas get the scheduler's refusal).
        let custom = params.timesteps.is_some() || params.sigmas.is_some();
        scheduler
            .set_timesteps_with(&schedulers::TimestepRequest {
                num_inference_steps: (!custom).then_some(s.steps),
                timesteps: params.timesteps.as_deref(),
                sigmas: params.sigmas.as_deref(),
                mu: None,
                strength: Some(s.strength),
            })
            .map_err(blame)?;
        scheduler.num_timesteps()
    } else {
        // The pipeline's own sigmas (FLUX) unless the caller gave a schedule; its `mu` either way.
        let own = fam.schedule_args(c, &scheduler_config, &s);
        let sigmas = params.sigmas.as_deref().or(own.sigmas.as_deref());
        schedulers::retrieve_timesteps(
            scheduler.as_mut(),
            Some(s.steps),
            params.timesteps.as_deref(),
            sigmas,
            own.mu,
        )
        .map_err(blame)?
    };
    let mut timesteps = scheduler.timesteps().to_vec();
    if img2img_like && !strength_in_scheduler {
        let (start, remaining) = fam.strength_start(steps, s.strength, scheduler.order());
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
    if timesteps.is_empty() {
        return Err(Error::InvalidArgument(
            "the schedule has no timesteps left to run".into(),
        ));
    }

    // 3. Latents (and the inpaint mask), drawing from the generator in diffusers' order.
    let mut rng = Generator::new(params.rng, params.seed, device, p.components.dtype);
    let f = c.vae_scale_factor();
    let latent_ch = fam.latent_channels(c);
    let inpaint_unet = c
        .unet
        .as_ref()
        .is_some_and(|u| u.config().in_channels == 2 * latent_ch + 1);
    let do_cfg = guidance.doubles_batch();
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
                &encode_image(
                    p,
                    fam,
                    &image,
                    params.vae_options(),
                    &mut rng,
                    rec(trace, trace_on),
                )?,
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
                    &encode_image(
                        p,
                        fam,
                        &image,
                        params.vae_options(),
                        &mut rng,
                        rec(trace, trace_on),
                    )?,
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
            let mask_latent = crate::layers::nn::nearest_resize(&mask, s.height / f, s.width / f)?;
            let masked_latents = repeat(
                &encode_image(
                    p,
                    fam,
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
    let denoise = Denoise {
        denoiser: fam.denoiser(c)?,
        cond: &cond,
        scale_input: fam.scales_model_input(),
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
    let image = decode(p, fam, &latents, params.vae_options(), rec(trace, trace_on))?;
    let mut images = Image::from_tensor01(&image, params.output_channels)?;
    if let (Some(b), Some(orig), Some(mask)) = (crop_box, &params.image, &params.mask) {
        images = images
            .iter()
            .map(|g| overlay(orig, mask, g, b, params.output_channels))
            .collect::<Result<_>>()?;
    }
    Ok(RunOutput { images, warnings })
}

/// The family's decode of the final latents (see `FamilyPipeline::decode`), recorded in the trace.
fn decode(
    p: &Pipeline,
    fam: &dyn FamilyPipeline,
    latents: &Tensor,
    vae_opts: DecodeOptions,
    trace: Option<&mut Trace>,
) -> Result<Tensor> {
    let image = fam.decode(&p.components, p.task, latents, vae_opts)?;
    if let Some(trace) = trace {
        trace.image = Some(image.clone());
    }
    Ok(image)
}
