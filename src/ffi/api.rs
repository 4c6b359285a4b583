//! The exported functions. Their C documentation lives in the header (`cbindgen` copies these comments).

use super::types::*;
use super::{ap_status, convert, guard, last_error_ptr};
use crate::error::Error;
use crate::pipeline::Pipeline;
use std::ffi::{c_char, c_void};

/// An opaque loaded pipeline. Create with `ap_from_pretrained` / `ap_from_pipe`, free with
/// `ap_pipeline_free`.
#[allow(non_camel_case_types)]
pub struct ap_pipeline {
    pub(super) inner: Pipeline,
    /// Set by `ap_pipeline_set_log_callback`; each run copies it when it starts.
    pub(super) log: std::sync::Mutex<Option<super::jobs::LogCallback>>,
}

impl ap_pipeline {
    pub(super) fn new(inner: Pipeline) -> Self {
        Self {
            inner,
            log: std::sync::Mutex::new(None),
        }
    }
}

fn null(what: &str) -> Error {
    Error::InvalidArgument(format!("{what} is NULL"))
}

/// Wraps a C progress callback as a Rust closure.
fn progress_closure(
    cb: ap_progress_fn,
    user_data: *mut c_void,
) -> Option<impl FnMut(usize, usize) -> bool + Send> {
    // The pointer is only handed back to the caller's callback, on the calling thread.
    struct UserData(*mut c_void);
    unsafe impl Send for UserData {}
    let ud = UserData(user_data);
    cb.map(move |f| {
        move |step: usize, total: usize| {
            let ud = &ud;
            // SAFETY: the caller promised `f` is callable with its own user_data.
            unsafe { f(step as u32, total as u32, ud.0) != 0 }
        }
    })
}

/// The message of the last failed `ap_*` call on this thread ("" after a success). The pointer stays
/// valid until the next `ap_*` call on the same thread; do not free it.
#[no_mangle]
pub extern "C" fn ap_last_error() -> *const c_char {
    last_error_ptr()
}

/// The library version, e.g. "0.1.0" (static string; do not free).
#[no_mangle]
pub extern "C" fn ap_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Load parameters with every field at its default and `struct_size` set.
#[no_mangle]
pub extern "C" fn ap_load_params_default() -> ap_load_params {
    ap_load_params {
        struct_size: std::mem::size_of::<ap_load_params>() as u32,
        device: std::ptr::null(),
        variant: std::ptr::null(),
        revision: std::ptr::null(),
        cache_dir: std::ptr::null(),
        token: std::ptr::null(),
        local_files_only: 0,
        progress: None,
        progress_user_data: std::ptr::null_mut(),
        dtype: std::ptr::null(),
        preload: 0,
    }
}

/// Run parameters with every field at "pipeline default", an empty prompt, seed 0, and `struct_size` set.
#[no_mangle]
pub extern "C" fn ap_run_params_default() -> ap_run_params {
    ap_run_params {
        struct_size: std::mem::size_of::<ap_run_params>() as u32,
        prompt: c"".as_ptr(),
        negative_prompt: std::ptr::null(),
        prompt_2: std::ptr::null(),
        negative_prompt_2: std::ptr::null(),
        num_inference_steps: 0,
        guidance_scale: -1.0,
        strength: -1.0,
        width: 0,
        height: 0,
        seed: 0,
        num_images_per_prompt: 0,
        guidance_rescale: 0.0,
        clip_skip: 0,
        output_channels: 0,
        image: std::ptr::null(),
        mask: std::ptr::null(),
        padding_mask_crop: 0,
        scheduler: std::ptr::null(),
        scheduler_config_json: std::ptr::null(),
        progress: None,
        progress_user_data: std::ptr::null_mut(),
        preview: None,
        preview_user_data: std::ptr::null_mut(),
        preview_every: 0,
        preview_mode: AP_PREVIEW_LATENT,
        vae_tiling: 0,
        vae_slicing: 0,
        rng: std::ptr::null(),
    }
}

/// Loads a checkpoint for a task, like diffusers' `AutoPipelineFor<Task>.from_pretrained(model)`.
///
/// `model`: a local diffusers folder or a hub id ("runwayml/stable-diffusion-v1-5"; cached files are
/// used offline). `task`: one of `AP_TASK_*`. `params`: NULL for defaults. On success `*out` receives a
/// pipeline to free with `ap_pipeline_free`; on failure `*out` is set to NULL.
/// Blocks while loading (seconds to minutes for real checkpoints).
///
/// # Safety
/// `model` must be a NUL-terminated string, `params` NULL or valid, `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn ap_from_pretrained(
    model: *const c_char,
    task: i32,
    params: *const ap_load_params,
    out: *mut *mut ap_pipeline,
) -> ap_status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        let model = convert::str_arg(model, "model")?;
        let task = convert::task(task)?;
        let defaults = ap_load_params_default();
        let params = if params.is_null() {
            &defaults
        } else {
            convert::sized(params, "ap_load_params")?
        };
        let opts = convert::load_options(params)?;
        let mut progress = progress_closure(params.progress, params.progress_user_data);
        let pipe = Pipeline::from_pretrained(
            model,
            task,
            &opts,
            progress.as_mut().map(|p| p as &mut crate::pipeline::ProgressFn),
        )?;
        *out = Box::into_raw(Box::new(ap_pipeline::new(pipe)));
        Ok(())
    })
}

