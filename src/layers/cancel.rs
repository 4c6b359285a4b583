//! Cancellation points inside a model call. A step of a large model can take seconds on a CPU (SD 1.5
//! at 512², one UNet call) or minutes (2048²), so waiting for the step's end makes `ap_job_cancel` and
//! `ap_job_free` slow to take effect. A run installs its cancel flag for its thread ([`scope`]); the
//! models call [`check`] between blocks (UNet blocks, transformer blocks, text-encoder layers, VAE
//! blocks and tiles), which fails with [`Cancelled`] once the flag is set. The error turns into
//! `Error::Cancelled` where candle errors become the library's.
//!
//! Thread-local because a model call runs on the thread that runs the run (our kernels parallelise
//! below the block level): no model signature changes, and a model called outside a run never stops.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

thread_local! {
    static FLAG: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// The error [`check`] returns once the run's cancel flag is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

/// What [`Cancelled`] displays: candle keeps a wrapped error as `dyn Display` only, so this text is
/// how [`is_cancelled`] recognises it.
const MESSAGE: &str = "run cancelled at a cancellation point (autopipeline)";

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MESSAGE)
    }
}

impl std::error::Error for Cancelled {}

/// Installs `flag` as this thread's cancel flag until the guard drops (the previous one, if any, is
/// restored then).
pub fn scope(flag: Arc<AtomicBool>) -> Scope {
    let previous = FLAG.with(|f| f.borrow_mut().replace(flag));
    Scope { previous }
}

/// Restores the thread's previous cancel flag when dropped.
#[must_use = "the flag is uninstalled when the guard drops"]
pub struct Scope {
    previous: Option<Arc<AtomicBool>>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        FLAG.with(|f| *f.borrow_mut() = previous);
    }
}

/// Fails with [`Cancelled`] when this thread runs a run whose cancel flag is set.
pub fn check() -> candle_core::Result<()> {
    let cancelled = FLAG.with(|f| {
        f.borrow()
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Acquire))
    });
    if cancelled {
        Err(candle_core::Error::wrap(Cancelled))
    } else {
        Ok(())
    }
}

/// Whether `e` is (or wraps) [`Cancelled`].
pub fn is_cancelled(e: &candle_core::Error) -> bool {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            is_cancelled(inner)
        }
        E::Wrapped(inner) => inner.to_string() == MESSAGE,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_follow_the_installed_flag_and_nest() {
        assert!(check().is_ok(), "no run: never cancelled");
        let outer = Arc::new(AtomicBool::new(false));
        let _a = scope(outer.clone());
        assert!(check().is_ok());
        {
            let inner = Arc::new(AtomicBool::new(true));
            let _b = scope(inner);
            let e = check().unwrap_err();
            assert!(is_cancelled(&e), "{e}");
            assert!(is_cancelled(&e.context("in a block")));
        }
        assert!(check().is_ok(), "the outer flag is back");
        outer.store(true, Ordering::Release);
        assert!(check().is_err());
        // Another thread has no flag installed.
        std::thread::spawn(|| assert!(check().is_ok())).join().unwrap();
    }
}
