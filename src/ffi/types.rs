//! `#[repr(C)]` structs and callback types of the C ABI. Plain integers only (no Rust enums), so the
//! layout is the same for every C compiler and for C# P/Invoke.

use std::ffi::{c_char, c_void};

/// Task: text to image (`AutoPipelineForText2Image`).
pub const AP_TASK_TEXT2IMAGE: i32 = 0;
/// Task: image to image (`AutoPipelineForImage2Image`).
pub const AP_TASK_IMAGE2IMAGE: i32 = 1;
/// Task: inpainting (`AutoPipelineForInpainting`).
pub const AP_TASK_INPAINT: i32 = 2;

/// Progress callback: `step` of `total` is done. Return nonzero to continue, 0 to cancel (the call
/// then returns `AP_ERR_CANCELLED`). Called on the thread that runs the work.
#[allow(non_camel_case_types)]
pub type ap_progress_fn = Option<unsafe extern "C" fn(step: u32, total: u32, user_data: *mut c_void) -> i32>;

/// Preview callback: after denoising step `step` of `total`, `images` holds one RGBA8 preview per image
/// of the batch (valid only during the call: copy what you keep). See `ap_run_params.preview_every`.
/// Called on the thread that runs the work: the caller's for `ap_run`, the job's worker thread for
/// `ap_run_async`.
#[allow(non_camel_case_types)]
pub type ap_preview_fn =
    Option<unsafe extern "C" fn(step: u32, total: u32, images: *const ap_images, user_data: *mut c_void)>;

/// Preview mode: a linear latent→RGB projection (the SD 1.x/2.x or SDXL factors), at latent
/// resolution (1/8 of the output per side). Costs microseconds.
pub const AP_PREVIEW_LATENT: i32 = 0;
/// Preview mode: a full VAE decode at output resolution; costs about as much as the final decode.
pub const AP_PREVIEW_VAE: i32 = 1;

/// An 8-bit image: `channels` 1 (mask), 3 (RGB) or 4 (RGBA); row `y` starts at `data + y * stride`.
/// Images returned by the library are RGBA8 (or RGB8 on request) with `stride = width * channels`.
/// Images passed in (run inputs, `ap_image_save_png`) may give `stride = 0` for tightly packed rows
/// (`width * channels`); a nonzero stride smaller than that fails with AP_ERR_INVALID_ARGUMENT.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct ap_image {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub stride: u32,
    pub data: *mut u8,
}

/// Images returned by `ap_run`; free with `ap_images_free`.
#[repr(C)]
#[derive(Debug)]
#[allow(non_camel_case_types)]
pub struct ap_images {
    pub count: usize,
    pub images: *mut ap_image,
}

/// Options of `ap_from_pretrained`. Initialise with `ap_load_params_init(&p, sizeof p)` (or
/// `ap_load_params_default()`); NULL strings mean "default".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct ap_load_params {
    /// `sizeof(ap_load_params)` of the caller's header, set by `ap_load_params_init`: lets the library
    /// tell header versions apart (see "ABI policy" at the top).
    pub struct_size: u32,
    /// `"cpu"` (default), `"cuda"` or `"cuda:N"`.
    pub device: *const c_char,
    /// Weight variant, e.g. `"fp16"`.
    pub variant: *const c_char,
    /// Hub revision (branch, tag or commit); default `"main"`.
    pub revision: *const c_char,
    /// HF cache folder; default `$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`.
    pub cache_dir: *const c_char,
    /// Hub token; default `$HF_TOKEN`.
    pub token: *const c_char,
    /// Nonzero: never use the network, only the local folder or HF cache.
    pub local_files_only: i32,
    /// Called after each loaded component; may be NULL.
    pub progress: ap_progress_fn,
    pub progress_user_data: *mut c_void,
    /// Precision of the models: "f32" (default, NULL), "f16" or "bf16". As in diffusers, an SDXL
    /// pipeline's VAE runs in f32 when its config has `force_upcast` (on its half-precision values); SD
    /// pipelines run theirs in this dtype. On the CPU, half-precision models hold half-precision
    /// weights (half the memory) but compute in f32 (faster there, and more exact). Latents and
    /// scheduler math are always f32.
    pub dtype: *const c_char,
    /// Nonzero: read every weight during the load. 0 (default): float32 CPU weights are read on first
    /// use, as diffusers' memory-mapped weights are, so the load returns quickly and the first run's
    /// first step (and first decode) is slower. The weight files must then stay unchanged while the
    /// pipeline lives.
    pub preload: i32,
}