/// A pipeline for another task over the same loaded models (no extra model memory), like diffusers'
/// `AutoPipelineFor<Task>.from_pipe(pipe, **overrides)`.
///
/// `overrides_json`: NULL, or a JSON object of pipeline config keys to override (e.g.
/// `{"requires_aesthetics_score": true}`). The new pipeline is independent of `pipe` for freeing:
/// free both, in any order.
///
/// # Safety
/// `pipe` must be a live pipeline, `overrides_json` NULL or a NUL-terminated string, `out` valid.
#[no_mangle]
pub unsafe extern "C" fn ap_from_pipe(
    pipe: *const ap_pipeline,
    task: i32,
    overrides_json: *const c_char,
    out: *mut *mut ap_pipeline,
) -> ap_status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        if pipe.is_null() {
            return Err(null("pipe"));
        }
        let task = convert::task(task)?;
        let overrides = match convert::opt_str(overrides_json, "overrides_json")? {
            None => serde_json::Map::new(),
            Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(m)) => m,
                Ok(_) => {
                    return Err(Error::InvalidArgument(
                        "overrides_json must be a JSON object".into(),
                    ))
                }
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "overrides_json is not valid JSON: {e}"
                    )))
                }
            },
        };
        let new = (*pipe).inner.from_pipe(task, &overrides)?;
        *out = Box::into_raw(Box::new(ap_pipeline::new(new)));
        Ok(())
    })
}

/// Frees a pipeline. NULL is ignored. Models stay alive while other pipelines made by `ap_from_pipe`,
/// or jobs started with `ap_run_async`, still use them: freeing a pipeline whose jobs are running is
/// safe, and those jobs run to completion.
///
/// Thread safety: must not race with other calls on the same handle (an `ap_run` in progress on
/// another thread, say); jobs do not count, as they hold the models themselves.
///
/// # Safety
/// `pipe` must be NULL or a pipeline not yet freed, and no other thread may be using it.
#[no_mangle]
pub unsafe extern "C" fn ap_pipeline_free(pipe: *mut ap_pipeline) {
    if !pipe.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(Box::from_raw(pipe))));
    }
}

/// Generates images. Blocks until done (or cancelled through the progress callback, which returns
/// `AP_ERR_CANCELLED`). On success `*out` receives images to free with `ap_images_free`; on failure
/// `*out` is NULL. The pipeline stays usable after any failure.
///
/// Callbacks (progress, preview, and the pipeline's log callback) are called on the calling thread,
/// before `ap_run` returns. The run's warnings (e.g. a truncated prompt) go to the pipeline's log
/// callback (`ap_pipeline_set_log_callback`).
///
/// Thread safety: several threads may call `ap_run` (and `ap_run_async`) on the same pipeline, or on
/// pipelines sharing models through `ap_from_pipe`, at once; each run has its own scheduler and
/// generator. For a run that must not block the caller, use `ap_run_async`.
///
/// # Safety
/// `pipe` must be a live pipeline, `params` valid, `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn ap_run(
    pipe: *const ap_pipeline,
    params: *const ap_run_params,
    out: *mut *mut ap_images,
) -> ap_status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        if pipe.is_null() {
            return Err(null("pipe"));
        }
        if params.is_null() {
            return Err(null("params"));
        }
        let params = convert::sized(params, "ap_run_params")?;
        let run = convert::run_params(params)?;
        let mut control = super::jobs::run_control(&*pipe, params, None)?;
        let result = (*pipe).inner.run_with(&run, &mut control)?;
        *out = images_into_c(result.images);
        Ok(())
    })
}

pub(super) fn images_into_c(images: Vec<crate::image::Image>) -> *mut ap_images {
    let list: Vec<ap_image> = images
        .into_iter()
        .map(|img| {
            let data = Box::into_raw(img.data.into_boxed_slice()) as *mut u8;
            ap_image {
                width: img.width,
                height: img.height,
                channels: img.channels,
                stride: img.width * img.channels,
                data,
            }
        })
        .collect();
    let count = list.len();
    let images = Box::into_raw(list.into_boxed_slice()) as *mut ap_image;
    Box::into_raw(Box::new(ap_images { count, images }))
}

/// Frees images returned by `ap_run`. NULL is ignored.
///
/// # Safety
/// `images` must be NULL or returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ap_images_free(images: *mut ap_images) {
    if images.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let list = Box::from_raw(images);
        let slice = Box::from_raw(std::ptr::slice_from_raw_parts_mut(list.images, list.count));
        for img in slice.iter() {
            let len = img.stride as usize * img.height as usize;
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(img.data, len)));
        }
    }));
}

/// Writes `image` to a PNG file (a convenience for examples and tools).
///
/// # Safety
/// `image` must point to a valid image, `path` to a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ap_image_save_png(image: *const ap_image, path: *const c_char) -> ap_status {
    guard(|| {
        let path = convert::str_arg(path, "path")?;
        let img = convert::image(image, "image")?.ok_or_else(|| null("image"))?;
        img.save_png(std::path::Path::new(path))
    })
}

/// Reads a PNG or JPEG file into an RGB8 image (`channels` 3) to pass as `ap_run_params.image` or
/// `.mask`; free it with `ap_image_free`.
///
/// # Safety
/// `path` must be a NUL-terminated string, `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn ap_image_load(path: *const c_char, out: *mut *mut ap_image) -> ap_status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        let path = convert::str_arg(path, "path")?;
        let img = crate::image::Image::load(std::path::Path::new(path))?;
        let stride = img.width * img.channels;
        let data = Box::into_raw(img.data.into_boxed_slice()) as *mut u8;
        *out = Box::into_raw(Box::new(ap_image {
            width: img.width,
            height: img.height,
            channels: img.channels,
            stride,
            data,
        }));
        Ok(())
    })
}

/// Frees an image returned by `ap_image_load`. NULL is ignored.
///
/// # Safety
/// `image` must be NULL or returned by `ap_image_load` and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ap_image_free(image: *mut ap_image) {
    if image.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let img = Box::from_raw(image);
        let len = img.stride as usize * img.height as usize;
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(img.data, len)));
    }));
}
