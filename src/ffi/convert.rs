//! Typed conversions from C arguments to Rust values, in one place.

use super::types::*;
use crate::error::{Error, Result};
use crate::image::{Image, MAX_DECODE_SIDE};
use crate::pipeline::{LoadOptions, RunParams};
use crate::registry::Task;
use std::ffi::{c_char, CStr};

/// A required UTF-8 string argument.
pub unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::InvalidArgument(format!("{what} is NULL")));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|e| Error::InvalidArgument(format!("{what} is not valid UTF-8: {e}")))
}

/// An optional UTF-8 string argument (NULL = `None`).
pub unsafe fn opt_str(p: *const c_char, what: &str) -> Result<Option<String>> {
    if p.is_null() {
        Ok(None)
    } else {
        str_arg(p, what).map(|s| Some(s.to_string()))
    }
}

pub fn task(t: i32) -> Result<Task> {
    match t {
        AP_TASK_TEXT2IMAGE => Ok(Task::Text2Image),
        AP_TASK_IMAGE2IMAGE => Ok(Task::Image2Image),
        AP_TASK_INPAINT => Ok(Task::Inpaint),
        other => Err(Error::InvalidArgument(format!(
            "task {other} is not one of AP_TASK_TEXT2IMAGE (0), AP_TASK_IMAGE2IMAGE (1), AP_TASK_INPAINT (2)"
        ))),
    }
}

/// A parameter struct behind `p`, after checking its leading `struct_size` field: a caller built
/// against another header may hand a struct of a different size, so only that first `u32` is read
/// before the size is known to match (a reference to the whole struct would claim bytes the caller
/// may not have).
///
/// # Safety
/// `p` must be non-NULL and point to at least 4 readable bytes; `T` must start with a `u32`
/// `struct_size`.
pub unsafe fn sized<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    check_size(p.cast::<u32>().read_unaligned(), std::mem::size_of::<T>(), what)?;
    Ok(&*p)
}

fn check_size(got: u32, want: usize, what: &str) -> Result<()> {
    if got as usize != want {
        return Err(Error::InvalidArgument(format!(
            "{what}.struct_size is {got} but this library's {what} has {want} bytes: initialise it with \
             {what}_default() from the header that matches the library"
        )));
    }
    Ok(())
}

pub unsafe fn load_options(p: &ap_load_params) -> Result<LoadOptions> {
    check_size(
        p.struct_size,
        std::mem::size_of::<ap_load_params>(),
        "ap_load_params",
    )?;
    Ok(LoadOptions {
        device: opt_str(p.device, "device")?,
        dtype: opt_str(p.dtype, "dtype")?,
        variant: opt_str(p.variant, "variant")?,
        revision: opt_str(p.revision, "revision")?,
        cache_dir: opt_str(p.cache_dir, "cache_dir")?.map(Into::into),
        token: opt_str(p.token, "token")?,
        local_files_only: p.local_files_only != 0,
        preload: p.preload != 0,
    })
}

fn opt_f32(v: f32, what: &str) -> Result<Option<f64>> {
    if v.is_nan() || v.is_infinite() {
        return Err(Error::InvalidArgument(format!(
            "{what} is {v}; pass a finite number, or negative for the default"
        )));
    }
    Ok((v >= 0.0).then_some(v as f64))
}

fn opt_positive(v: i32, what: &str) -> Result<Option<usize>> {
    match v {
        0 => Ok(None),
        v if v < 0 => Err(Error::InvalidArgument(format!(
            "{what} is {v}; pass a positive value, or 0 for the default"
        ))),
        v => Ok(Some(v as usize)),
    }
}

