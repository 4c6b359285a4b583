//! The asynchronous C API: jobs (`ap_run_async`, `ap_from_pretrained_async`, `ap_job_*`), and the
//! per-run / per-pipeline callbacks (previews, logging) shared with `ap_run`.
//!
//! A job's worker thread calls the caller's C callbacks through a [`Gate`]: `ap_job_free` closes it,
//! waiting for a callback already running to return, so that once `ap_job_free` has returned the
//! worker never again touches anything of the caller's (its `user_data`s, in particular).

use super::api::{ap_pipeline, images_into_c};
use super::types::*;
use super::{ap_status, convert, guard, set_last_error, AP_ERR_TIMEOUT, AP_OK};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::pipeline::{LogLevel, LogSink, Pipeline, PreviewMode, RunControl, RunOutput};
use crate::runtime::{self, Job, JobState};
use std::cell::Cell;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Job state: created, its worker thread not started yet.
pub const AP_JOB_QUEUED: i32 = 0;
/// Job state: working.
pub const AP_JOB_RUNNING: i32 = 1;
/// Job state: finished successfully; take the result.
pub const AP_JOB_DONE: i32 = 2;
/// Job state: finished with an error; `ap_job_take_*` returns it (status and `ap_last_error()`).
pub const AP_JOB_FAILED: i32 = 3;
/// Job state: finished because it was cancelled (`ap_job_cancel`, or a progress callback returned 0).
pub const AP_JOB_CANCELLED: i32 = 4;

/// Log level: details (timings).
pub const AP_LOG_DEBUG: i32 = 0;
/// Log level: notable events (a run cancelled).
pub const AP_LOG_INFO: i32 = 1;
/// Log level: non-fatal problems (a prompt truncated to CLIP's 77 tokens, previews turned off).
pub const AP_LOG_WARN: i32 = 2;
/// Log level: a run failed (the message also comes back through its status).
pub const AP_LOG_ERROR: i32 = 3;

/// Log callback: `message` (UTF-8, valid only during the call) at `level` (`AP_LOG_*`). Called on the
/// thread doing the work: the caller's for `ap_run`, a job's worker thread for `ap_run_async`; runs in
/// parallel on one pipeline may call it from several threads at once.
#[allow(non_camel_case_types)]
pub type ap_log_fn = Option<unsafe extern "C" fn(level: i32, message: *const c_char, user_data: *mut c_void)>;

/// A snapshot of a job, filled by `ap_job_poll`. Initialise with `ap_job_status_default()` (or set
/// `struct_size` to `sizeof(ap_job_status)`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct ap_job_status {
    /// `sizeof(ap_job_status)`, set by the caller.
    pub struct_size: u32,
    /// One of `AP_JOB_*`.
    pub state: i32,
    /// Denoising steps (runs) or components (loads) done so far.
    pub step: u32,
    /// Their number; 0 until known (a run knows it once its prompt is encoded).
    pub total: u32,
    /// Seconds since the work started (0 while queued), frozen once the job has finished.
    pub elapsed_seconds: f64,
}

/// An opaque background job: a run (`ap_run_async`) or a load (`ap_from_pretrained_async`). Observe
/// it with `ap_job_poll` / `ap_job_wait`, stop it with `ap_job_cancel`, collect it with
/// `ap_job_take_result` (runs) or `ap_job_take_pipeline` (loads), free it with `ap_job_free`.
#[allow(non_camel_case_types)]
pub struct ap_job {
    kind: JobKind,
    gate: Arc<Gate>,
}

enum JobKind {
    Run(Job<RunOutput>),
    Load(Job<Pipeline>),
}

impl ap_job {
    fn poll(&self) -> runtime::JobStatus {
        match &self.kind {
            JobKind::Run(j) => j.poll(),
            JobKind::Load(j) => j.poll(),
        }
    }

    fn cancel(&self) {
        match &self.kind {
            JobKind::Run(j) => j.cancel(),
            JobKind::Load(j) => j.cancel(),
        }
    }

