//! Pipeline families as plug-ins: everything that differs between diffusers' pipeline families lives
//! behind [`FamilyPipeline`], and the core (`generate.rs`, `denoise.rs`) calls only that trait.
//!
//! # Adding a family
//! 1. A module here with a unit struct implementing [`FamilyPipeline`]: how its component set loads
//!    (compose the loaders of `pipeline::components::Loader`), its config keys and `__call__` defaults,
//!    prompt encoding into a [`Conditioning`], its guidance mode, the [`Denoiser`] the loop calls, latent
//!    normalisation, preview factors and the memory estimate. Methods with defaults (latent packing,
//!    scheduler patches, `scale_model_input`) are overridden only where diffusers' pipeline differs.
//! 2. A [`Family`] variant with its diffusers key (`registry.rs`), and a line in [`imp`].
//! 3. Parity tests against references made with diffusers (see `scripts/references/`), through the C CLI
//!    `examples/c/generate` where the family takes no new arguments.
//!
//! Shared model parts (CLIP, T5, UNet, FLUX transformer, VAE) live in `crate::models`; a family composes them.

mod dit;
mod family;
mod flux;
mod lcm;
mod sd;
mod sd3;
mod sdxl;
mod unet;

pub use crate::pipeline::components::LoadContext;
pub use family::{
    flow_strength_start, or_prompt, refuse_others, Conditioning, Denoiser, FamilyPipeline, GuidanceMode,
    LatentNorm, ModelCond, RunDefaults, ScheduleArgs, Settings, SizeRule, SkipLayerGuidance,
};

use crate::registry::Family;

/// The implementation of `family`: the registry row points here.
pub fn imp(family: Family) -> &'static dyn FamilyPipeline {
    match family {
        Family::StableDiffusion => &sd::StableDiffusion,
        Family::StableDiffusionXl => &sdxl::StableDiffusionXl,
        Family::LatentConsistency => &lcm::LatentConsistency,
        Family::Flux => &flux::Flux,
        Family::StableDiffusion3 => &sd3::StableDiffusion3,
    }
}
