//! Background jobs for hosts that must never block (a game loop): a run or a load on its own worker
//! thread, observed by polling, waited on with a timeout, cancelled cooperatively.
//!
//! ```no_run
//! use autopipeline::runtime::{self, JobState};
//! use autopipeline::{Pipeline, RunParams, pipeline::RunControl};
//! # let pipe: Pipeline = unimplemented!();
//! let job = runtime::run_async(&pipe, RunParams { prompt: "a cat".into(), ..Default::default() },
//!                              RunControl::new())?;
//! loop {                                   // once per frame
//!     let s = job.poll();                  // never blocks
//!     if s.state.is_finished() { break; }
//!     # std::thread::yield_now();
//! }
//! let out = job.take().expect("finished")?;
//! # Ok::<(), autopipeline::Error>(())
//! ```
//!
//! Every job runs on a thread of its own, started at once (there is no queue: `Queued` only lasts
//! until that thread is scheduled). Jobs own everything they touch — a clone of the pipeline (which
//! shares the loaded models through an `Arc`), their parameters, their callbacks — so dropping the
//! handle, the pipeline, or both while a job runs is safe: dropping the handle cancels the job, whose
//! thread stops at the next cancellation point (between model blocks) and frees what it holds.

use crate::error::{Error, Result};
use crate::pipeline::{LoadOptions, Pipeline, ProgressFn, RunControl, RunOutput, RunParams};
use crate::registry::Task;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Created; its thread has not started the work yet.
    Queued = 0,
    Running = 1,
    /// Finished with a result (take it with [`Job::take`]).
    Done = 2,
    /// Finished with an error other than a cancel.
    Failed = 3,
    /// Finished because it was cancelled (by [`Job::cancel`] or a progress callback).
    Cancelled = 4,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => JobState::Queued,
            1 => JobState::Running,
            2 => JobState::Done,
            3 => JobState::Failed,
            _ => JobState::Cancelled,
        }
    }
}

/// A snapshot of a job, as [`Job::poll`] returns it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobStatus {
    pub state: JobState,
    /// Denoising steps (runs) or components (loads) done so far.
    pub step: usize,
    /// Their number; 0 until known (a run knows it once its prompt is encoded).
    pub total: usize,
    /// Time since the work started (0 while queued); frozen once finished.
    pub elapsed: Duration,
}

/// State shared by a job's handle and its worker thread.
struct Shared<T> {
    state: AtomicU8,
    step: AtomicUsize,
    total: AtomicUsize,
    created: Instant,
    /// Nanoseconds after `created` + 1 when the work started / finished; 0 = not yet.
    started_ns: AtomicU64,
    finished_ns: AtomicU64,
    cancel: Arc<AtomicBool>,
    /// The outcome, set once by the worker (before `state` becomes final) and taken once by the owner.
    result: Mutex<Option<Result<T>>>,
    finished: Condvar,
}

impl<T> Shared<T> {
    fn stamp(&self) -> u64 {
        self.created.elapsed().as_nanos() as u64 + 1
    }

    fn lock_result(&self) -> MutexGuard<'_, Option<Result<T>>> {
        // The worker never panics while holding the lock, but a poisoned lock must not take the
        // host down either.
        self.result.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> JobState {
        JobState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn finish(&self, result: Result<T>) {
        let state = match &result {
            Ok(_) => JobState::Done,
            Err(Error::Cancelled) => JobState::Cancelled,
            Err(_) => JobState::Failed,
        };
        let mut slot = self.lock_result();
        *slot = Some(result);
        self.finished_ns.store(self.stamp(), Ordering::Release);
        self.state.store(state as u8, Ordering::Release);
        drop(slot);
        self.finished.notify_all();
    }
}

/// What a job's work may report back: progress, and whether it was cancelled.
#[derive(Clone)]
pub struct JobContext {
    step: Arc<dyn Fn(usize, usize) + Send + Sync>,
    cancel: Arc<AtomicBool>,
}

impl JobContext {
    /// Publishes `(step, total)` for [`Job::poll`].
    pub fn report(&self, step: usize, total: usize) {
        (self.step)(step, total)
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    pub fn cancel_flag(&self) -> &Arc<AtomicBool> {
        &self.cancel
    }
}

/// A handle to work running on a background thread. Dropping it cancels the work without waiting
/// for it.
pub struct Job<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Job<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("status", &self.poll()).finish()
    }
}