    fn wait(&self, timeout: Option<Duration>) -> bool {
        match &self.kind {
            JobKind::Run(j) => j.wait(timeout),
            JobKind::Load(j) => j.wait(timeout),
        }
    }
}

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
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let inside = CALLING.with(|c| std::ptr::eq(c.get(), self));
        if !inside {
            drop(self.in_call.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// Runs a callback directly (synchronous calls) or through a job's gate.
fn through<R>(gate: &Option<Arc<Gate>>, f: impl FnOnce() -> R) -> Option<R> {
    match gate {
        None => Some(f()),
        Some(g) => g.call(f),
    }
}

/// A `user_data` pointer, only ever handed back to the caller's own callback.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);
// SAFETY: the library never dereferences it; the caller chose to receive it on the worker thread.
unsafe impl Send for UserData {}
unsafe impl Sync for UserData {}

/// A pipeline's log callback, as set by `ap_pipeline_set_log_callback`.
#[derive(Clone, Copy)]
pub(super) struct LogCallback {
    f: unsafe extern "C" fn(i32, *const c_char, *mut c_void),
    user_data: UserData,
    min_level: LogLevel,
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

fn progress_hook(
    cb: ap_progress_fn,
    user_data: *mut c_void,
    gate: Option<Arc<Gate>>,
) -> Option<impl FnMut(usize, usize) -> bool + Send + 'static> {
    let ud = UserData(user_data);
    cb.map(move |f| {
        move |step: usize, total: usize| {
            let ud = &ud;
            // SAFETY: the caller promised `f` is callable with its own user_data. A closed gate (the
            // job was freed) cancels.
            through(&gate, || unsafe { f(step as u32, total as u32, ud.0) != 0 }).unwrap_or(false)
        }
    })
}

/// The hooks of one C run: the params' progress and preview callbacks, the pipeline's log callback.
/// `gate` is the job's for async runs, `None` for `ap_run` (callbacks on the calling thread).
pub(super) unsafe fn run_control(
    pipe: &ap_pipeline,
    params: &ap_run_params,
    gate: Option<Arc<Gate>>,
) -> Result<RunControl<'static>> {
    let mut control = RunControl::new();
    if let Some(p) = progress_hook(params.progress, params.progress_user_data, gate.clone()) {
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
                let c_images = images_into_c(images.to_vec());
                let ud = &ud;
                // SAFETY: `c_images` is valid for the call; the caller promised `f` takes user_data.
                through(&gate, || unsafe { f(step as u32, total as u32, c_images, ud.0) });
                // SAFETY: allocated just above by `images_into_c`, freed once.
                unsafe { super::api::ap_images_free(c_images) };
            });
        }
    }
    let log = *pipe.log.lock().unwrap_or_else(|e| e.into_inner());
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

/// `ap_job_status` with `struct_size` set and the rest zeroed.
#[no_mangle]
pub extern "C" fn ap_job_status_default() -> ap_job_status {
    ap_job_status {
        struct_size: std::mem::size_of::<ap_job_status>() as u32,
        state: AP_JOB_QUEUED,
        step: 0,
        total: 0,
        elapsed_seconds: 0.0,
    }
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
        if pipe.is_null() {
            return Err(null("pipe"));
        }
        let min_level = log_level(min_level)?;
        let cb = callback.map(|f| LogCallback {
            f,
            user_data: UserData(user_data),
            min_level,
        });
        *(*pipe).log.lock().unwrap_or_else(|e| e.into_inner()) = cb;
        Ok(())
    })
}

fn null(what: &str) -> Error {
    Error::InvalidArgument(format!("{what} is NULL"))
}

/// Starts a run in the background and returns at once: like `ap_run`, but on a worker thread of its
/// own. On success `*out` receives a job to observe with `ap_job_poll` / `ap_job_wait`, collect with
/// `ap_job_take_result`, and free with `ap_job_free`; on failure (invalid parameters, found before
/// the job starts) `*out` is NULL.
///
/// `params` and everything it points to (prompts, images) are copied before this returns. The job
/// holds the pipeline's models itself: `pipe` may be freed while the job runs.
///
/// Callbacks: `params.progress`, `params.preview` and the pipeline's log callback are called on the
/// job's worker thread, never after `ap_job_free` has returned. A progress callback returning 0
/// cancels the job, as `ap_job_cancel` does. The image of an async run equals the image of `ap_run`
/// with the same parameters, bit for bit.
///
/// Thread safety: any number of jobs and `ap_run` calls may run at once on one pipeline and on its
/// `ap_from_pipe` siblings; each job has its own thread (there is no queue), so on a CPU they share
/// its cores.
///
/// # Safety
/// `pipe` must be a live pipeline, `params` valid, `out` a valid pointer; the callbacks must be
/// callable with their `user_data` from another thread.
#[no_mangle]
pub unsafe extern "C" fn ap_run_async(
    pipe: *const ap_pipeline,
    params: *const ap_run_params,
    out: *mut *mut ap_job,
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
        let gate = Arc::new(Gate::default());
        let control = run_control(&*pipe, params, Some(Arc::clone(&gate)))?;
        let job = runtime::run_async(&(*pipe).inner, run, control)?;
        *out = Box::into_raw(Box::new(ap_job {
            kind: JobKind::Run(job),
            gate,
        }));
        Ok(())
    })
}

