//! Stable Diffusion 1.x / 2.x (`StableDiffusionPipeline`, `…Img2ImgPipeline`, `…InpaintPipeline`).

use super::family::{
    Conditioning, Denoiser, FamilyPipeline, GuidanceMode, LatentNorm, RunDefaults, Settings,
};
use super::unet;
use crate::error::Result;
use crate::pipeline::components::Components;
use crate::pipeline::components::LoadContext;
use crate::pipeline::memory::RunShape;
use crate::pipeline::{Pipeline, RunParams, Trace};
use crate::registry::{Family, Task};
use crate::schedulers::SchedulerConfig;
use serde_json::Value;

/// The `stable-diffusion` family.
pub struct StableDiffusion;

impl FamilyPipeline for StableDiffusion {
    fn family(&self) -> Family {
        Family::StableDiffusion
    }

    fn load(
        &self,
        ctx: &LoadContext<'_>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Components> {
        // SD pipelines run the VAE in the pipeline's dtype whatever its `force_upcast` says.
        unet::load(ctx, false, progress)
    }

    fn config_keys(&self, _task: Task) -> Vec<(&'static str, Value)> {
        vec![("requires_safety_checker", Value::Bool(true))]
    }

    fn patch_scheduler(&self, task: Task, cfg: &mut SchedulerConfig) {
        patch_legacy_scheduler(task, cfg);
    }

    fn defaults(&self, task: Task) -> RunDefaults {
        RunDefaults {
            guidance_scale: 7.5,
            strength: if task == Task::Image2Image { 0.8 } else { 1.0 },
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
        unet::encode_clip(p, params, s, guidance, trace, warnings)
    }

    fn denoiser<'a>(&self, c: &'a Components) -> Result<&'a dyn Denoiser> {
        Ok(c.unet()?)
    }

    fn latent_norm(&self, c: &Components) -> LatentNorm {
        // diffusers' SD pipelines use `scaling_factor` alone (and `shift_factor` when a VAE has one).
        let cfg = c.vae.config();
        LatentNorm::Scale {
            scaling: cfg.scaling_factor,
            shift: cfg.shift_factor.unwrap_or(0.0),
        }
    }

    fn preview_factors(&self) -> Option<&'static [[f32; 3]]> {
        Some(&unet::SD_LATENT_RGB)
    }

    fn estimate_bytes(&self, c: &Components, run: RunShape) -> u128 {
        unet::estimate_bytes(c, run)
    }
}

/// What diffusers' SD pipeline constructors do to an outdated scheduler config (diffusers also prints a
/// deprecation warning), on the scheduler object every pipeline made by `from_pipe` shares: `steps_offset`
/// becomes 1; text2img and img2img turn a `clip_sample` of true off, inpainting turns a `skip_prk_steps`
/// of false on.
pub(super) fn patch_legacy_scheduler(task: Task, cfg: &mut SchedulerConfig) {
    // `getattr(scheduler.config, key, default)`: only keys the scheduler's class has.
    let keys = crate::schedulers::class_keys(&cfg.class_name).unwrap_or_default();
    let takes = |k: &str| keys.iter().any(|(key, _)| *key == k);
    // A key the file had is rewritten; one the class filled in stays a default, which a later
    // `from_config` to another class drops (diffusers' `_use_default_values`).
    let in_file = |cfg: &mut SchedulerConfig, key: &str, value: Value| {
        if let Some(v) = cfg.raw.get_mut(key) {
            *v = value;
        }
    };
    if takes("steps_offset") && cfg.steps_offset != 1 {
        cfg.steps_offset = 1;
        in_file(cfg, "steps_offset", Value::from(1));
    }
    match task {
        Task::Inpaint if takes("skip_prk_steps") && !cfg.skip_prk_steps => {
            cfg.skip_prk_steps = true;
            in_file(cfg, "skip_prk_steps", Value::Bool(true));
        }
        Task::Text2Image | Task::Image2Image if takes("clip_sample") && cfg.clip_sample => {
            cfg.clip_sample = false;
            in_file(cfg, "clip_sample", Value::Bool(false));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sched(text: &str) -> SchedulerConfig {
        SchedulerConfig::from_json(text, "test").unwrap()
    }

    #[test]
    fn sd_constructors_patch_outdated_scheduler_configs() {
        // DDIM whose file lacks clip_sample: the class default (true) is turned off by SD text2img, and
        // stays a default (not written into the file's keys).
        let mut ddim = sched(r#"{"_class_name": "DDIMScheduler", "steps_offset": 0}"#);
        assert!(ddim.clip_sample);
        patch_legacy_scheduler(Task::Text2Image, &mut ddim);
        assert_eq!((ddim.clip_sample, ddim.steps_offset), (false, 1));
        assert_eq!(ddim.raw.get("steps_offset"), Some(&json!(1)));
        assert_eq!(ddim.raw.get("clip_sample"), None);
        // Inpainting leaves clip_sample alone but turns the Runge-Kutta warm-up off.
        let mut ddim = sched(r#"{"_class_name": "DDIMScheduler", "clip_sample": true}"#);
        patch_legacy_scheduler(Task::Inpaint, &mut ddim);
        assert!(ddim.clip_sample);
        let mut pndm = sched(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": false}"#);
        patch_legacy_scheduler(Task::Inpaint, &mut pndm);
        assert!(pndm.skip_prk_steps);
        assert_eq!(pndm.raw.get("skip_prk_steps"), Some(&json!(true)));
        // SDXL pipelines patch nothing; classes without the key are not touched.
        let mut pndm =
            sched(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": false, "steps_offset": 0}"#);
        super::super::imp(Family::StableDiffusionXl).patch_scheduler(Task::Inpaint, &mut pndm);
        assert!(!pndm.skip_prk_steps && pndm.steps_offset == 0);
        let mut euler = sched(r#"{"_class_name": "EulerDiscreteScheduler", "clip_sample": true}"#);
        patch_legacy_scheduler(Task::Text2Image, &mut euler);
        assert_eq!(
            euler.raw.get("clip_sample"),
            Some(&json!(true)),
            "Euler has no clip_sample"
        );
    }
}