/// Copies a C image (honouring its stride) into an owned [`Image`].
///
/// The library cannot see how large the caller's buffer is: it reads `height` rows of
/// `width × channels` bytes, `stride` apart, and trusts the caller for that much. Sizes that cannot
/// be real (sides beyond [`MAX_DECODE_SIDE`], a stride shorter than a row, byte counts that overflow)
/// are refused, and the copy's memory is reserved fallibly so a huge image is an error, not an abort.
pub unsafe fn image(p: *const ap_image, what: &str) -> Result<Option<Image>> {
    if p.is_null() {
        return Ok(None);
    }
    let img = &*p;
    if img.data.is_null() {
        return Err(Error::InvalidArgument(format!("{what}.data is NULL")));
    }
    if !matches!(img.channels, 1 | 3 | 4) || img.width == 0 || img.height == 0 {
        return Err(Error::InvalidArgument(format!(
            "{what} is {}x{}x{}: width and height must be positive and channels 1, 3 or 4",
            img.width, img.height, img.channels
        )));
    }
    if img.width > MAX_DECODE_SIDE || img.height > MAX_DECODE_SIDE {
        return Err(Error::InvalidArgument(format!(
            "{what} is {}x{}: larger than {MAX_DECODE_SIDE} pixels per side",
            img.width, img.height
        )));
    }
    let (width, height) = (img.width as usize, img.height as usize);
    let row = width * img.channels as usize;
    let stride = if img.stride == 0 { row } else { img.stride as usize };
    if stride < row {
        return Err(Error::InvalidArgument(format!(
            "{what}.stride {stride} is smaller than width × channels = {row}"
        )));
    }
    // The last row starts at (height - 1) · stride; the whole span must be addressable.
    let span = (height - 1).checked_mul(stride).and_then(|n| n.checked_add(row));
    if span.is_none_or(|n| n > isize::MAX as usize) {
        return Err(Error::InvalidArgument(format!(
            "{what}: {height} rows of stride {stride} exceed the address space"
        )));
    }
    let total = row * height;
    let mut data = Vec::new();
    data.try_reserve_exact(total).map_err(|_| {
        Error::InvalidArgument(format!(
            "{what}: cannot allocate {total} bytes to copy a {width}x{height} image"
        ))
    })?;
    for y in 0..height {
        data.extend_from_slice(std::slice::from_raw_parts(img.data.add(y * stride), row));
    }
    Image::new(img.width, img.height, img.channels, data).map(Some)
}

/// The scheduler overrides: a JSON object (Python's bare `-Infinity`/`NaN` tokens accepted).
unsafe fn scheduler_config(p: *const c_char) -> Result<Option<serde_json::Value>> {
    let Some(text) = opt_str(p, "scheduler_config_json")? else {
        return Ok(None);
    };
    let text = crate::schedulers::python_json(&text);
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(Some(v)),
        Ok(_) => Err(Error::InvalidArgument(
            "scheduler_config_json must be a JSON object such as {\"use_karras_sigmas\": true}".into(),
        )),
        Err(e) => Err(Error::InvalidArgument(format!(
            "scheduler_config_json is not valid JSON: {e}"
        ))),
    }
}

pub unsafe fn run_params(p: &ap_run_params) -> Result<RunParams> {
    check_size(
        p.struct_size,
        std::mem::size_of::<ap_run_params>(),
        "ap_run_params",
    )?;
    let output_channels = match p.output_channels {
        0 | 4 => 4,
        3 => 3,
        v => {
            return Err(Error::InvalidArgument(format!(
                "output_channels is {v}: use 3 (RGB8) or 4 (RGBA8)"
            )))
        }
    };
    Ok(RunParams {
        prompt: str_arg(p.prompt, "prompt")?.to_string(),
        negative_prompt: opt_str(p.negative_prompt, "negative_prompt")?,
        prompt_2: opt_str(p.prompt_2, "prompt_2")?,
        negative_prompt_2: opt_str(p.negative_prompt_2, "negative_prompt_2")?,
        num_inference_steps: opt_positive(p.num_inference_steps, "num_inference_steps")?,
        guidance_scale: opt_f32(p.guidance_scale, "guidance_scale")?,
        strength: opt_f32(p.strength, "strength")?,
        width: opt_positive(p.width, "width")?,
        height: opt_positive(p.height, "height")?,
        seed: p.seed,
        rng: crate::rng::RngKind::parse(opt_str(p.rng, "rng")?.as_deref())?,
        num_images_per_prompt: opt_positive(p.num_images_per_prompt, "num_images_per_prompt")?.unwrap_or(1),
        guidance_rescale: opt_f32(p.guidance_rescale, "guidance_rescale")?.unwrap_or(0.0),
        clip_skip: opt_positive(p.clip_skip, "clip_skip")?,
        image: image(p.image, "image")?,
        mask: image(p.mask, "mask")?,
        padding_mask_crop: opt_positive(p.padding_mask_crop, "padding_mask_crop")?.map(|v| v as u32),
        scheduler: opt_str(p.scheduler, "scheduler")?,
        scheduler_config: scheduler_config(p.scheduler_config_json)?,
        output_channels,
        vae_tiling: p.vae_tiling != 0,
        vae_slicing: p.vae_slicing != 0,
        ..RunParams::default()
    })
}