/// Starts loading a checkpoint in the background and returns at once: like `ap_from_pretrained`, on a
/// worker thread of its own. On success `*out` receives a job; collect the pipeline with
/// `ap_job_take_pipeline` once it is done. `step` / `total` in `ap_job_poll` count components.
/// `ap_job_cancel` takes effect between components (locating the files before the first one, which
/// may download from the hub, cannot be interrupted).
///
/// `model` and `params` (strings included) are copied before this returns. `params->progress` is called
/// on the job's worker thread after each component, never after `ap_job_free` has returned; returning 0
/// cancels.
///
/// # Safety
/// `model` must be a NUL-terminated string, `params` NULL or valid, `out` a valid pointer; the
/// progress callback must be callable with its `user_data` from another thread.
#[no_mangle]
pub unsafe extern "C" fn ap_from_pretrained_async(
    model: *const c_char,
    task: i32,
    params: *const ap_load_params,
    out: *mut *mut ap_job,
) -> ap_status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        let model = convert::str_arg(model, "model")?;
        let task = convert::task(task)?;
        let defaults = super::api::ap_load_params_default();
        let params = if params.is_null() {
            &defaults
        } else {
            convert::sized(params, "ap_load_params")?
        };
        let opts = convert::load_options(params)?;
        let gate = Arc::new(Gate::default());
        let progress = progress_hook(
            params.progress,
            params.progress_user_data,
            Some(Arc::clone(&gate)),
        )
        .map(|p| Box::new(p) as Box<crate::pipeline::ProgressFn<'static>>);
        let job = runtime::load_async(model, task, opts, progress)?;
        *out = Box::into_raw(Box::new(ap_job {
            kind: JobKind::Load(job),
            gate,
        }));
        Ok(())
    })
}

/// Fills `*status` with the job's state (`AP_JOB_*`), progress and elapsed time. Never blocks (no
/// lock is taken): call it once per frame.
///
/// Thread safety: may be called from any thread, concurrently with every `ap_job_*` call on the same
/// job except `ap_job_free`.
///
/// # Safety
/// `job` must be a live job; `status` must point to an `ap_job_status` whose `struct_size` is set.
#[no_mangle]
pub unsafe extern "C" fn ap_job_poll(job: *const ap_job, status: *mut ap_job_status) -> ap_status {
    guard(|| {
        if job.is_null() {
            return Err(null("job"));
        }
        if status.is_null() {
            return Err(null("status"));
        }
        let want = std::mem::size_of::<ap_job_status>();
        if (*status).struct_size as usize != want {
            return Err(Error::InvalidArgument(format!(
                "ap_job_status.struct_size is {} but this library's ap_job_status has {want} bytes: \
                 initialise it with ap_job_status_default()",
                (*status).struct_size
            )));
        }
        let s = (*job).poll();
        *status = ap_job_status {
            struct_size: want as u32,
            state: match s.state {
                JobState::Queued => AP_JOB_QUEUED,
                JobState::Running => AP_JOB_RUNNING,
                JobState::Done => AP_JOB_DONE,
                JobState::Failed => AP_JOB_FAILED,
                JobState::Cancelled => AP_JOB_CANCELLED,
            },
            step: s.step.min(u32::MAX as usize) as u32,
            total: s.total.min(u32::MAX as usize) as u32,
            elapsed_seconds: s.elapsed.as_secs_f64(),
        };
        Ok(())
    })
}

