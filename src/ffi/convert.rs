//! Typed conversions between C values and Rust ones, in one place: arguments in (strings, images,
//! parameter structs), images out (and their release, which must mirror how they were allocated).

use super::types::*;
use crate::error::{Error, Result};
use crate::image::{Image, MAX_DECODE_SIDE};
use crate::pipeline::{LoadOptions, RunParams};
use crate::registry::Task;
use std::ffi::{c_char, CStr};

/// The error for a required pointer argument that is NULL.
pub fn null(what: &str) -> Error {
    Error::InvalidArgument(format!("{what} is NULL"))
}

/// A required UTF-8 string argument.
pub unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(null(what));
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

/// Load options from parameters already read at the caller's size (`abi::read`).
pub unsafe fn load_options(p: &ap_load_params) -> Result<LoadOptions> {
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
    Ok((v >= 0.0).then_some(f32_as_written(v)))
}

/// The double a caller meant by a `float` field: the shortest decimal that reads back as `v` (`0.9f`
/// becomes 0.9, not 0.899999976…). diffusers computes with Python floats, and a widened `0.7f` would
/// cut `int(10 · strength)` to 6 where diffusers takes 7.
fn f32_as_written(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
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

/// `count` finite values at `p` (NULL with a count is an error; a count of 0 is "none").
unsafe fn opt_f64s(p: *const f64, count: u32, what: &str, count_name: &str) -> Result<Option<Vec<f64>>> {
    if count == 0 {
        return Ok(None);
    }
    if p.is_null() {
        return Err(Error::InvalidArgument(format!(
            "{what} is NULL but {count_name} is {count}: pass {count} values, or {count_name} 0 for none"
        )));
    }
    // A schedule is at most one value per step (and one more): refuse a count that cannot be one
    // before reading or allocating that much.
    if count as usize > crate::pipeline::generate::MAX_STEPS + 1 {
        return Err(Error::InvalidArgument(format!(
            "{count_name} is {count}; a schedule has at most {} values",
            crate::pipeline::generate::MAX_STEPS + 1
        )));
    }
    let values = std::slice::from_raw_parts(p, count as usize).to_vec();
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "{what}[{i}] is {v}; every value must be finite"
        )));
    }
    Ok(Some(values))
}

/// SD3's `skip_guidance_layers`: `count` block indices (0 = off).
unsafe fn layers(p: *const u32, count: u32) -> Result<Option<Vec<usize>>> {
    if count == 0 {
        return Ok(None);
    }
    if p.is_null() {
        return Err(Error::InvalidArgument(format!(
            "skip_guidance_layers is NULL but num_skip_guidance_layers is {count}"
        )));
    }
    if count > 1024 {
        return Err(Error::InvalidArgument(format!(
            "num_skip_guidance_layers is {count}; a transformer has at most 1024 blocks"
        )));
    }
    Ok(Some(
        std::slice::from_raw_parts(p, count as usize)
            .iter()
            .map(|&l| l as usize)
            .collect(),
    ))
}

/// Run parameters from a struct already read at the caller's size (`abi::read`).
// Every field is set today; the update stays so that a field added to `RunParams` takes its default
// here until the C ABI grows one for it.
#[allow(clippy::needless_update)]
pub unsafe fn run_params(p: &ap_run_params) -> Result<RunParams> {
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
        timesteps: opt_f64s(p.timesteps, p.num_timesteps, "timesteps", "num_timesteps")?,
        sigmas: opt_f64s(p.sigmas, p.num_sigmas, "sigmas", "num_sigmas")?,
        max_sequence_length: opt_positive(p.max_sequence_length, "max_sequence_length")?,
        true_cfg_scale: opt_f32(p.true_cfg_scale, "true_cfg_scale")?,
        prompt_3: opt_str(p.prompt_3, "prompt_3")?,
        negative_prompt_3: opt_str(p.negative_prompt_3, "negative_prompt_3")?,
        skip_guidance_layers: layers(p.skip_guidance_layers, p.num_skip_guidance_layers)?,
        skip_layer_guidance_scale: opt_f32(p.skip_layer_guidance_scale, "skip_layer_guidance_scale")?,
        skip_layer_guidance_start: opt_f32(p.skip_layer_guidance_start, "skip_layer_guidance_start")?,
        skip_layer_guidance_stop: opt_f32(p.skip_layer_guidance_stop, "skip_layer_guidance_stop")?,
        ..RunParams::default()
    })
}