impl<T: Send + 'static> Job<T> {
    /// Runs `work` on a new thread named `name`. `cancel` becomes the job's cancel flag (so a
    /// [`RunControl`]'s own flag and [`Job::cancel`] are one and the same).
    pub fn spawn(
        name: &str,
        cancel: Arc<AtomicBool>,
        work: impl FnOnce(&JobContext) -> Result<T> + Send + 'static,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(JobState::Queued as u8),
            step: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            created: Instant::now(),
            started_ns: AtomicU64::new(0),
            finished_ns: AtomicU64::new(0),
            cancel: Arc::clone(&cancel),
            result: Mutex::new(None),
            finished: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if worker.cancel.load(Ordering::Acquire) {
                    worker.finish(Err(Error::Cancelled));
                    return;
                }
                worker.started_ns.store(worker.stamp(), Ordering::Release);
                worker.state.store(JobState::Running as u8, Ordering::Release);
                let published = Arc::clone(&worker);
                let ctx = JobContext {
                    step: Arc::new(move |step, total| {
                        published.total.store(total, Ordering::Release);
                        published.step.store(step, Ordering::Release);
                    }),
                    cancel: Arc::clone(&worker.cancel),
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&ctx)))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(Error::Internal(format!(
                            "internal error (caught panic in a job): {what}"
                        )))
                    });
                // A cancel that lands after the last step still finishes the job as done: the work
                // is complete and its result worth keeping.
                worker.finish(result);
            })
            .map_err(|e| Error::Internal(format!("could not start a worker thread: {e}")))?;
        Ok(Self { shared })
    }
}

impl<T> Job<T> {
    /// The job's state, progress and elapsed time. Lock-free: never blocks.
    pub fn poll(&self) -> JobStatus {
        let s = &self.shared;
        let state = s.state();
        let started = s.started_ns.load(Ordering::Acquire);
        let finished = s.finished_ns.load(Ordering::Acquire);
        let elapsed = match (started, finished) {
            (0, _) => 0,
            (a, 0) => s.stamp().saturating_sub(a),
            (a, b) => b.saturating_sub(a),
        };
        JobStatus {
            state,
            step: s.step.load(Ordering::Acquire),
            total: s.total.load(Ordering::Acquire),
            elapsed: Duration::from_nanos(elapsed),
        }
    }

    /// Asks the job to stop: a run stops at the next cancellation point (between model blocks), a
    /// load after the component in progress. Returns at once.
    pub fn cancel(&self) {
        self.shared.cancel.store(true, Ordering::Release);
    }

    /// Waits until the job finishes or `timeout` passes (`None`: no limit); `true` if it finished.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let s = &self.shared;
        let mut slot = s.lock_result();
        let deadline = timeout.map(|t| Instant::now() + t);
        while !s.state().is_finished() {
            match deadline {
                None => slot = s.finished.wait(slot).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    slot = s
                        .finished
                        .wait_timeout(slot, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        true
    }

    /// The outcome, once: `None` while the job runs and after it was taken.
    pub fn take(&self) -> Option<Result<T>> {
        if !self.shared.state().is_finished() {
            return None;
        }
        self.shared.lock_result().take()
    }

    /// The flag [`Job::cancel`] sets.
    pub fn cancel_flag(&self) -> &Arc<AtomicBool> {
        &self.shared.cancel
    }
}

impl<T> Drop for Job<T> {
    fn drop(&mut self) {
        // The worker keeps its own reference to the shared state and frees it (and the result nobody
        // will take) when it finishes; dropping never waits for it.
        self.cancel();
    }
}

/// Starts `pipe.run_with(params, control)` on a background thread. The job owns a clone of the
/// pipeline (sharing its models), so `pipe` may be dropped at once. `control`'s callbacks are called
/// on the job's thread; its cancel flag is the job's.
pub fn run_async(pipe: &Pipeline, params: RunParams, control: RunControl<'static>) -> Result<Job<RunOutput>> {
    let pipe = pipe.clone();
    let cancel = Arc::clone(control.cancel_flag());
    let mut control = control;
    Job::spawn("autopipeline-run", cancel, move |job| {
        let ctx = job.clone();
        control.set_observer(move |step, total| ctx.report(step, total));
        pipe.run_with(&params, &mut control)
    })
}

/// Starts [`Pipeline::from_pretrained`] on a background thread. A cancel takes effect between
/// components (resolving hub files before the first one is not interruptible). `progress` is called
/// on the job's thread after each component; returning `false` cancels.
pub fn load_async(
    model: &str,
    task: Task,
    opts: LoadOptions,
    progress: Option<Box<ProgressFn<'static>>>,
) -> Result<Job<Pipeline>> {
    let model = model.to_string();
    let mut progress = progress;
    Job::spawn(
        "autopipeline-load",
        Arc::new(AtomicBool::new(false)),
        move |job| {
            if job.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let mut on_component = |done: usize, total: usize| {
                job.report(done, total);
                let go_on = progress.as_mut().is_none_or(|p| p(done, total));
                go_on && !job.is_cancelled()
            };
            Pipeline::from_pretrained(&model, task, &opts, Some(&mut on_component))
        },
    )
}
