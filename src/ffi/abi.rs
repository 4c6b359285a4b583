//! Parameter structs that grow without breaking compiled callers.
//!
//! A caller compiled against an older header hands us a struct that ends early: its `struct_size`
//! says how much of it exists. We accept every size from the first published layout to the current
//! one, read (or write) only the fields that lie wholly inside it, and give the others their
//! defaults. The first published layouts are frozen below as `#[repr(C)]` copies, so their sizes
//! come from the compiler for every target (not from numbers that hold on one platform), and the
//! const assertions make any edit of the published prefix a compile error.

use super::types::{ap_job_status, ap_load_params, ap_run_params};
use super::{ap_status, guard, guard_or};
use crate::error::{Error, Result};
use std::mem::{offset_of, size_of};

/// The layouts published in 0.1.0, exactly as `tests/abi/autopipeline-0.1.0.h` declares them. Never
/// edit: old binaries are built against these. (Named apart from the current structs, and ignored by
/// cbindgen, which knows no modules: a frozen `ap_run_params` would replace the current one in the
/// header.)
#[allow(dead_code)]
pub mod v0_1_0 {
    use super::super::types::{ap_image, ap_preview_fn, ap_progress_fn};
    use std::ffi::{c_char, c_void};

    #[repr(C)]
    #[derive(Clone, Copy)]
    /// cbindgen:ignore
    pub struct LoadParams {
        pub struct_size: u32,
        pub device: *const c_char,
        pub variant: *const c_char,
        pub revision: *const c_char,
        pub cache_dir: *const c_char,
        pub token: *const c_char,
        pub local_files_only: i32,
        pub progress: ap_progress_fn,
        pub progress_user_data: *mut c_void,
        pub dtype: *const c_char,
        pub preload: i32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    /// cbindgen:ignore
    pub struct RunParams {
        pub struct_size: u32,
        pub prompt: *const c_char,
        pub negative_prompt: *const c_char,
        pub prompt_2: *const c_char,
        pub negative_prompt_2: *const c_char,
        pub num_inference_steps: i32,
        pub guidance_scale: f32,
        pub strength: f32,
        pub width: i32,
        pub height: i32,
        pub seed: u64,
        pub num_images_per_prompt: i32,
        pub guidance_rescale: f32,
        pub clip_skip: i32,
        pub output_channels: i32,
        pub image: *const ap_image,
        pub mask: *const ap_image,
        pub padding_mask_crop: i32,
        pub scheduler: *const c_char,
        pub scheduler_config_json: *const c_char,
        pub progress: ap_progress_fn,
        pub progress_user_data: *mut c_void,
        pub preview: ap_preview_fn,
        pub preview_user_data: *mut c_void,
        pub preview_every: i32,
        pub preview_mode: i32,
        pub vae_tiling: i32,
        pub vae_slicing: i32,
        pub rng: *const c_char,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    /// cbindgen:ignore
    pub struct JobStatus {
        pub struct_size: u32,
        pub state: i32,
        pub step: u32,
        pub total: u32,
        pub elapsed_seconds: f64,
    }
}

/// Compile-time proof that `$new` starts with `$old`'s fields at `$old`'s offsets, and that no later
/// field starts inside `$old`'s tail padding (an old caller's padding bytes would read as that field).
macro_rules! extends {
    ($old:ty => $new:ty { $($f:ident),* $(,)? } then $first_added:ident) => {
        $(const _: () = assert!(offset_of!($old, $f) == offset_of!($new, $f));)*
        const _: () = assert!(offset_of!($new, $first_added) >= size_of::<$old>());
    };
    ($old:ty => $new:ty { $($f:ident),* $(,)? }) => {
        $(const _: () = assert!(offset_of!($old, $f) == offset_of!($new, $f));)*
        const _: () = assert!(size_of::<$new>() == size_of::<$old>());
    };
}

extends!(v0_1_0::LoadParams => ap_load_params {
    struct_size, device, variant, revision, cache_dir, token, local_files_only, progress,
    progress_user_data, dtype, preload,
});
extends!(v0_1_0::RunParams => ap_run_params {
    struct_size, prompt, negative_prompt, prompt_2, negative_prompt_2, num_inference_steps,
    guidance_scale, strength, width, height, seed, num_images_per_prompt, guidance_rescale, clip_skip,
    output_channels, image, mask, padding_mask_crop, scheduler, scheduler_config_json, progress,
    progress_user_data, preview, preview_user_data, preview_every, preview_mode, vae_tiling,
    vae_slicing, rng,
} then timesteps);
extends!(v0_1_0::JobStatus => ap_job_status {
    struct_size, state, step, total, elapsed_seconds,
});

/// The size of a field, from an accessor (so the table below names fields, not their types).
const fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// Where field `$f` of `$t` ends.
macro_rules! end_of {
    ($t:ty, $f:ident) => {
        offset_of!($t, $f) + field_size(|p: &$t| &p.$f)
    };
}

/// A parameter struct of the C ABI that may grow at its end. Starts with a `u32` `struct_size`.
///
/// # Safety
/// The implementor is `#[repr(C)]`, starts with `struct_size: u32`, every bit pattern of each field
/// is valid (integers, floats, raw pointers, optional function pointers), and `ADDED_FIELD_ENDS`
/// lists the end of every field after the first published layout.
pub(super) unsafe trait Growable: Copy {
    /// The C name, for messages.
    const NAME: &'static str;
    /// `sizeof` of the first published layout: the smallest `struct_size` accepted.
    const FIRST_SIZE: usize;
    /// Where each field added since the first published layout ends, ascending.
    const ADDED_FIELD_ENDS: &'static [usize];
    /// Every field at its default, `struct_size` the current size.
    fn defaults() -> Self;
}

unsafe impl Growable for ap_load_params {
    const NAME: &'static str = "ap_load_params";
    const FIRST_SIZE: usize = size_of::<v0_1_0::LoadParams>();
    const ADDED_FIELD_ENDS: &'static [usize] = &[];
    fn defaults() -> Self {
        ap_load_params {
            struct_size: size_of::<Self>() as u32,
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
}

unsafe impl Growable for ap_run_params {
    const NAME: &'static str = "ap_run_params";
    const FIRST_SIZE: usize = size_of::<v0_1_0::RunParams>();
    const ADDED_FIELD_ENDS: &'static [usize] = &[
        end_of!(ap_run_params, timesteps),
        end_of!(ap_run_params, num_timesteps),
        end_of!(ap_run_params, sigmas),
        end_of!(ap_run_params, num_sigmas),
        end_of!(ap_run_params, max_sequence_length),
        end_of!(ap_run_params, true_cfg_scale),
        end_of!(ap_run_params, prompt_3),
        end_of!(ap_run_params, negative_prompt_3),
        end_of!(ap_run_params, skip_guidance_layers),
        end_of!(ap_run_params, num_skip_guidance_layers),
        end_of!(ap_run_params, skip_layer_guidance_scale),
        end_of!(ap_run_params, skip_layer_guidance_start),
        end_of!(ap_run_params, skip_layer_guidance_stop),
    ];
    fn defaults() -> Self {
        ap_run_params {
            struct_size: size_of::<Self>() as u32,
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
            preview_mode: super::types::AP_PREVIEW_LATENT,
            vae_tiling: 0,
            vae_slicing: 0,
            rng: std::ptr::null(),
            timesteps: std::ptr::null(),
            num_timesteps: 0,
            sigmas: std::ptr::null(),
            num_sigmas: 0,
            reserved0: 0,
            max_sequence_length: 0,
            true_cfg_scale: -1.0,
            prompt_3: std::ptr::null(),
            negative_prompt_3: std::ptr::null(),
            skip_guidance_layers: std::ptr::null(),
            num_skip_guidance_layers: 0,
            skip_layer_guidance_scale: -1.0,
            skip_layer_guidance_start: -1.0,
            skip_layer_guidance_stop: -1.0,
        }
    }
}

unsafe impl Growable for ap_job_status {
    const NAME: &'static str = "ap_job_status";
    const FIRST_SIZE: usize = size_of::<v0_1_0::JobStatus>();
    const ADDED_FIELD_ENDS: &'static [usize] = &[];
    fn defaults() -> Self {
        ap_job_status {
            struct_size: size_of::<Self>() as u32,
            state: super::types::AP_JOB_QUEUED,
            step: 0,
            total: 0,
            elapsed_seconds: 0.0,
        }
    }
}

/// `size` checked against the accepted range of `T`.
fn check<T: Growable>(size: usize, what: &str) -> Result<usize> {
    let (lo, hi) = (T::FIRST_SIZE, size_of::<T>());
    if (lo..=hi).contains(&size) {
        return Ok(size);
    }
    let name = T::NAME;
    Err(Error::InvalidArgument(format!(
        "{what} is {size}, but this library accepts an {name} of {lo} (version 0.1.0) to {hi} bytes: \
         initialise it with {name}_init(&p, sizeof p) (or {name}_default()) from the header you compile with"
    )))
}

/// How many leading bytes of a caller's `size`-byte struct hold whole fields of `T`: fields cut by
/// `size` (which no real header produces, but a caller may claim) are left out, not half-read.
fn whole_fields<T: Growable>(size: usize) -> usize {
    T::ADDED_FIELD_ENDS
        .iter()
        .copied()
        .filter(|&end| end <= size)
        .fold(T::FIRST_SIZE, usize::max)
}

/// The caller's `struct_size`, read on its own: until it is checked we may not touch more than it.
unsafe fn caller_size<T: Growable>(p: *const T) -> Result<usize> {
    check::<T>(
        p.cast::<u32>().read_unaligned() as usize,
        &format!("{}.struct_size", T::NAME),
    )
}

/// A copy of the caller's struct at `p`, fields past its `struct_size` at their defaults.
///
/// # Safety
/// `p` is non-NULL and points to at least 4 readable bytes, and to `struct_size` bytes when that
/// size is accepted.
pub(super) unsafe fn read<T: Growable>(p: *const T) -> Result<T> {
    let size = caller_size(p)?;
    let mut value = T::defaults();
    std::ptr::copy_nonoverlapping(
        p.cast::<u8>(),
        (&mut value as *mut T).cast::<u8>(),
        whole_fields::<T>(size),
    );
    Ok(value)
}

/// The caller's load parameters at its size, or the defaults for NULL (load parameters are optional).
///
/// # Safety
/// As [`read`], or NULL.
pub(super) unsafe fn load_params(p: *const ap_load_params) -> Result<ap_load_params> {
    if p.is_null() {
        Ok(ap_load_params::defaults())
    } else {
        read(p)
    }
}

/// The caller's run parameters at its size (required: at least the prompt is the caller's).
///
/// # Safety
/// As [`read`], or NULL (an error).
pub(super) unsafe fn run_params(p: *const ap_run_params) -> Result<ap_run_params> {
    if p.is_null() {
        return Err(super::convert::null("params"));
    }
    read(p)
}

/// Writes `value` into the caller's struct at `p` up to its `struct_size`, which stays as it was.
///
/// # Safety
/// As [`read`], the bytes writable.
pub(super) unsafe fn write<T: Growable>(p: *mut T, value: &T) -> Result<()> {
    let size = caller_size(p)?;
    let skip = size_of::<u32>(); // struct_size: the caller's, not ours
    std::ptr::copy_nonoverlapping(
        (value as *const T).cast::<u8>().add(skip),
        p.cast::<u8>().add(skip),
        whole_fields::<T>(size) - skip,
    );
    Ok(())
}

/// Fills the caller's `size`-byte struct at `p` with the defaults and `struct_size = size`.
///
/// # Safety
/// `p` is NULL (an error) or points to `size` writable bytes.
pub(super) unsafe fn init<T: Growable>(p: *mut T, size: usize) -> Result<()> {
    if p.is_null() {
        return Err(super::convert::null(T::NAME));
    }
    let size = check::<T>(size, "size")?;
    let defaults = T::defaults();
    // Bytes past the last whole field (tail padding) are zeroed rather than left as they were.
    std::ptr::write_bytes(p.cast::<u8>(), 0, size);
    std::ptr::copy_nonoverlapping(
        (&defaults as *const T).cast::<u8>(),
        p.cast::<u8>(),
        whole_fields::<T>(size),
    );
    p.cast::<u32>().write_unaligned(size as u32);
    Ok(())
}

/// The 0.1.0 layout of `T` filled with the defaults, for the legacy by-value `*_default()` symbols.
pub(super) fn first_layout<T: Growable, Old: Copy>() -> Old {
    debug_assert_eq!(size_of::<Old>(), T::FIRST_SIZE);
    let mut old = std::mem::MaybeUninit::<Old>::zeroed();
    // SAFETY: `Old` is `T`'s first published layout, so FIRST_SIZE bytes are its whole size, and
    // every bit pattern (zero included) is a valid value of its fields.
    unsafe {
        let _ = init::<T>(old.as_mut_ptr().cast::<T>(), T::FIRST_SIZE);
        old.assume_init()
    }
}

// ---- The exported defaults ------------------------------------------------------------------------
//
// `*_init(p, size)` fill a struct of the caller's size. The `*_default()` that 0.1.0 exported return
// the struct by value, which cannot grow (the caller's return slot has the size of its own header):
// their symbols stay, frozen at the 0.1.0 layout, for binaries built against 0.1.0, while the header
// now defines `*_default()` as `static inline` wrappers of `*_init` (in cbindgen.toml's trailer)
// and no longer declares the symbols.

/// Fills `*params` with the load defaults and sets `params->struct_size = size`. Pass
/// `sizeof(ap_load_params)`: any size from the 0.1.0 layout's to this header's is accepted, so a
/// binary built against an older header keeps working. Writes exactly `size` bytes (nothing when it
/// fails). `AP_ERR_INVALID_ARGUMENT` when `params` is NULL or `size` is out of range. Thread-safe, as
/// are the other `*_init`.
///
/// # Safety
/// `params` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ap_load_params_init(params: *mut ap_load_params, size: usize) -> ap_status {
    guard(|| init(params, size))
}

/// Fills `*params` with the run defaults (every field "the pipeline's default", an empty prompt, seed
/// 0) and sets `params->struct_size = size`. Pass `sizeof(ap_run_params)`; as `ap_load_params_init`.
///
/// # Safety
/// `params` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ap_run_params_init(params: *mut ap_run_params, size: usize) -> ap_status {
    guard(|| init(params, size))
}

/// Zeroes `*status` (state `AP_JOB_QUEUED`) and sets `status->struct_size = size`, ready for
/// `ap_job_poll`. Pass `sizeof(ap_job_status)`; as `ap_load_params_init`.
///
/// # Safety
/// `status` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ap_job_status_init(status: *mut ap_job_status, size: usize) -> ap_status {
    guard(|| init(status, size))
}