/// Inputs of `ap_run`. Initialise with `ap_run_params_init(&p, sizeof p)` (or
/// `ap_run_params_default()`); a 0 / negative / NULL field means "the pipeline's default", exactly as
/// omitting the argument in diffusers.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct ap_run_params {
    /// `sizeof(ap_run_params)` of the caller's header, set by `ap_run_params_init` (see "ABI policy").
    pub struct_size: u32,
    /// UTF-8 prompt (required; may be empty).
    pub prompt: *const c_char,
    pub negative_prompt: *const c_char,
    /// The second encoder's prompts (SDXL's `text_encoder_2`, FLUX's T5); NULL = same as `prompt` /
    /// `negative_prompt`.
    pub prompt_2: *const c_char,
    pub negative_prompt_2: *const c_char,
    /// 0 = default (the pipeline class's: 50 SD/SDXL, 4 LCM, 28 FLUX, 28 SD3 text2img and 50 SD3
    /// img2img / inpaint).
    pub num_inference_steps: i32,
    /// Negative = default (7.5 SD, 5.0 SDXL, 8.5 LCM, 3.5 FLUX text2img / 7.0 FLUX img2img and inpaint,
    /// 7.0 SD3); for SD / SDXL / SD3 values ≤ 1 turn classifier-free guidance off; for FLUX (dev) it is the distilled
    /// guidance the model takes as input ((schnell) ignores it).
    pub guidance_scale: f32,
    /// img2img / inpaint strength in [0, 1]; negative = default.
    pub strength: f32,
    /// 0 = default (`unet.sample_size × vae_scale_factor`; FLUX: 128 × vae_scale_factor). SD / SDXL
    /// text2img take multiples of 8, SD3 multiples of 16 (vae_scale_factor × patch_size); FLUX rounds
    /// down to multiples of 2 × vae_scale_factor (16) with a warning, as diffusers does.
    pub width: i32,
    pub height: i32,
    /// Seed of the torch-compatible CPU generator (`torch.Generator("cpu").manual_seed(seed)`).
    pub seed: u64,
    /// 0 = 1.
    pub num_images_per_prompt: i32,
    /// diffusers `guidance_rescale` in [0, 1].
    pub guidance_rescale: f32,
    /// CLIP layers to skip; 0 = none.
    pub clip_skip: i32,
    /// 3 (RGB8) or 4 (RGBA8, default when 0).
    pub output_channels: i32,
    /// img2img / inpaint input (RGB8 or RGBA8); NULL when unused. Only read during the call.
    pub image: *const ap_image,
    /// inpaint mask (1, 3 or 4 channels; white = repaint); NULL when unused.
    pub mask: *const ap_image,
    /// inpaint: > 0 crops to the mask's box grown by this many pixels, inpaints the crop at full size
    /// and pastes it back (diffusers `padding_mask_crop`); 0 = off.
    pub padding_mask_crop: i32,
    /// Scheduler for this run; NULL = the checkpoint's own. A diffusers class name
    /// ("DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler", …) or an alias: "ddim",
    /// "ddpm", "pndm", "plms", "euler", "euler_karras", "euler_a", "lms", "lms_karras", "heun",
    /// "heun_karras", "dpm++2m", "dpm++2m_karras", "dpm++2m_sde", "dpm++2m_sde_karras", "dpm++3m",
    /// "dpm++3m_karras", "dpm++2s", "dpm++2s_karras", "dpm++2s_sde", "dpm++2s_sde_karras", "dpm++3s",
    /// "dpm++3s_karras", "deis", "deis_karras", "dpm2", "dpm2_karras", "dpm2_a", "dpm2_a_karras"
    /// ("kdpm2…" too), "unipc", "unipc_karras", "lcm", "tcd", "flow_euler", "flow_heun". Built from
    /// the checkpoint's scheduler config like diffusers' `Cls.from_config(pipe.scheduler.config)`;
    /// weights are not reloaded. Flow-matching checkpoints (SD3, FLUX) take only the flow-matching
    /// classes (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler), other checkpoints
    /// only the others. An unknown or unsuitable name fails with AP_ERR_INVALID_ARGUMENT listing the
    /// valid ones.
    pub scheduler: *const c_char,
    /// Scheduler config overrides as a JSON object, e.g. `{"use_karras_sigmas": true}`; NULL = none.
    /// Applies to `scheduler`, or to the checkpoint's scheduler when `scheduler` is NULL. A key the
    /// scheduler class does not take fails with AP_ERR_INVALID_ARGUMENT listing its keys.
    pub scheduler_config_json: *const c_char,
    /// Called after each denoising step; may be NULL.
    pub progress: ap_progress_fn,
    pub progress_user_data: *mut c_void,
    /// Called after every `preview_every`-th denoising step (step N, 2N, …); may be NULL.
    pub preview: ap_preview_fn,
    pub preview_user_data: *mut c_void,
    /// Steps between previews; 0 = no previews.
    pub preview_every: i32,
    /// `AP_PREVIEW_LATENT` (0, default) or `AP_PREVIEW_VAE` (1).
    pub preview_mode: i32,
    /// Nonzero: run the VAE over overlapping tiles of its `sample_size` (512 px for SD 1.x), blended at
    /// the seams, as diffusers' `enable_vae_tiling()`. Decodes (and img2img/inpaint encodes) of any
    /// size then need the memory of one tile; images needing several tiles differ slightly from untiled
    /// ones, as in diffusers. 0 (default) = off.
    pub vae_tiling: i32,
    /// Nonzero: run the VAE one image at a time, as diffusers' `enable_vae_slicing()`: lower peak memory
    /// for batches, identical images. 0 (default) = off.
    pub vae_slicing: i32,
    /// Which torch generator `seed` is for: NULL or "cpu" (default) = `torch.Generator("cpu")`, as
    /// diffusers' examples use; "cuda" = `torch.Generator("cuda")`, so seeds run on a GPU with diffusers
    /// reproduce (draws on a CUDA device are bit-exact, on the CPU within 2.5e-6). Tensors over 256 × the
    /// GPU's launch limit depend on the GPU: `"cuda:SMS[:THREADS_PER_SM]"` names the one to imitate
    /// (default: the device the pipeline runs on, else an H100's 132:2048).
    pub rng: *const c_char,
    // The 0.1.0 layout ends here: callers built against it get the defaults of the fields below.
    /// (Added in 0.1.1.) Custom timesteps, descending, as diffusers' `timesteps=` argument: `num_timesteps` values
    /// (finite). NULL / 0 = none. Only schedulers whose `set_timesteps` takes custom timesteps accept
    /// them; they replace `num_inference_steps`. Only read during the call (async runs copy them).
    pub timesteps: *const f64,
    pub num_timesteps: u32,
    /// (Added in 0.1.1.) Custom sigmas, descending, as diffusers' `sigmas=` argument: `num_sigmas`
    /// values (finite).
    /// NULL / 0 = none. As `timesteps`, for schedulers that take custom sigmas.
    pub sigmas: *const f64,
    pub num_sigmas: u32,
    /// (Added in 0.1.2.) Never read: it fills what was the 0.1.1 layout's tail padding, so that no
    /// later field lies in bytes a 0.1.1 caller never initialised.
    pub reserved0: u32,
    /// (Added in 0.1.2.) FLUX and SD3: the T5 prompt length in tokens, 1..=512 (diffusers'
    /// `max_sequence_length`); longer prompts are truncated with a warning. 0 = default (512 FLUX,
    /// 256 SD3).
    pub max_sequence_length: i32,
    /// (Added in 0.1.2.) FLUX: true classifier-free guidance (diffusers' `true_cfg_scale`). Above 1 and
    /// with a `negative_prompt`, every step runs the transformer a second time on the negative prompt
    /// (twice the time). Negative = default (1.0: off). FLUX (dev)'s own `guidance_scale` is the
    /// distilled guidance the model takes as input (default 3.5); (schnell) ignores it.
    pub true_cfg_scale: f32,
    /// (Added in 0.1.2.) SD3: the T5 prompts (`text_encoder_3`); NULL = `prompt` / `negative_prompt`.
    pub prompt_3: *const c_char,
    pub negative_prompt_3: *const c_char,
    /// (Added in 0.1.2.) SD3 text2img: skip-layer guidance's transformer blocks to skip (diffusers'
    /// `skip_guidance_layers`, e.g. {7, 8, 9} for SD 3.5 Medium), `num_skip_guidance_layers` of them;
    /// NULL / 0 = off. Runs with CFG only; each step in the window costs one more transformer call.
    /// Only read during the call.
    pub skip_guidance_layers: *const u32,
    pub num_skip_guidance_layers: u32,
    /// (Added in 0.1.2.) Skip-layer guidance scale and the fractions of the steps it runs between;
    /// negative = default (2.8, 0.01, 0.2).
    pub skip_layer_guidance_scale: f32,
    pub skip_layer_guidance_start: f32,
    pub skip_layer_guidance_stop: f32,
}

