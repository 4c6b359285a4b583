//! What a loaded pipeline is, for hosts that show or check it (`ap_pipeline_info`), and the registry's
//! families (`ap_supported_families`). Serialisable, so the C ABI can hand it out as JSON, which
//! grows by adding keys without breaking anyone.
//!
//! Built only from `Pipeline`'s public accessors, so it follows the pipeline's internals wherever
//! they move.

use super::Pipeline;
use crate::registry::{self, Task};
use candle_core::{DType, DeviceLocation};
use serde::Serialize;

/// A loaded pipeline: its diffusers identity, defaults, placement and components.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineInfo {
    /// diffusers' family key in the AutoPipeline mappings, e.g. `stable-diffusion-xl`.
    pub family: String,
    /// The diffusers pipeline class, e.g. `StableDiffusionXLImg2ImgPipeline`.
    pub class_name: String,
    /// `text2img`, `img2img` or `inpaint`.
    pub task: String,
    /// Output size when a run leaves width / height at 0 (`unet.sample_size × vae_scale_factor`).
    pub default_width: usize,
    pub default_height: usize,
    /// diffusers' `__call__` defaults of this pipeline class (`num_inference_steps`, `guidance_scale`,
    /// and `strength`, which text2img ignores).
    pub default_steps: usize,
    pub default_guidance_scale: f64,
    pub default_strength: f64,
    /// Channels of the latents the denoiser works on.
    pub latent_channels: usize,
    /// Pixels per latent along each side.
    pub vae_scale_factor: usize,
    /// `cpu`, `cuda:N` or `metal:N`.
    pub device: String,
    /// The precision the pipeline was loaded in (`f32`, `f16`, `bf16`).
    pub dtype: String,
    /// The class of the checkpoint's scheduler (a run may switch it).
    pub scheduler: String,
    /// Its components in diffusers' order, with their diffusers class.
    pub components: Vec<ComponentInfo>,
}

/// One component of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentInfo {
    /// diffusers' attribute name (`unet`, `vae`, `text_encoder`, …).
    pub name: String,
    /// Its diffusers / transformers class.
    pub class: String,
    /// The precision it computes in, for models (the VAE may differ from the pipeline: an SDXL VAE
    /// with `force_upcast` stays float32); `null` for tokenizers and the scheduler.
    pub dtype: Option<String>,
    /// Bytes of its weight files (`null` for tokenizers and the scheduler).
    pub bytes: Option<u64>,
}

/// One family of diffusers' AutoPipeline mappings, with our status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FamilyInfo {
    /// diffusers' family key.
    pub family: String,
    /// The pipeline class per task (`text2img`, `img2img`, `inpaint`); `null` where diffusers has none.
    pub text2img: Option<String>,
    pub img2img: Option<String>,
    pub inpaint: Option<String>,
    /// `supported` when this library runs the family, else `not supported yet`.
    pub status: String,
}

fn dtype_name(d: DType) -> String {
    d.as_str().to_string()
}

impl Pipeline {
    /// What this pipeline is; see [`PipelineInfo`].
    pub fn info(&self) -> PipelineInfo {
        let c = self.components();
        let fam = self.family_impl();
        let scheduler = c.scheduler().class_name;
        // The models in load order (text encoders, denoiser, VAE), each followed by its tokenizer where
        // it has one, then the scheduler.
        let mut components = Vec::new();
        for part in c.parts() {
            let dtype = match part.name.as_str() {
                "vae" => c.vae.dtype(),
                _ => c.dtype,
            };
            components.push(ComponentInfo {
                name: part.name.clone(),
                class: part.class.clone(),
                dtype: Some(dtype_name(dtype)),
                bytes: Some(part.file_bytes),
            });
            // Each text encoder's tokenizer: CLIP's, or T5's for the T5 encoder (FLUX's second, SD3's
            // third).
            let t5 = part.class.starts_with("T5");
            let tokenizer = match part.name.as_str() {
                "text_encoder" => Some("tokenizer"),
                "text_encoder_2" => Some("tokenizer_2"),
                "text_encoder_3" => Some("tokenizer_3"),
                _ => None,
            };
            if let Some(t) = tokenizer {
                let class = if t5 { "T5TokenizerFast" } else { "CLIPTokenizer" };
                components.push(ComponentInfo {
                    name: t.into(),
                    class: class.into(),
                    dtype: None,
                    bytes: None,
                });
            }
        }
        components.push(ComponentInfo {
            name: "scheduler".into(),
            class: scheduler.clone(),
            dtype: None,
            bytes: None,
        });
        let defaults = fam.defaults(self.task());
        let size = self.default_size();
        PipelineInfo {
            family: self.family().name().into(),
            class_name: self.class_name().into(),
            task: self.task().name().into(),
            default_width: size,
            default_height: size,
            default_steps: defaults.num_inference_steps,
            default_guidance_scale: defaults.guidance_scale,
            default_strength: defaults.strength,
            latent_channels: fam.latent_channels(c),
            vae_scale_factor: c.vae_scale_factor(),
            device: match c.device.location() {
                DeviceLocation::Cpu => "cpu".into(),
                DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
            },
            dtype: dtype_name(c.dtype),
            scheduler,
            components,
        }
    }
}

/// Every family of diffusers' AutoPipeline mappings (text2img, img2img, inpaint), in diffusers'
/// order, with its class per task and our status.
pub fn supported_families() -> Vec<FamilyInfo> {
    registry::all_families()
        .into_iter()
        .filter(|row| Task::ALL.iter().any(|&t| row.class_for(t).is_some()))
        .map(|row| FamilyInfo {
            family: row.name.into(),
            text2img: row.class_for(Task::Text2Image).map(Into::into),
            img2img: row.class_for(Task::Image2Image).map(Into::into),
            inpaint: row.class_for(Task::Inpaint).map(Into::into),
            status: if row.family.is_some() {
                "supported"
            } else {
                "not supported yet"
            }
            .into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_list_ours_as_supported_and_the_rest_as_not_yet() {
        let all = supported_families();
        let sd = all.iter().find(|f| f.family == "stable-diffusion").unwrap();
        assert_eq!(sd.status, "supported");
        assert_eq!(sd.text2img.as_deref(), Some("StableDiffusionPipeline"));
        assert_eq!(sd.inpaint.as_deref(), Some("StableDiffusionInpaintPipeline"));
        let xl = all.iter().find(|f| f.family == "stable-diffusion-xl").unwrap();
        assert_eq!(xl.img2img.as_deref(), Some("StableDiffusionXLImg2ImgPipeline"));
        assert!(all.iter().any(|f| f.status == "not supported yet"));
        assert_eq!(
            all.iter().filter(|f| f.status == "supported").count(),
            crate::registry::Family::ALL.len()
        );
    }
}