/// For Rust callers: the current `ap_load_params` at its defaults (C's inline `ap_load_params_default`).
pub fn ap_load_params_default() -> ap_load_params {
    ap_load_params::defaults()
}

/// For Rust callers: the current `ap_run_params` at its defaults (C's inline `ap_run_params_default`).
pub fn ap_run_params_default() -> ap_run_params {
    ap_run_params::defaults()
}

/// For Rust callers: the current `ap_job_status`, zeroed (C's inline `ap_job_status_default`).
pub fn ap_job_status_default() -> ap_job_status {
    ap_job_status::defaults()
}

/// The 0.1.0 symbol `ap_load_params_default`, for binaries built against 0.1.0.
///
/// cbindgen:ignore
#[export_name = "ap_load_params_default"]
pub extern "C" fn ap_load_params_default_0_1_0() -> v0_1_0::LoadParams {
    guard_or(zeroed_with_size, first_layout::<ap_load_params, _>)
}

/// The 0.1.0 symbol `ap_run_params_default`, for binaries built against 0.1.0.
///
/// cbindgen:ignore
#[export_name = "ap_run_params_default"]
pub extern "C" fn ap_run_params_default_0_1_0() -> v0_1_0::RunParams {
    guard_or(zeroed_with_size, first_layout::<ap_run_params, _>)
}