/// Hands `text` to C as a NUL-terminated string; release it with [`free_string`]. (JSON and
/// messages never hold NUL; one would end the C string early rather than fail.)
pub fn string_to_c(text: String) -> *mut c_char {
    let text = match text.find('\0') {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    std::ffi::CString::new(text).unwrap_or_default().into_raw()
}

/// Releases what [`string_to_c`] allocated.
///
/// # Safety
/// `s` is non-NULL, from [`string_to_c`], not released yet.
pub unsafe fn free_string(s: *mut c_char) {
    drop(std::ffi::CString::from_raw(s));
}

/// Hands `images` to C as one `ap_images` allocation; release it with [`free_images`].
pub fn images_to_c(images: Vec<Image>) -> *mut ap_images {
    let list: Vec<ap_image> = images.into_iter().map(image_to_c).collect();
    let count = list.len();
    let images = Box::into_raw(list.into_boxed_slice()) as *mut ap_image;
    Box::into_raw(Box::new(ap_images { count, images }))
}

/// An image as C sees it; its pixels are released by [`free_image_data`].
pub fn image_to_c(img: Image) -> ap_image {
    let stride = img.width * img.channels;
    let data = Box::into_raw(img.data.into_boxed_slice()) as *mut u8;
    ap_image {
        width: img.width,
        height: img.height,
        channels: img.channels,
        stride,
        data,
    }
}

/// Releases what [`images_to_c`] allocated.
///
/// # Safety
/// `images` is non-NULL, from [`images_to_c`], not released yet.
pub unsafe fn free_images(images: *mut ap_images) {
    let list = Box::from_raw(images);
    let slice = Box::from_raw(std::ptr::slice_from_raw_parts_mut(list.images, list.count));
    for img in slice.iter() {
        free_image_data(img);
    }
}

/// Releases the pixels of an image made by [`image_to_c`] (packed rows: `stride × height` bytes).
///
/// # Safety
/// `img.data` is from [`image_to_c`], not released yet.
pub unsafe fn free_image_data(img: &ap_image) {
    let len = img.stride as usize * img.height as usize;
    drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(img.data, len)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_fields_mean_the_decimal_the_caller_wrote() {
        assert_eq!(f32_as_written(0.9), 0.9);
        assert_eq!(f32_as_written(0.7), 0.7);
        // What the widening cast gave: diffusers' `int(10 * 0.7)` is 7, with it 6.
        assert_eq!((10.0 * 0.7f32 as f64) as usize, 6);
        assert_eq!((10.0 * f32_as_written(0.7)) as usize, 7);
        assert_eq!(f32_as_written(7.5), 7.5);
        // Every float maps back to itself.
        for v in [f32::MAX, f32::MIN_POSITIVE, 1e-30, 123.456] {
            assert_eq!(f32_as_written(v) as f32, v);
        }
    }

    #[test]
    fn custom_timesteps_and_sigmas_reach_run_params() {
        let (ts, sigmas) = ([999.0, 500.0, 1.0], [14.6, 1.0, 0.0]);
        let mut p = crate::ffi::ap_run_params_default();
        p.timesteps = ts.as_ptr();
        p.num_timesteps = 3;
        p.sigmas = sigmas.as_ptr();
        p.num_sigmas = 2;
        let run = unsafe { run_params(&p) }.unwrap();
        assert_eq!(run.timesteps.as_deref(), Some(&ts[..]));
        assert_eq!(run.sigmas.as_deref(), Some(&sigmas[..2]));
        let run = unsafe { run_params(&crate::ffi::ap_run_params_default()) }.unwrap();
        assert_eq!((run.timesteps, run.sigmas), (None, None));
    }
}
