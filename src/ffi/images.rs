//! Image files: reading one into an `ap_image` for the run parameters, writing one to PNG.

use super::convert::{self, null};
use super::handles::{into_handle, Out};
use super::types::ap_image;
use super::{ap_status, guard};
use std::ffi::c_char;

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
        let out = Out::new(out)?;
        let path = convert::str_arg(path, "path")?;
        let img = crate::image::Image::load(std::path::Path::new(path))?;
        out.set(into_handle(convert::image_to_c(img)));
        Ok(())
    })
}
