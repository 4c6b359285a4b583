//! The asynchronous C API: jobs (`ap_run_async`, `ap_from_pretrained_async`, `ap_job_*`). A job's
//! callbacks run on its worker thread through its gate (see `callbacks`).

use super::abi;
use super::callbacks::{self, Gate};
use super::convert::{self, null};
use super::handles::{ap_job, ap_pipeline, borrow, into_handle, JobKind, Out};
use super::types::*;
use super::{ap_status, guard, set_last_error, AP_ERR_TIMEOUT, AP_OK};
use crate::error::Error;
use crate::runtime::{self, JobState};
use std::ffi::c_char;
use std::sync::Arc;
use std::time::Duration;

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
        let out = Out::new(out)?;
        let pipe = borrow(pipe, "pipe")?;
        let params = abi::run_params(params)?;
        let run = convert::run_params(&params)?;
        let gate = Arc::new(Gate::default());
        let control = callbacks::run_control(&params, pipe.log_callback(), Some(Arc::clone(&gate)))?;
        let job = runtime::run_async(&pipe.inner, run, control)?;
        out.set(into_handle(ap_job {
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
        let out = Out::new(out)?;
        let model = convert::str_arg(model, "model")?;
        let task = convert::task(task)?;
        let params = abi::load_params(params)?;
        let opts = convert::load_options(&params)?;
        let gate = Arc::new(Gate::default());
        let progress = callbacks::progress(
            params.progress,
            params.progress_user_data,
            Some(Arc::clone(&gate)),
        )
        .map(|p| Box::new(p) as Box<crate::pipeline::ProgressFn<'static>>);
        let job = runtime::load_async(model, task, opts, progress)?;
        out.set(into_handle(ap_job {
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
/// `status->struct_size` (set by `ap_job_status_init`) may be any accepted size (see "ABI policy"):
/// fields past it are not written.
///
/// # Safety
/// `job` must be a live job; `status` must point to an `ap_job_status` whose `struct_size` is set.
#[no_mangle]
pub unsafe extern "C" fn ap_job_poll(job: *const ap_job, status: *mut ap_job_status) -> ap_status {
    guard(|| {
        let job = borrow(job, "job")?;
        if status.is_null() {
            return Err(null("status"));
        }
        let s = job.poll();
        let now = ap_job_status {
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
            ..abi::ap_job_status_default()
        };
        // Only as much as the caller's header knows: `struct_size` may be an older, smaller layout.
        abi::write(status, &now)
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
        let job = borrow(job, "job")?;
        let timeout = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        finished = job.wait(timeout);
        Ok(())
    });
    if status == AP_OK && !finished {
        set_last_error(&format!("the job did not finish within {timeout_ms} ms"));
        return AP_ERR_TIMEOUT;
    }
    status
}

/// Asks the job to stop and returns at once. A run stops at the next cancellation point: the models
/// check between their blocks (UNet and transformer blocks, text-encoder layers, VAE blocks and tiles),
/// so within one block's time, not a whole step's (on a GPU the kernels already queued still finish; a
/// step replayed as a CUDA graph is one unit). A load stops after the component in progress. The job
/// then reports `AP_JOB_CANCELLED` (or its real outcome, if it had already finished). The pipeline
/// stays fully usable. `ap_job_free` on a running job cancels it the same way.
///
/// Thread safety: may be called from any thread, including from inside the job's own callbacks.
///
/// # Safety
/// `job` must be a live job.
#[no_mangle]
pub unsafe extern "C" fn ap_job_cancel(job: *const ap_job) -> ap_status {
    guard(|| {
        borrow(job, "job")?.cancel();
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
        let out = Out::new(out)?;
        let JobKind::Run(j) = &borrow(job, "job")?.kind else {
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
        out.set(convert::images_to_c(result.images));
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
        let out = Out::new(out)?;
        let JobKind::Load(j) = &borrow(job, "job")?.kind else {
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
        out.set(into_handle(ap_pipeline::new(pipe)));
        Ok(())
    })
}
