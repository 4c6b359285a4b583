//! Latent consistency models (`LatentConsistencyModelPipeline`, `LatentConsistencyModelImg2ImgPipeline`):
//! an SD-shaped checkpoint whose UNet has `time_cond_proj_dim`. Guidance enters as the UNet's
//! `timestep_cond` (a sinusoidal embedding of `guidance_scale − 1`), so there is no CFG batch and no
//! negative prompt; the model input is not scaled; `LCMScheduler` applies img2img's strength itself.

use super::family::{
    Conditioning, Denoiser, FamilyPipeline, GuidanceMode, LatentNorm, RunDefaults, Settings,
};
use super::unet;
use crate::error::{Error, Result};
use crate::pipeline::components::Components;
use crate::pipeline::components::LoadContext;
use crate::pipeline::memory::RunShape;
use crate::pipeline::prompt::repeat_batch;
use crate::pipeline::{Pipeline, RunParams, Trace};
use crate::registry::{Family, Task};
use crate::schedulers::SchedulerConfig;
use candle_core::{Device, Tensor};
use serde_json::Value;

/// The `lcm` family.
pub struct LatentConsistency;

impl FamilyPipeline for LatentConsistency {
    fn family(&self) -> Family {
        Family::LatentConsistency
    }

    fn load(
        &self,
        ctx: &LoadContext<'_>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Components> {
        let c = unet::load(ctx, false, progress)?;
        if c.unet()?.config().time_cond_proj_dim.is_none() {
            return Err(Error::InvalidModel(format!(
                "{}'s unet has no time_cond_proj_dim: a LatentConsistencyModelPipeline needs an LCM-distilled UNet \
                 (its guidance-scale embedding); an SD checkpoint with an LCM-LoRA runs as StableDiffusionPipeline",
                ctx.source.display_name()
            )));
        }
        Ok(c)
    }

    fn config_keys(&self, _task: Task) -> Vec<(&'static str, Value)> {
        vec![("requires_safety_checker", Value::Bool(true))]
    }

    fn defaults(&self, task: Task) -> RunDefaults {
        RunDefaults {
            guidance_scale: 8.5,
            strength: if task == Task::Image2Image { 0.8 } else { 1.0 },
            num_inference_steps: 4,
        }
    }

    fn check_task(&self, c: &Components, task: Task) -> Result<()> {
        unet::check_task(c, task)
    }

    fn check_scheduler(&self, cfg: &SchedulerConfig) -> Result<()> {
        // The LCM pipelines unpack `(prev_sample, denoised)` from every step and decode `denoised`: only
        // LCMScheduler's step returns that pair (diffusers fails on others with an unpacking error).
        if cfg.class_name != "LCMScheduler" {
            return Err(Error::InvalidArgument(format!(
                "the LatentConsistencyModel pipelines step with LCMScheduler only (they decode its `denoised` \
                 output), not {}",
                cfg.class_name
            )));
        }
        Ok(())
    }

    fn default_size(&self, c: &Components) -> usize {
        unet::default_size(c)
    }

    fn guidance(&self, _s: &Settings, _params: &RunParams) -> GuidanceMode {
        GuidanceMode::Embedded
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
        // LCMs take no negative prompt (diffusers passes `negative_prompt=None` and no CFG): the SD
        // encoding without a negative, plus the guidance-scale embedding as `timestep_cond`.
        let mut cond = unet::encode_clip(p, params, s, guidance, trace, warnings)?;
        let c = &**p.components();
        let dim = c.unet()?.config().time_cond_proj_dim.unwrap_or(0);
        cond.cond.timestep_cond = Some(guidance_scale_embedding(
            s.guidance_scale - 1.0,
            dim,
            s.batch,
            &c.device,
        )?);
        Ok(cond)
    }

    fn denoiser<'a>(&self, c: &'a Components) -> Result<&'a dyn Denoiser> {
        Ok(c.unet()?)
    }

    fn scales_model_input(&self) -> bool {
        false
    }

    fn strength_in_scheduler(&self) -> bool {
        true
    }

    fn latent_norm(&self, c: &Components) -> LatentNorm {
        // The LCM pipelines decode `denoised / scaling_factor` (no shift factor).
        LatentNorm::Scale {
            scaling: c.vae.config().scaling_factor,
            shift: 0.0,
        }
    }

    fn preview_factors(&self) -> Option<&'static [[f32; 3]]> {
        Some(&unet::SD_LATENT_RGB)
    }

    fn estimate_bytes(&self, c: &Components, run: RunShape) -> u128 {
        unet::estimate_bytes(c, run)
    }
}

/// diffusers' `get_guidance_scale_embedding(w, embedding_dim)` for `batch` copies of `w`, in float32:
/// `w·1000 · exp(−i·ln(10000)/(half − 1))` for `i < half`, then `[sin, cos]` (zero-padded to an odd
/// dimension).
fn guidance_scale_embedding(w: f64, dim: usize, batch: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    // torch: `log(tensor(10000.0)) / (half_dim - 1)` in float32, then `exp(arange(half) * -emb)`.
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let w = (w as f32) * 1000.0;
    let mut row: Vec<f32> = Vec::with_capacity(dim);
    let args: Vec<f32> = (0..half).map(|i| w * (i as f32 * -step).exp()).collect();
    row.extend(args.iter().map(|a| a.sin()));
    row.extend(args.iter().map(|a| a.cos()));
    if dim % 2 == 1 {
        row.push(0.0);
    }
    let row = Tensor::from_vec(row, (1, dim), device)?;
    repeat_batch(&row, batch)
}

#[cfg(test)]
mod tests {
    #[test]
    fn guidance_embedding_layout() {
        // w = 0: sin(0) = 0 in the first half, cos(0) = 1 in the second.
        let e = super::guidance_scale_embedding(0.0, 8, 2, &candle_core::Device::Cpu).unwrap();
        assert_eq!(e.dims(), &[2, 8]);
        let v = e.to_vec2::<f32>().unwrap();
        assert_eq!(v[1], vec![0., 0., 0., 0., 1., 1., 1., 1.]);
        // First frequency is 1: sin(1000·w).
        let e = super::guidance_scale_embedding(0.5, 7, 1, &candle_core::Device::Cpu).unwrap();
        let v = e.to_vec2::<f32>().unwrap();
        assert!((v[0][0] - 500f32.sin()).abs() < 1e-6);
        assert_eq!(v[0][6], 0.0);
    }
}