/// The 0.1.0 symbol `ap_job_status_default`, for binaries built against 0.1.0.
///
/// cbindgen:ignore
#[export_name = "ap_job_status_default"]
pub extern "C" fn ap_job_status_default_0_1_0() -> v0_1_0::JobStatus {
    guard_or(zeroed_with_size, first_layout::<ap_job_status, _>)
}

/// The fallback of the legacy `*_default()` should filling it ever panic: all zero (NULL, 0, None, all
/// valid) with its `struct_size`.
fn zeroed_with_size<Old: Copy>() -> Old {
    let mut old = std::mem::MaybeUninit::<Old>::zeroed();
    // SAFETY: the frozen layouts hold integers, floats, raw and optional function pointers, for which
    // zero is valid; each starts with its `u32` struct_size.
    unsafe {
        old.as_mut_ptr().cast::<u32>().write(size_of::<Old>() as u32);
        old.assume_init()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published sizes on 64-bit targets, as a C compiler lays out the frozen header (the C test
    /// in `tests/abi.rs` checks them against the header itself).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn first_layouts_have_the_published_sizes() {
        assert_eq!(<ap_load_params as Growable>::FIRST_SIZE, 88);
        assert_eq!(<ap_run_params as Growable>::FIRST_SIZE, 184);
        assert_eq!(<ap_job_status as Growable>::FIRST_SIZE, 24);
        // 0.1.1 (custom timesteps and sigmas): 216; 0.1.2 (FLUX's max_sequence_length and
        // true_cfg_scale, SD3's third prompts and skip-layer guidance): 264.
        assert_eq!(size_of::<ap_run_params>(), 264);
    }

    #[test]
    fn sizes_cut_inside_a_field_leave_that_field_out() {
        let first = <ap_run_params as Growable>::FIRST_SIZE;
        assert_eq!(whole_fields::<ap_run_params>(first), first);
        assert_eq!(whole_fields::<ap_run_params>(first + 7), first);
        assert_eq!(whole_fields::<ap_run_params>(first + 8), first + 8); // timesteps
        assert_eq!(whole_fields::<ap_run_params>(first + 16), first + 12); // + num_timesteps
                                                                           // 0.1.1's sizeof (216) ends in padding: no field may be read from it.
        assert_eq!(whole_fields::<ap_run_params>(first + 32), first + 28);
        assert_eq!(whole_fields::<ap_run_params>(first + 36), first + 36); // + max_sequence_length
        assert_eq!(
            whole_fields::<ap_run_params>(size_of::<ap_run_params>()),
            size_of::<ap_run_params>()
        );
    }

    #[test]
    fn a_partial_struct_reads_defaults_past_its_size() {
        let mut caller = ap_run_params::defaults();
        caller.num_inference_steps = 3;
        let ts = [1.0f64];
        caller.timesteps = ts.as_ptr();
        caller.num_timesteps = 1;
        caller.sigmas = ts.as_ptr();
        caller.num_sigmas = 1;
        caller.struct_size = (<ap_run_params as Growable>::FIRST_SIZE + 16) as u32;
        let got = unsafe { read(&caller) }.unwrap();
        assert_eq!(got.num_inference_steps, 3);
        assert_eq!((got.timesteps, got.num_timesteps), (ts.as_ptr(), 1));
        assert_eq!((got.sigmas, got.num_sigmas), (std::ptr::null(), 0));
    }

    #[test]
    fn out_of_range_sizes_name_the_struct_and_the_range() {
        let (lo, hi) = (
            <ap_run_params as Growable>::FIRST_SIZE as u32,
            size_of::<ap_run_params>() as u32,
        );
        for size in [0, 4, lo - 1, hi + 1, u32::MAX] {
            let mut p = ap_run_params::defaults();
            p.struct_size = size;
            let Err(Error::InvalidArgument(msg)) = (unsafe { read(&p) }) else {
                panic!("size {size} accepted")
            };
            assert!(
                msg.contains("ap_run_params.struct_size") && msg.contains(&size.to_string()),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("{lo} (version 0.1.0) to {hi} bytes")),
                "{msg}"
            );
        }
    }

    #[test]
    fn writes_stop_at_the_callers_size() {
        let mut bytes = [0xAAu8; 64];
        let p = bytes.as_mut_ptr().cast::<ap_job_status>();
        unsafe { init(p, 24) }.unwrap();
        assert!(bytes[24..].iter().all(|&b| b == 0xAA));
        let mut full = ap_job_status::defaults();
        full.state = 2;
        full.elapsed_seconds = 1.5;
        unsafe { write(p, &full) }.unwrap();
        assert!(bytes[24..].iter().all(|&b| b == 0xAA));
        let back = unsafe { read(p as *const ap_job_status) }.unwrap();
        assert_eq!((back.struct_size, back.state, back.elapsed_seconds), (24, 2, 1.5));
    }
}
