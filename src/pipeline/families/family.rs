//! The seam between the core and the families: the [`FamilyPipeline`] trait and the types it speaks
//! (settings, guidance modes, conditioning, latent normalisation).

use crate::error::{Error, Result};
use crate::models::unet::AddedCond;
use crate::models::vae::DecodeOptions;
use crate::pipeline::components::{Components, LoadContext};
use crate::pipeline::memory::RunShape;
use crate::pipeline::{Pipeline, RunParams, Trace};
use crate::registry::{Family, Task};
use crate::schedulers::SchedulerConfig;
use candle_core::{DType, Tensor};
use serde_json::Value;

/// diffusers' `__call__` defaults of one pipeline class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunDefaults {
    pub guidance_scale: f64,
    /// img2img / inpaint strength (1.0 for text2img, which ignores it).
    pub strength: f64,
    pub num_inference_steps: usize,
}

/// The model the denoising loop calls once per step (twice under a separate negative pass).
pub trait Denoiser: Sync {
    /// The model's prediction for `x` (`(batch, channels, …)`) at `t` (float32 `(batch,)` on `x`'s
    /// device: a device tensor, so a CUDA graph replays new values), in float32.
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &ModelCond) -> candle_core::Result<Tensor>;

    /// The prediction with the blocks in `skip` left out (SD3's skip-layer guidance).
    fn forward_skipping(
        &self,
        _x: &Tensor,
        _t: &Tensor,
        _cond: &ModelCond,
        _skip: &[usize],
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("this model cannot skip layers")
    }
}

/// SD3's skip-layer guidance: on the steps `i` with `steps·start < i < steps·stop`, one more call on
/// the positive conditioning with `layers` skipped, and `pred += scale · (text − skipped)`.
#[derive(Debug, Clone)]
pub struct SkipLayerGuidance {
    pub layers: Vec<usize>,
    pub scale: f64,
    pub start: f64,
    pub stop: f64,
    /// The pipeline's `num_inference_steps` the fractions are of.
    pub steps: usize,
    /// The positive conditioning alone (no CFG batch).
    pub cond: ModelCond,
}

impl SkipLayerGuidance {
    /// Whether step `i` runs the skipped-layer call (diffusers compares floats, both bounds open).
    pub fn active(&self, i: usize) -> bool {
        let (i, n) = (i as f64, self.steps as f64);
        i > n * self.start && i < n * self.stop
    }
}

/// Settings of one run after the pipeline's defaults are applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance_scale: f64,
    pub strength: f64,
    pub batch: usize,
}

/// How a family's pipeline applies guidance inside the loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GuidanceMode {
    /// No guidance: one denoiser call on the latents.
    None,
    /// Classifier-free guidance by batch doubling: one call on `cat([latents, latents])` with the
    /// conditioning `cat([negative, positive])`, then `uncond + scale·(text − uncond)` and diffusers'
    /// `rescale_noise_cfg` when `rescale > 0` (SD, SDXL).
    BatchCfg { scale: f64, rescale: f64 },
    /// Classifier-free guidance by a second call with the negative conditioning (FLUX's true CFG).
    SeparateCfg { scale: f64 },
    /// Guidance enters as model input (LCM's w-embedding, FLUX's guidance embedding): one call.
    Embedded,
}

impl GuidanceMode {
    /// Whether the conditioning carries a negative prompt.
    pub fn needs_negative(self) -> bool {
        matches!(
            self,
            GuidanceMode::BatchCfg { .. } | GuidanceMode::SeparateCfg { .. }
        )
    }
    /// Whether the denoiser's batch is doubled.
    pub fn doubles_batch(self) -> bool {
        matches!(self, GuidanceMode::BatchCfg { .. })
    }
}

