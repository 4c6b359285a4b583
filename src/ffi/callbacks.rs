//! The caller's C callbacks as Rust closures: `user_data`, progress, preview and log, and the [`Gate`]
//! a job's worker thread calls them through.
//!
//! A job's worker thread calls the caller's C callbacks through a gate: `ap_job_free` closes it,
//! waiting for a callback already running to return, so that once `ap_job_free` has returned the
//! worker never again touches anything of the caller's (its `user_data`s, in particular). Blocking
//! calls (`ap_run`, `ap_from_pretrained`) have no gate: their callbacks run before they return.

use super::convert;
use super::types::*;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::pipeline::{LogLevel, LogSink, PreviewMode, RunControl};
use std::cell::Cell;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A `user_data` pointer, only ever handed back to the caller's own callback.
#[derive(Clone, Copy)]
pub(super) struct UserData(*mut c_void);
// SAFETY: the library never dereferences it; the caller chose to receive it on the thread the
// header documents for each callback (a job's worker thread, or several run threads for logs).
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

thread_local! {
    /// The gate whose callback this thread is inside, if any (so `ap_job_free` from inside a
    /// callback does not wait for itself).
    static CALLING: Cell<*const Gate> = const { Cell::new(std::ptr::null()) };
}

/// Lets a worker call the caller's callbacks until `close`; `close` waits for a call in progress.
#[derive(Default)]
pub(super) struct Gate {
    closed: AtomicBool,
    in_call: Mutex<()>,
}

impl Gate {
    /// Runs `f` unless the gate is closed.
    fn call<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let _held = self.in_call.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let outer = CALLING.with(|c| c.replace(self as *const Gate));
        let r = f();
        CALLING.with(|c| c.set(outer));
        Some(r)
    }

    /// No callback runs through this gate after `close` returns.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let inside = CALLING.with(|c| std::ptr::eq(c.get(), self));
        if !inside {
            drop(self.in_call.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// Runs a callback directly (blocking calls) or through a job's gate.
fn through<R>(gate: &Option<Arc<Gate>>, f: impl FnOnce() -> R) -> Option<R> {
    match gate {
        None => Some(f()),
        Some(g) => g.call(f),
    }
}

/// A C progress callback as a closure returning "go on"; `None` when `cb` is NULL. A closed gate
/// (the job was freed) answers "stop".
pub(super) fn progress(
    cb: ap_progress_fn,
    user_data: *mut c_void,
    gate: Option<Arc<Gate>>,
) -> Option<impl FnMut(usize, usize) -> bool + Send + 'static> {
    let ud = UserData(user_data);
    cb.map(move |f| {
        move |step: usize, total: usize| {
            let ud = &ud;
            // SAFETY: the caller promised `f` is callable with its own user_data.
            through(&gate, || unsafe { f(step as u32, total as u32, ud.0) != 0 }).unwrap_or(false)
        }
    })
}

/// A pipeline's log callback, as set by `ap_pipeline_set_log_callback`.
#[derive(Clone, Copy)]
pub(super) struct LogCallback {
    f: unsafe extern "C" fn(i32, *const c_char, *mut c_void),
    user_data: UserData,
    min_level: LogLevel,
}

impl LogCallback {
    /// `None` when `cb` is NULL (logging off); an error for a level outside `AP_LOG_*`.
    pub(super) fn new(cb: ap_log_fn, user_data: *mut c_void, min_level: i32) -> Result<Option<Self>> {
        let min_level = log_level(min_level)?;
        Ok(cb.map(|f| LogCallback {
            f,
            user_data: UserData(user_data),
            min_level,
        }))
    }
}

fn log_level(v: i32) -> Result<LogLevel> {
    Ok(match v {
        AP_LOG_DEBUG => LogLevel::Debug,
        AP_LOG_INFO => LogLevel::Info,
        AP_LOG_WARN => LogLevel::Warn,
        AP_LOG_ERROR => LogLevel::Error,
        other => {
            return Err(Error::InvalidArgument(format!(
                "min_level {other} is not one of AP_LOG_DEBUG (0), AP_LOG_INFO (1), AP_LOG_WARN (2), AP_LOG_ERROR (3)"
            )))
        }
    })
}

/// The hooks of one C run: the params' progress and preview callbacks, the pipeline's log callback
/// (`log`, as it was when the run started). `gate` is the job's for async runs, `None` for `ap_run`.
pub(super) fn run_control(
    params: &ap_run_params,
    log: Option<LogCallback>,
    gate: Option<Arc<Gate>>,
) -> Result<RunControl<'static>> {
    let mut control = RunControl::new();
    if let Some(p) = progress(params.progress, params.progress_user_data, gate.clone()) {
        control = control.with_progress(p);
    }
    if params.preview_every < 0 {
        return Err(Error::InvalidArgument(format!(
            "preview_every is {}; pass a positive number of steps, or 0 for no previews",
            params.preview_every
        )));
    }
    let mode = match params.preview_mode {
        AP_PREVIEW_LATENT => PreviewMode::Latent,
        AP_PREVIEW_VAE => PreviewMode::Vae,
        other => {
            return Err(Error::InvalidArgument(format!(
                "preview_mode {other} is not AP_PREVIEW_LATENT (0) or AP_PREVIEW_VAE (1)"
            )))
        }
    };
    if let (Some(f), n) = (params.preview, params.preview_every) {
        if n > 0 {
            let ud = UserData(params.preview_user_data);
            let gate = gate.clone();
            control = control.with_preview(n as usize, mode, move |step, total, images: &[Image]| {
                let c_images = convert::images_to_c(images.to_vec());
                let ud = &ud;
                // SAFETY: `c_images` is valid for the call; the caller promised `f` takes user_data.
                through(&gate, || unsafe { f(step as u32, total as u32, c_images, ud.0) });
                // SAFETY: allocated just above, released once.
                unsafe { convert::free_images(c_images) };
            });
        }
    }
    if let Some(cb) = log {
        control = control.with_log(LogSink::new(cb.min_level, move |level, msg| {
            let text = CString::new(msg.replace('\0', " ")).unwrap_or_default();
            let ud = &cb.user_data;
            // SAFETY: the caller promised `f` is callable with its own user_data.
            through(&gate, || unsafe { (cb.f)(level as i32, text.as_ptr(), ud.0) });
        }));
    }
    Ok(control)
}