/// Job state: created, its worker thread not started yet.
pub const AP_JOB_QUEUED: i32 = 0;
/// Job state: working.
pub const AP_JOB_RUNNING: i32 = 1;
/// Job state: finished successfully; take the result.
pub const AP_JOB_DONE: i32 = 2;
/// Job state: finished with an error; `ap_job_take_*` returns it (status and `ap_last_error()`).
pub const AP_JOB_FAILED: i32 = 3;
/// Job state: finished because it was cancelled (`ap_job_cancel`, or a progress callback returned 0).
pub const AP_JOB_CANCELLED: i32 = 4;

/// Log level: details (timings).
pub const AP_LOG_DEBUG: i32 = 0;
/// Log level: notable events (a run cancelled).
pub const AP_LOG_INFO: i32 = 1;
/// Log level: non-fatal problems (a prompt truncated to CLIP's 77 tokens, previews turned off).
pub const AP_LOG_WARN: i32 = 2;
/// Log level: a run failed (the message also comes back through its status).
pub const AP_LOG_ERROR: i32 = 3;

/// Log callback: `message` (UTF-8, valid only during the call) at `level` (`AP_LOG_*`). Called on the
/// thread doing the work: the caller's for `ap_run`, a job's worker thread for `ap_run_async`; runs in
/// parallel on one pipeline may call it from several threads at once.
#[allow(non_camel_case_types)]
pub type ap_log_fn = Option<unsafe extern "C" fn(level: i32, message: *const c_char, user_data: *mut c_void)>;

/// A snapshot of a job, filled by `ap_job_poll`. Initialise with `ap_job_status_init(&s, sizeof s)`
/// (or `ap_job_status_default()`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct ap_job_status {
    /// `sizeof(ap_job_status)` of the caller's header, set by `ap_job_status_init`; `ap_job_poll`
    /// writes no further.
    pub struct_size: u32,
    /// One of `AP_JOB_*`.
    pub state: i32,
    /// Denoising steps (runs) or components (loads) done so far.
    pub step: u32,
    /// Their number; 0 until known (a run knows it once its prompt is encoded).
    pub total: u32,
    /// Seconds since the work started (0 while queued), frozen once the job has finished.
    pub elapsed_seconds: f64,
}
