//! The pipeline functions: version and errors, loading, `from_pipe`, blocking runs, the log
//! callback. Their C documentation lives in the header (`cbindgen` copies these comments).

use super::abi;
use super::callbacks::{self, LogCallback};
use super::convert;
use super::handles::{ap_pipeline, borrow, into_handle, Out};
use super::types::*;
use super::{ap_status, guard, guard_or, last_error_ptr};
use crate::error::Error;
use crate::pipeline::Pipeline;
use std::ffi::{c_char, c_void};

/// The message of the last failed `ap_*` call on this thread ("" after a success). The pointer stays
/// valid until the next `ap_*` call on the same thread; do not free it.
#[no_mangle]
pub extern "C" fn ap_last_error() -> *const c_char {
    guard_or(|| c"".as_ptr(), last_error_ptr)
}

/// The library version, e.g. "0.1.0" (static string; do not free).
#[no_mangle]
pub extern "C" fn ap_version() -> *const c_char {
    guard_or(
        || c"".as_ptr(),
        || concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast(),
    )
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
        let out = Out::new(out)?;
        let model = convert::str_arg(model, "model")?;
        let task = convert::task(task)?;
        let params = abi::load_params(params)?;
        let opts = convert::load_options(&params)?;
        let mut progress = callbacks::progress(params.progress, params.progress_user_data, None);
        let pipe = Pipeline::from_pretrained(
            model,
            task,
            &opts,
            progress.as_mut().map(|p| p as &mut crate::pipeline::ProgressFn),
        )?;
        out.set(into_handle(ap_pipeline::new(pipe)));
        Ok(())
    })
}

/// A pipeline for another task over the same loaded models (no extra model memory), like diffusers'
/// `AutoPipelineFor<Task>.from_pipe(pipe, **overrides)`.
///
/// `overrides_json`: NULL, or a JSON object of pipeline config keys to override (e.g.
/// `{"requires_aesthetics_score": true}`, with the type of the key's default) and of run defaults for
/// the new pipeline (`strength` in [0, 1], finite `guidance_scale`, `num_inference_steps` 1..=1000),
/// which runs that leave the value unset use. Unknown keys, wrong types, keys starting with `_` and
/// component names (`vae`, `unet`, …; replacing a component will get its own function) fail with
/// `AP_ERR_INVALID_ARGUMENT` naming the key. The new pipeline is independent of `pipe` for freeing:
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
        let out = Out::new(out)?;
        let pipe = borrow(pipe, "pipe")?;
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
        let new = pipe.inner.from_pipe(task, &overrides)?;
        out.set(into_handle(ap_pipeline::new(new)));
        Ok(())
    })
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
        let out = Out::new(out)?;
        let pipe = borrow(pipe, "pipe")?;
        let params = abi::run_params(params)?;
        let run = convert::run_params(&params)?;
        let mut control = callbacks::run_control(&params, pipe.log_callback(), None)?;
        let result = pipe.inner.run_with(&run, &mut control)?;
        out.set(convert::images_to_c(result.images));
        Ok(())
    })
}

/// Sets the pipeline's log callback: runs started afterwards on this pipeline (`ap_run`,
/// `ap_run_async`) send it their messages at `min_level` (`AP_LOG_*`) and above, including their
/// warnings (e.g. a prompt truncated to 77 tokens). `callback` NULL turns logging off (the default). A
/// run already in progress keeps the callback it started with. Pipelines made with `ap_from_pipe` start
/// without one.
///
/// Thread safety: may be called while runs on this pipeline are in progress on other threads. The
/// callback may be called from several threads at once (parallel runs) and from job worker threads;
/// keep `user_data` alive until this pipeline and every job started from it are freed (or until the
/// callback is replaced and the runs that used it have finished).
///
/// # Safety
/// `pipe` must be a live pipeline; `callback` must be callable with `user_data` from any thread.
#[no_mangle]
pub unsafe extern "C" fn ap_pipeline_set_log_callback(
    pipe: *mut ap_pipeline,
    callback: ap_log_fn,
    user_data: *mut c_void,
    min_level: i32,
) -> ap_status {
    guard(|| {
        let pipe = borrow(pipe, "pipe")?;
        let cb = LogCallback::new(callback, user_data, min_level)?;
        *pipe.log.lock().unwrap_or_else(|e| e.into_inner()) = cb;
        Ok(())
    })
}
