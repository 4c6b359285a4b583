//! Ownership across the boundary: the opaque handles, how they are boxed into and out of raw
//! pointers, and every free function (each accepts NULL, each runs inside the panic boundary).

use super::callbacks::{Gate, LogCallback};
use super::convert::{self, null};
use super::guard_or;
use super::types::{ap_image, ap_images};
use crate::error::Result;
use crate::pipeline::{Pipeline, RunOutput};
use crate::runtime::{self, Job};
use std::ffi::c_char;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An opaque loaded pipeline. Create with `ap_from_pretrained` / `ap_from_pipe`, free with
/// `ap_pipeline_free`.
#[allow(non_camel_case_types)]
pub struct ap_pipeline {
    pub(super) inner: Pipeline,
    /// Set by `ap_pipeline_set_log_callback`; each run copies it when it starts.
    pub(super) log: Mutex<Option<LogCallback>>,
}

impl ap_pipeline {
    pub(super) fn new(inner: Pipeline) -> Self {
        Self {
            inner,
            log: Mutex::new(None),
        }
    }

    /// The log callback as it is now (a run keeps the one it started with).
    pub(super) fn log_callback(&self) -> Option<LogCallback> {
        *self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An opaque background job: a run (`ap_run_async`) or a load (`ap_from_pretrained_async`). Observe
/// it with `ap_job_poll` / `ap_job_wait`, stop it with `ap_job_cancel`, collect it with
/// `ap_job_take_result` (runs) or `ap_job_take_pipeline` (loads), free it with `ap_job_free`.
#[allow(non_camel_case_types)]
pub struct ap_job {
    pub(super) kind: JobKind,
    /// Closed by `ap_job_free`, so the worker stops calling the caller's callbacks.
    pub(super) gate: Arc<Gate>,
}

pub(super) enum JobKind {
    Run(Job<RunOutput>),
    Load(Job<Pipeline>),
}

impl ap_job {
    pub(super) fn poll(&self) -> runtime::JobStatus {
        match &self.kind {
            JobKind::Run(j) => j.poll(),
            JobKind::Load(j) => j.poll(),
        }
    }

    pub(super) fn cancel(&self) {
        match &self.kind {
            JobKind::Run(j) => j.cancel(),
            JobKind::Load(j) => j.cancel(),
        }
    }

    pub(super) fn wait(&self, timeout: Option<Duration>) -> bool {
        match &self.kind {
            JobKind::Run(j) => j.wait(timeout),
            JobKind::Load(j) => j.wait(timeout),
        }
    }
}

/// Gives `value` to the caller as a handle it frees with the matching free function.
pub(super) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// The live handle behind `p`; `what` names the argument when it is NULL.
///
/// # Safety
/// `p` is NULL or a handle from [`into_handle`] not yet freed; the caller keeps it alive for `'a`.
pub(super) unsafe fn borrow<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    p.as_ref().ok_or_else(|| null(what))
}

/// Stores a handle into a caller's out-parameter after clearing it first, so that `*out` is NULL
/// whenever the call fails.
pub(super) struct Out<T>(*mut *mut T);

impl<T> Out<T> {
    /// Checks `out` and sets `*out = NULL`.
    ///
    /// # Safety
    /// `out` is NULL (an error) or valid for writes.
    pub(super) unsafe fn new(out: *mut *mut T) -> Result<Self> {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        Ok(Out(out))
    }

    /// Hands `value` to the caller.
    pub(super) fn set(self, value: *mut T) {
        // SAFETY: checked writable in `new`.
        unsafe { *self.0 = value };
    }
}

/// Runs a free function's body inside the panic boundary, skipping NULL.
fn free_with<T>(p: *mut T, free: impl FnOnce(*mut T)) {
    if !p.is_null() {
        guard_or(|| (), || free(p));
    }
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
    free_with(pipe, |p| drop(Box::from_raw(p)));
}

/// Frees a job. NULL is ignored. A job still running is cancelled and left to stop on its own thread
/// (after the denoising step or component in progress), freeing what it holds, including a result
/// nobody took; `ap_job_free` does not wait for that. It only waits for a callback of this job that
/// is executing at that moment to return; after it returns, none of the job's callbacks is called
/// again. Calling it from inside one of the job's own callbacks is allowed.
///
/// Thread safety: must not race with other calls on the same job.
///
/// # Safety
/// `job` must be NULL or a job not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ap_job_free(job: *mut ap_job) {
    free_with(job, |j| {
        let job = Box::from_raw(j);
        job.cancel();
        job.gate.close();
    });
}

/// Frees images returned by `ap_run` or `ap_job_take_result`. NULL is ignored.
///
/// # Safety
/// `images` must be NULL or returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ap_images_free(images: *mut ap_images) {
    free_with(images, |i| convert::free_images(i));
}

/// Frees a string returned by this library (`ap_pipeline_info`, `ap_pipeline_config_json`,
/// `ap_supported_families`). NULL is ignored.
///
/// # Safety
/// `s` must be NULL or a string returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ap_string_free(s: *mut c_char) {
    free_with(s, |p| convert::free_string(p));
}

/// Frees an image returned by `ap_image_load`. NULL is ignored.
///
/// # Safety
/// `image` must be NULL or returned by `ap_image_load` and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn ap_image_free(image: *mut ap_image) {
    free_with(image, |i| convert::free_image_data(&Box::from_raw(i)));
}