/// Waits until the job has finished (done, failed or cancelled) or `timeout_ms` milliseconds have
/// passed: `AP_OK` when it has finished (whatever its outcome: take it to see), `AP_ERR_TIMEOUT` when
/// the time passed first (the job goes on). `timeout_ms` 0 only checks; negative waits without limit.
///
/// Thread safety: may be called from any thread, several at once. Do not wait without limit from
/// inside one of the job's own callbacks: the job cannot finish while its callback waits.
///
/// # Safety
/// `job` must be a live job.
#[no_mangle]
pub unsafe extern "C" fn ap_job_wait(job: *const ap_job, timeout_ms: i32) -> ap_status {
    let mut finished = true;
    let status = guard(|| {
        if job.is_null() {
            return Err(null("job"));
        }
        let timeout = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        finished = (*job).wait(timeout);
        Ok(())
    });
    if status == AP_OK && !finished {
        set_last_error(&format!("the job did not finish within {timeout_ms} ms"));
        return AP_ERR_TIMEOUT;
    }
    status
}

/// Asks the job to stop and returns at once. A run stops after the denoising step in progress, a load
/// after the component in progress; the job then reports `AP_JOB_CANCELLED` (or its real outcome, if
/// it had already finished). The pipeline stays fully usable.
///
/// Thread safety: may be called from any thread, including from inside the job's own callbacks.
///
/// # Safety
/// `job` must be a live job.
#[no_mangle]
pub unsafe extern "C" fn ap_job_cancel(job: *const ap_job) -> ap_status {
    guard(|| {
        if job.is_null() {
            return Err(null("job"));
        }
        (*job).cancel();
        Ok(())
    })
}

fn not_finished(state: JobState) -> Error {
    Error::InvalidArgument(format!(
        "the job has not finished (it is {}): poll until it is done, failed or cancelled, or ap_job_wait",
        if state == JobState::Queued {
            "queued"
        } else {
            "running"
        }
    ))
}

/// Collects a finished run's images: `AP_OK` with `*out` set (free with `ap_images_free`), or the
/// job's own error status with its message in `ap_last_error()` (`AP_ERR_CANCELLED` for a cancelled
/// job) and `*out` NULL. `AP_ERR_INVALID_ARGUMENT` when the job has not finished yet, is a load job,
/// or its result was already taken (a result is handed out once).
///
/// Thread safety: may be called from any thread, but only one thread gets the result.
///
/// # Safety
/// `job` must be a live job, `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn ap_job_take_result(job: *const ap_job, out: *mut *mut ap_images) -> ap_status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        if job.is_null() {
            return Err(null("job"));
        }
        let JobKind::Run(j) = &(*job).kind else {
            return Err(Error::InvalidArgument(
                "this job loads a pipeline: collect it with ap_job_take_pipeline".into(),
            ));
        };
        let state = j.poll().state;
        if !state.is_finished() {
            return Err(not_finished(state));
        }
        let result = j
            .take()
            .ok_or_else(|| Error::InvalidArgument("the job's result was already taken".into()))??;
        *out = images_into_c(result.images);
        Ok(())
    })
}

/// Collects a finished load's pipeline: `AP_OK` with `*out` set (free with `ap_pipeline_free`), or
/// the job's own error status with its message in `ap_last_error()` and `*out` NULL.
/// `AP_ERR_INVALID_ARGUMENT` when the job has not finished yet, is a run job, or its pipeline was
/// already taken.
///
/// Thread safety: as `ap_job_take_result`.
///
/// # Safety
/// `job` must be a live job, `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn ap_job_take_pipeline(job: *const ap_job, out: *mut *mut ap_pipeline) -> ap_status {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        *out = std::ptr::null_mut();
        if job.is_null() {
            return Err(null("job"));
        }
        let JobKind::Load(j) = &(*job).kind else {
            return Err(Error::InvalidArgument(
                "this job is a run: collect its images with ap_job_take_result".into(),
            ));
        };
        let state = j.poll().state;
        if !state.is_finished() {
            return Err(not_finished(state));
        }
        let pipe = j
            .take()
            .ok_or_else(|| Error::InvalidArgument("the job's pipeline was already taken".into()))??;
        *out = Box::into_raw(Box::new(ap_pipeline::new(pipe)));
        Ok(())
    })
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
    if job.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let job = Box::from_raw(job);
        job.cancel();
        job.gate.close();
        drop(job);
    }));
}
