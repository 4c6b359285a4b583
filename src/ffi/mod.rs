//! The C ABI: the only place with `extern "C"` and raw pointers. Every function null-checks its
//! arguments, converts them in one place (`convert`), runs inside `guard` (or `guard_or`, for the few
//! without a status) so no panic crosses the boundary, and returns an `ap_status` with details in the
//! thread-local `ap_last_error()`.
//!
//! Layers, each using only those above it:
//! - `types`: the `#[repr(C)]` structs, constants and callback types;
//! - `convert`: C values to Rust ones and back (strings, images, parameter structs);
//! - `abi`: growable parameter structs (the 0.1.0 layouts frozen, `struct_size` ranges, reading and
//!   writing at the caller's size, `*_init`);
//! - `callbacks`: `user_data`, progress / preview / log closures, the gate of a job's callbacks;
//! - `handles`: the opaque handles, their boxing, and every free function;
//! - `api` (pipelines), `jobs` (async), `images`, `info` (JSON introspection), `random`: the exported
//!   functions.

// cbindgen writes the header in the order of these declarations; the blank lines keep rustfmt from
// sorting them.
mod types;

mod abi;

mod api;

mod images;

mod jobs;

mod info;

mod random;

mod handles;

mod callbacks;

mod convert;

pub use abi::*;
pub use api::*;
pub use handles::*;
pub use images::*;
pub use info::*;
pub use jobs::*;
pub use random::*;
pub use types::*;

use crate::error::Error;
use std::cell::RefCell;
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Result code of every `ap_*` function.
#[allow(non_camel_case_types)]
pub type ap_status = i32;

/// Success.
pub const AP_OK: ap_status = 0;
/// A parameter is invalid (NULL where a value is required, bad size, NaN, invalid UTF-8, …).
pub const AP_ERR_INVALID_ARGUMENT: ap_status = 1;
/// A file, folder or hub repository was not found.
pub const AP_ERR_NOT_FOUND: ap_status = 2;
/// The checkpoint or request is valid but not supported (unknown pipeline family, 9-channel UNet for
/// text-to-image, CUDA in a CPU-only build, …).
pub const AP_ERR_UNSUPPORTED: ap_status = 3;
/// A checkpoint file is malformed (invalid JSON, truncated safetensors, wrong tensor shapes, …).
pub const AP_ERR_INVALID_MODEL: ap_status = 4;
/// Reading a file or reaching the hub failed.
pub const AP_ERR_IO: ap_status = 5;
/// A progress callback returned 0.
pub const AP_ERR_CANCELLED: ap_status = 6;
/// A bug inside the library (including a caught panic): please report it with `ap_last_error()`.
pub const AP_ERR_INTERNAL: ap_status = 7;
/// `ap_job_wait`'s timeout passed before the job finished (the job goes on).
pub const AP_ERR_TIMEOUT: ap_status = 8;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone, and there is nobody left to read it.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

pub(crate) fn last_error_ptr() -> *const std::ffi::c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The status code for an error, setting the thread's last-error message.
pub(crate) fn fail(err: &Error) -> ap_status {
    // One clean line whatever produced it (a backtrace from `RUST_BACKTRACE` never reaches the caller).
    set_last_error(&crate::error::one_line(&err.to_string()));
    match err {
        Error::InvalidArgument(_) => AP_ERR_INVALID_ARGUMENT,
        Error::NotFound(_) => AP_ERR_NOT_FOUND,
        Error::Unsupported(_) => AP_ERR_UNSUPPORTED,
        Error::InvalidModel(_) => AP_ERR_INVALID_MODEL,
        Error::Io(_) => AP_ERR_IO,
        Error::Cancelled => AP_ERR_CANCELLED,
        Error::Internal(_) => AP_ERR_INTERNAL,
    }
}

/// Runs `body`, turning a panic into `Error::Internal`: the one place that catches panics.
fn catch<T>(body: impl FnOnce() -> crate::Result<T>) -> crate::Result<T> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        // The payload is dropped here, inside the boundary: a payload whose drop panics would
        // otherwise unwind out of the caller's frame.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(panic)));
        Err(Error::Internal(format!("internal error (caught panic): {what}")))
    })
}

/// The panic boundary of every function returning `ap_status`: neither an error nor a panic
/// escapes; success clears the thread's last error, a failure sets it.
pub(crate) fn guard(body: impl FnOnce() -> crate::Result<()>) -> ap_status {
    match catch(body) {
        Ok(()) => {
            set_last_error("");
            AP_OK
        }
        Err(e) => fail(&e),
    }
}

/// The panic boundary of the functions that return no status (free functions, getters, the legacy
/// `*_default()`): a panic sets the last error and returns `fallback()`. Success leaves the last
/// error alone, so `ap_images_free` after a failed call does not erase its message.
pub(crate) fn guard_or<T>(fallback: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    match catch(|| Ok(body())) {
        Ok(v) => v,
        Err(e) => {
            fail(&e);
            fallback()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_header_is_current() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/autopipeline.h"));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/autopipeline.h");
        let committed = std::fs::read_to_string(path).expect("include/autopipeline.h exists");
        assert!(
            generated == committed,
            "include/autopipeline.h is stale: regenerate it with `AP_WRITE_HEADER=1 cargo build` and commit it"
        );
    }

    /// Everything the header declares is in the `ap_` / `AP_` namespace (C has one global namespace, so a
    /// stray Rust constant would collide in users' code).
    #[test]
    fn header_names_are_prefixed() {
        let header = include_str!(concat!(env!("OUT_DIR"), "/autopipeline.h"));
        for line in header.lines() {
            let name = if let Some(rest) = line.strip_prefix("#define ") {
                rest.split_whitespace().next().unwrap_or("")
            } else if let Some(rest) = line.strip_prefix("typedef struct ") {
                rest.split_whitespace().next().unwrap_or("")
            } else {
                continue;
            };
            let ok = name.starts_with("ap_") || name.starts_with("AP_") || name.starts_with("AUTOPIPELINE_");
            assert!(
                ok,
                "header declares {name:?} outside the ap_ namespace: exclude it in cbindgen.toml"
            );
        }
    }

    #[test]
    fn panics_become_internal_errors() {
        let status = super::guard(|| panic!("boom"));
        assert_eq!(status, super::AP_ERR_INTERNAL);
        let msg = unsafe { std::ffi::CStr::from_ptr(super::last_error_ptr()) }
            .to_str()
            .unwrap()
            .to_string();
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn panics_in_functions_without_a_status_set_the_last_error() {
        let v = super::guard_or(|| 7, || panic!("free failed"));
        assert_eq!(v, 7);
        let msg = unsafe { std::ffi::CStr::from_ptr(super::last_error_ptr()) }
            .to_str()
            .unwrap();
        assert!(msg.contains("free failed"), "{msg}");
        // A success leaves the message of the last failure alone.
        assert_eq!(super::guard_or(|| 0, || 1), 1);
        let msg = unsafe { std::ffi::CStr::from_ptr(super::last_error_ptr()) }
            .to_str()
            .unwrap();
        assert!(msg.contains("free failed"), "{msg}");
    }
}
