//! What a caller can set for loading and for one run; `None` always means "the pipeline's default".

use crate::image::Image;

/// Where to run and how to find files.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `"cpu"` (default), `"cuda"` or `"cuda:N"`.
    pub device: Option<String>,
    /// Precision of the models: `"f32"` (default), `"f16"` or `"bf16"`. As in diffusers, an SDXL
    /// pipeline's VAE runs in f32 when its config says `force_upcast` (the SDXL VAE overflows in f16), on
    /// its half-precision values; SD pipelines run theirs in this dtype. On the CPU, half-precision
    /// models hold half-precision values and weights (half the memory) but compute in f32 (faster
    /// there, and more exact). Latents and scheduler steps are always f32.
    pub dtype: Option<String>,
    /// Weight variant, e.g. `"fp16"` → `diffusion_pytorch_model.fp16.safetensors`.
    pub variant: Option<String>,
    /// Hub revision (branch, tag or commit); default `main`.
    pub revision: Option<String>,
    /// HF cache folder; default `$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Hub token; default `$HF_TOKEN`.
    pub token: Option<String>,
    /// Never touch the network; default from `HF_HUB_OFFLINE`.
    pub local_files_only: bool,
    /// Read every weight while loading. By default float32 CPU weights are read on first use, as
    /// diffusers' memory-mapped weights are: loading is fast and the first denoising step (or text
    /// encoding, or decode) reads what it needs. Preloading moves that cost into the load, so no run
    /// has a slow first step.
    pub preload: bool,
}

/// Progress of a run or a load: return `false` to cancel.
pub type ProgressFn<'a> = dyn FnMut(usize, usize) -> bool + Send + 'a;

/// The inputs of one generation, mirroring the diffusers pipeline `__call__` arguments.
#[derive(Debug, Clone)]
pub struct RunParams {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// The second encoder's prompt (SDXL's `text_encoder_2`, FLUX's T5); defaults to `prompt`.
    pub prompt_2: Option<String>,
    pub negative_prompt_2: Option<String>,
    pub num_inference_steps: Option<usize>,
    pub guidance_scale: Option<f64>,
    /// img2img / inpaint: how much of the schedule to run (1.0 = from pure noise).
    pub strength: Option<f64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Seed of the generator all random draws come from.
    pub seed: u64,
    /// Which torch generator the seed is for: `torch.Generator("cpu")` (default, as diffusers without a
    /// generator device) or `torch.Generator("cuda")`, so seeds people ran on a GPU reproduce.
    pub rng: crate::rng::RngKind,
    pub num_images_per_prompt: usize,
    /// diffusers `guidance_rescale` (0 = off).
    pub guidance_rescale: f64,
    /// Number of final CLIP layers to skip (diffusers `clip_skip`).
    pub clip_skip: Option<usize>,
    /// img2img / inpaint input image.
    pub image: Option<Image>,
    /// inpaint mask: white (≥ 0.5) = repaint.
    pub mask: Option<Image>,
    /// inpaint: crop to the mask's bounding box grown by this many pixels, inpaint the crop at full
    /// resolution and paste it back (diffusers `padding_mask_crop`).
    pub padding_mask_crop: Option<u32>,
    /// Channels of the returned images: 4 (RGBA, default) or 3 (RGB).
    pub output_channels: u32,
    /// Scheduler for this run instead of the checkpoint's: a diffusers class name
    /// (`"DPMSolverMultistepScheduler"`) or an alias (`"dpm++2m_karras"`, `"euler_a"`, … see
    /// [`crate::schedulers::ALIASES`]). Built from the checkpoint's scheduler config as diffusers'
    /// `Cls.from_config(pipe.scheduler.config, **scheduler_config)`; the weights are not reloaded.
    pub scheduler: Option<String>,
    /// Scheduler config overrides, a JSON object such as `{"use_karras_sigmas": true}`; keys the
    /// scheduler class does not take are an error. Applies to the checkpoint's scheduler when
    /// `scheduler` is `None`.
    pub scheduler_config: Option<serde_json::Value>,
    /// Run the VAE over overlapping tiles of `vae/config.json`'s `sample_size` (512 px for SD 1.x) with
    /// linear blending at the seams, as diffusers' `pipe.enable_vae_tiling()`: large decodes (and the
    /// img2img / inpaint encodes) then need the memory of one tile. Like diffusers, the image differs
    /// slightly from an untiled run at sizes that need several tiles; smaller ones are unaffected.
    pub vae_tiling: bool,
    /// Run the VAE one image at a time, as diffusers' `pipe.enable_vae_slicing()`: lower peak memory
    /// for batches, identical images.
    pub vae_slicing: bool,
    /// Custom timesteps, descending (diffusers' `timesteps=` argument); only schedulers whose
    /// `set_timesteps` takes them accept it. Overrides `num_inference_steps` (set to its length).
    pub timesteps: Option<Vec<f64>>,
    /// Custom sigmas, descending (diffusers' `sigmas=` argument); only schedulers whose `set_timesteps`
    /// takes them accept it. Overrides `num_inference_steps` (set to its length).
    pub sigmas: Option<Vec<f64>>,
    /// FLUX: T5 prompt length in tokens, 1..=512 (diffusers' `max_sequence_length`; `None`: 512). The
    /// prompt is padded or truncated to it.
    pub max_sequence_length: Option<usize>,
    /// FLUX: true classifier-free guidance scale (diffusers' `true_cfg_scale`; `None`: 1.0). Above 1
    /// with a negative prompt, every step also runs the negative prompt and mixes the two.
    pub true_cfg_scale: Option<f64>,
    /// SD3: the T5 prompt and negative prompt (`text_encoder_3`); default `prompt` / `negative_prompt`.
    pub prompt_3: Option<String>,
    pub negative_prompt_3: Option<String>,
    /// SD3 text-to-image: skip-layer guidance's transformer blocks to skip (diffusers'
    /// `skip_guidance_layers`, e.g. `[7, 8, 9]` for SD 3.5 Medium); `None`: off. Runs with CFG only.
    pub skip_guidance_layers: Option<Vec<usize>>,
    /// Skip-layer guidance scale (default 2.8) and the fractions of the steps it runs between
    /// (defaults 0.01 and 0.2).
    pub skip_layer_guidance_scale: Option<f64>,
    pub skip_layer_guidance_start: Option<f64>,
    pub skip_layer_guidance_stop: Option<f64>,
}

impl RunParams {
    /// The VAE options of this run.
    pub fn vae_options(&self) -> crate::models::vae::DecodeOptions {
        crate::models::vae::DecodeOptions {
            tiling: self.vae_tiling,
            slicing: self.vae_slicing,
        }
    }
}

impl Default for RunParams {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: None,
            prompt_2: None,
            negative_prompt_2: None,
            num_inference_steps: None,
            guidance_scale: None,
            strength: None,
            width: None,
            height: None,
            seed: 0,
            rng: crate::rng::RngKind::Cpu,
            num_images_per_prompt: 1,
            guidance_rescale: 0.0,
            clip_skip: None,
            image: None,
            mask: None,
            padding_mask_crop: None,
            output_channels: 4,
            scheduler: None,
            scheduler_config: None,
            vae_tiling: false,
            vae_slicing: false,
            timesteps: None,
            sigmas: None,
            max_sequence_length: None,
            true_cfg_scale: None,
            prompt_3: None,
            negative_prompt_3: None,
            skip_guidance_layers: None,
            skip_layer_guidance_scale: None,
            skip_layer_guidance_start: None,
            skip_layer_guidance_stop: None,
        }
    }
}