/// One denoiser call's conditioning. Fields a family does not use stay `None`.
#[derive(Debug, Clone)]
pub struct ModelCond {
    /// `encoder_hidden_states`: `cat([negative, positive])` under [`GuidanceMode::BatchCfg`].
    pub context: Tensor,
    /// SDXL's `added_cond_kwargs` (text embeds and time ids).
    pub added: Option<AddedCond>,
    /// `timestep_cond`: LCM's guidance-scale embedding.
    pub timestep_cond: Option<Tensor>,
    /// FLUX's `pooled_projections` (CLIP's pooled output).
    pub pooled: Option<Tensor>,
    /// FLUX (dev)'s distilled guidance, `(batch,)` float32 (the model scales it by 1000).
    pub guidance: Option<Tensor>,
}

impl ModelCond {
    /// A conditioning of encoder hidden states alone.
    pub fn context(context: Tensor) -> Self {
        Self {
            context,
            added: None,
            timestep_cond: None,
            pooled: None,
            guidance: None,
        }
    }
}

/// How a family's pipelines resolve the output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRule {
    /// Sides of image inputs (and of every output when `round_down`) are rounded down to multiples
    /// of this.
    pub multiple: usize,
    /// Text-to-image sides that are not multiples are rounded down with diffusers' warning (FLUX),
    /// instead of refused unless they are multiples of 8 (SD, SDXL).
    pub round_down: bool,
    /// Image-to-image without `width`/`height` makes the default size, resizing the input (FLUX),
    /// instead of the input image's size.
    pub img2img_default_size: bool,
}

/// What the pipeline passes to `retrieve_timesteps` besides the step count when the caller gives no
/// schedule of their own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleArgs {
    /// The pipeline's own sigmas (FLUX: `linspace(1, 1/n, n)`).
    pub sigmas: Option<Vec<f64>>,
    /// Dynamic shifting's `mu` (FLUX: from the image's token count).
    pub mu: Option<f64>,
}

/// A run's conditioning: what the denoiser is called with, and the negative for
/// [`GuidanceMode::SeparateCfg`].
#[derive(Debug, Clone)]
pub struct Conditioning {
    pub guidance: GuidanceMode,
    pub cond: ModelCond,
    pub negative: Option<ModelCond>,
    /// SD3's skip-layer guidance, when the run asks for it (with CFG).
    pub skip_layer: Option<SkipLayerGuidance>,
}

/// How VAE latents are normalised into the denoiser's space and back.
#[derive(Debug, Clone)]
pub enum LatentNorm {
    /// `(z − shift) · scaling` (shift 0 when the VAE has none).
    Scale { scaling: f64, shift: f64 },
    /// Per-channel statistics (SDXL VAEs with `latents_mean` / `latents_std`): `(z − mean) · scaling / std`.
    Stats {
        scaling: f64,
        mean: Vec<f64>,
        std: Vec<f64>,
    },
}

impl LatentNorm {
    /// VAE latents → denoiser latents.
    pub fn normalize(&self, z: &Tensor) -> Result<Tensor> {
        match self {
            LatentNorm::Scale { scaling, shift } => {
                let z = if *shift != 0.0 { (z - *shift)? } else { z.clone() };
                crate::schedulers::mul_s(&z, *scaling as f32)
            }
            LatentNorm::Stats { scaling, mean, std } => {
                let (mean, std) = (channel_tensor(mean, z)?, channel_tensor(std, z)?);
                Ok(
                    crate::schedulers::mul_s(&z.broadcast_sub(&mean)?, *scaling as f32)?
                        .broadcast_div(&std)?,
                )
            }
        }
    }

    /// Denoiser latents → VAE latents.
    pub fn denormalize(&self, latents: &Tensor) -> Result<Tensor> {
        match self {
            LatentNorm::Scale { scaling, shift } => {
                let z = crate::schedulers::div_s(latents, *scaling as f32)?;
                Ok(if *shift != 0.0 { (z + *shift)? } else { z })
            }
            LatentNorm::Stats { scaling, mean, std } => {
                let (mean, std) = (channel_tensor(mean, latents)?, channel_tensor(std, latents)?);
                Ok(
                    crate::schedulers::div_s(&latents.broadcast_mul(&std)?, *scaling as f32)?
                        .broadcast_add(&mean)?,
                )
            }
        }
    }
}

