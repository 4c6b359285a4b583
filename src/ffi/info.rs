//! Introspection as JSON strings: a pipeline's identity and defaults, its diffusers config, and the
//! registry's families. JSON so that new keys can be added without an ABI change; each string is
//! the caller's, freed with `ap_string_free`.

use super::convert;
use super::handles::ap_pipeline;
use super::handles::{borrow, Out};
use super::{ap_status, guard};
use crate::error::{Error, Result};
use std::ffi::c_char;

/// `value` as a NUL-terminated JSON string for the caller.
fn json_out(value: &impl serde::Serialize, out: Out<c_char>) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::Internal(format!("cannot serialise to JSON: {e}")))?;
    out.set(convert::string_to_c(text));
    Ok(())
}

/// What `pipe` is, as a JSON object: `family` (diffusers' key, e.g. "stable-diffusion-xl"),
/// `class_name` (the diffusers pipeline class), `task` ("text2img", "img2img", "inpaint"),
/// `default_width` / `default_height` (the size a run with 0 gets), `latent_channels`,
/// `vae_scale_factor`, `device` ("cpu", "cuda:N"), `dtype` ("f32", "f16", "bf16"), `scheduler` (the
/// checkpoint's scheduler class), and `components`: an array of `{name, class, dtype}` in diffusers'
/// order (`dtype` null for tokenizers and the scheduler). Later versions may add keys.
///
/// On success `*out_json` receives a UTF-8 string to free with `ap_string_free`; on failure NULL.
/// Thread safety: may be called while the pipeline runs on other threads.
///
/// # Safety
/// `pipe` must be a live pipeline, `out_json` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn ap_pipeline_info(pipe: *const ap_pipeline, out_json: *mut *mut c_char) -> ap_status {
    guard(|| {
        let out = Out::new(out_json)?;
        json_out(&borrow(pipe, "pipe")?.inner.info(), out)
    })
}

/// The pipeline's config as a JSON object: the keys diffusers' pipeline class registers in
/// `pipe.config` besides its components (`requires_safety_checker` for SD; SDXL's
/// `force_zeros_for_empty_prompt`, `requires_aesthetics_score`) and `_name_or_path`, from
/// `model_index.json` or the class defaults, carried and overridden through `ap_from_pipe` as diffusers' `from_pipe` does (keys
/// a class does not take are kept with a leading `_`).
///
/// On success `*out_json` receives a UTF-8 string to free with `ap_string_free`; on failure NULL.
/// Thread safety: as `ap_pipeline_info`.
///
/// # Safety
/// `pipe` must be a live pipeline, `out_json` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn ap_pipeline_config_json(
    pipe: *const ap_pipeline,
    out_json: *mut *mut c_char,
) -> ap_status {
    guard(|| {
        let out = Out::new(out_json)?;
        json_out(borrow(pipe, "pipe")?.inner.config(), out)
    })
}

/// The families of diffusers' AutoPipeline mappings, as a JSON array in diffusers' order: each
/// `{family, text2img, img2img, inpaint, status}`, the three task keys holding the diffusers pipeline
/// class for that task (null where diffusers has none), `status` "supported" or "not supported yet".
/// Loading a checkpoint of a family not supported yet fails with `AP_ERR_UNSUPPORTED`.
///
/// On success `*out_json` receives a UTF-8 string to free with `ap_string_free`; on failure NULL.
/// Thread-safe.
///
/// # Safety
/// `out_json` must be a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn ap_supported_families(out_json: *mut *mut c_char) -> ap_status {
    guard(|| {
        let out = Out::new(out_json)?;
        json_out(&crate::pipeline::info::supported_families(), out)
    })
}