/// Per-channel values as a `(1, c, 1, 1)` tensor on `like`'s device and dtype.
fn channel_tensor(v: &[f64], like: &Tensor) -> Result<Tensor> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, (1, n, 1, 1), like.device())?.to_dtype(like.dtype())?)
}

/// Everything a pipeline family provides. One static instance per family ([`super::imp`]); every method takes
/// the loaded components or the pipeline explicitly, so a family holds no state.
pub trait FamilyPipeline: Sync {
    /// The registry key this implements.
    fn family(&self) -> Family;

    /// Loads the component set `ctx.index` lists, telling `progress(done, total)` after each component.
    fn load(
        &self,
        ctx: &LoadContext<'_>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Components>;

    /// The config keys the pipeline class for `task` registers, with diffusers' defaults.
    fn config_keys(&self, task: Task) -> Vec<(&'static str, Value)>;

    /// What the pipeline constructor for `task` does to the (shared) scheduler config.
    fn patch_scheduler(&self, _task: Task, _cfg: &mut SchedulerConfig) {}

    /// diffusers' `__call__` defaults for `task`.
    fn defaults(&self, task: Task) -> RunDefaults;

    /// Refuses a task the loaded models cannot run, before any work.
    fn check_task(&self, c: &Components, task: Task) -> Result<()>;

    /// Refuses a scheduler the family's pipelines cannot use.
    fn check_scheduler(&self, cfg: &SchedulerConfig) -> Result<()> {
        if cfg.class_name.starts_with("FlowMatch") {
            return Err(Error::InvalidArgument(format!(
                "{} is a flow-matching scheduler; {} pipelines denoise with noise-prediction schedulers \
                 (DDIM, Euler, DPM-Solver, …)",
                cfg.class_name,
                self.family().name()
            )));
        }
        Ok(())
    }

    /// Default output side in pixels.
    fn default_size(&self, c: &Components) -> usize;

    /// How requested sizes become the output size (SD's rules unless overridden).
    fn size_rule(&self, c: &Components) -> SizeRule {
        SizeRule {
            multiple: c.vae_scale_factor(),
            round_down: false,
            img2img_default_size: false,
        }
    }

    /// The pipeline's own `sigmas` and `mu` for a run of `s` (none: the scheduler's spacing).
    fn schedule_args(&self, _c: &Components, _cfg: &SchedulerConfig, _s: &Settings) -> ScheduleArgs {
        ScheduleArgs::default()
    }

    /// Whether the pipeline's `__call__` takes custom `timesteps` (FLUX's takes only `sigmas`).
    fn accepts_custom_timesteps(&self) -> bool {
        true
    }

    /// img2img's truncation of an `n`-step schedule by `strength`: `(first timestep index, steps
    /// left)`, diffusers' `get_timesteps` (SD's form unless overridden).
    fn strength_start(&self, n: usize, strength: f64, order: usize) -> (usize, usize) {
        crate::schedulers::strength_start(n, strength, order)
    }

    /// Refuses run arguments the family's pipelines refuse (before any work). The default refuses
    /// the arguments only some families take (FLUX's and SD3's).
    fn check_params(&self, _c: &Components, _task: Task, params: &RunParams) -> Result<()> {
        refuse_others(self.family(), params, &[])
    }

    /// How guidance runs for these settings.
    fn guidance(&self, s: &Settings, params: &RunParams) -> GuidanceMode;

    /// The prompt (and negative prompt when the mode needs one) encoded into the denoiser's conditioning,
    /// repeated for the batch.
    fn encode_prompt(
        &self,
        p: &Pipeline,
        params: &RunParams,
        s: &Settings,
        guidance: GuidanceMode,
        trace: Option<&mut Trace>,
        warnings: &mut Vec<String>,
    ) -> Result<Conditioning>;

    /// The model the denoising loop calls.
    fn denoiser<'a>(&self, c: &'a Components) -> Result<&'a dyn Denoiser>;

    /// Whether the loop calls `scheduler.scale_model_input` before the denoiser (LCM pipelines do not).
    fn scales_model_input(&self) -> bool {
        true
    }

    /// Whether img2img's strength goes into the scheduler's `set_timesteps` (LCMScheduler shortens its
    /// origin schedule) instead of truncating the timesteps afterwards (diffusers' `get_timesteps`).
    fn strength_in_scheduler(&self) -> bool {
        false
    }

    /// Channels of the latents the denoiser works on.
    fn latent_channels(&self, c: &Components) -> usize {
        c.vae.config().latent_channels
    }

    /// Latent normalisation between the VAE and the denoiser.
    fn latent_norm(&self, c: &Components) -> LatentNorm;

    /// The normalisation undone before the final decode of `task`, where a pipeline's decode differs
    /// from its encode (SD3 inpainting divides by the scaling factor and adds no shift).
    fn decode_norm(&self, c: &Components, _task: Task) -> LatentNorm {
        self.latent_norm(c)
    }

    /// Denoiser latents → images as floats in `[0, 1]`, `(b, 3, h, w)`: the latent normalisation undone,
    /// the VAE decode, and diffusers' postprocess `(x / 2 + 0.5).clamp(0, 1)`. The final image and VAE
    /// previews both come from here.
    fn decode(&self, c: &Components, task: Task, latents: &Tensor, opts: DecodeOptions) -> Result<Tensor> {
        let z = self.decode_norm(c, task).denormalize(latents)?;
        let image = c.vae.decode_with(&z, opts)?;
        Ok((crate::schedulers::div_s(&image, 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    }

    /// The dtype VAE posterior samples are drawn in (`None`: the pipeline's).
    fn vae_sample_dtype(&self, _c: &Components) -> Option<DType> {
        None
    }

    /// Latent→RGB preview factors, one `[r, g, b]` row per latent channel; `None` when the family has
    /// no fitted factors (previews then need the VAE mode).
    fn preview_factors(&self) -> Option<&'static [[f32; 3]]>;

    /// A lower bound on the run's peak activation memory, in bytes (see [`crate::pipeline::memory`]).
    fn estimate_bytes(&self, c: &Components, run: RunShape) -> u128;
}

/// img2img's truncation by `strength` in the flow-matching pipelines (SD3's `get_timesteps`, which FLUX
/// copies): `init = min(n · strength, n)` stays a float and `t_start = int(max(n − init, 0))`
/// truncates, where SD's pipelines truncate `n · strength` instead.
pub fn flow_strength_start(n: usize, strength: f64, order: usize) -> (usize, usize) {
    let init = (n as f64 * strength).min(n as f64);
    let t_start = (n as f64 - init).max(0.0) as usize;
    (t_start * order, n - t_start)
}

/// Python's `a or b` for optional prompts: an empty string falls back too.
pub fn or_prompt<'a>(a: Option<&'a str>, b: &'a str) -> &'a str {
    a.filter(|s| !s.is_empty()).unwrap_or(b)
}

/// Refuses the run arguments only some families take, unless `family` takes them (`takes`).
pub fn refuse_others(family: Family, params: &RunParams, takes: &[&str]) -> Result<()> {
    let name = family.name();
    for (arg, given) in [
        ("max_sequence_length", params.max_sequence_length.is_some()),
        ("true_cfg_scale", params.true_cfg_scale.is_some()),
        ("prompt_3", params.prompt_3.is_some()),
        ("negative_prompt_3", params.negative_prompt_3.is_some()),
        ("skip_guidance_layers", params.skip_guidance_layers.is_some()),
    ] {
        if given && !takes.contains(&arg) {
            return Err(Error::InvalidArgument(format!(
                "the {name} pipelines take no {arg} (diffusers' have no such argument)"
            )));
        }
    }
    Ok(())
}
