//! One error type for the whole library; `ffi` maps each variant onto a C status code.

use std::path::PathBuf;

/// Everything that can go wrong, grouped by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter the caller passed is wrong (bad size, NaN, invalid UTF-8, unknown name…).
    #[error("{0}")]
    InvalidArgument(String),
    /// A file, folder or hub repository that should exist does not.
    #[error("{0}")]
    NotFound(String),
    /// The checkpoint or request is valid but not something diffusers or we can run.
    #[error("{0}")]
    Unsupported(String),
    /// A checkpoint file exists but its content is malformed (bad JSON, bad safetensors, wrong shapes).
    #[error("{0}")]
    InvalidModel(String),
    /// Reading a file or talking to the hub failed.
    #[error("{0}")]
    Io(String),
    /// The run was cancelled by a progress callback or a job cancel.
    #[error("cancelled")]
    Cancelled,
    /// A bug or an unexpected failure inside the library (a tensor op failed, a panic was caught).
    #[error("{0}")]
    Internal(String),
}

/// Library-wide result alias.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`, keeping the OS reason.
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io(format!("{}: {err}", path.into().display()))
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        // A cancellation point inside a model call (crate::layers::cancel).
        if crate::layers::cancel::is_cancelled(&e) {
            return Error::Cancelled;
        }
        // A weight read on first use (crate::weights) fails inside a layer's forward, so it
        // arrives as a tensor-op error; it is an I/O problem with the checkpoint's files, not a bug.
        if let Some(read) = first_use_read_failure(&e) {
            return Error::Io(read.to_string());
        }
        Error::Internal(format!("tensor operation failed: {}", candle_message(&e)))
    }
}

/// A candle error as one line, without the backtrace candle attaches when `RUST_BACKTRACE` is set in
/// the host's environment (a message is read by `ap_last_error()`, a log line or a dialog box).
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => one_line(&other.to_string()),
    }
}

/// `msg` on one line: lines of a Rust backtrace (`stack backtrace:`, `  12: symbol`, `at file:line`)
/// dropped, the other lines joined with "; ".
pub(crate) fn one_line(msg: &str) -> String {
    if !msg.contains('\n') {
        return msg.to_string();
    }
    let frame = |l: &str| {
        let t = l.trim_start();
        t.starts_with("stack backtrace:")
            || t.starts_with("at ")
            || t.split_once(": ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            || t.starts_with("note: Some details are omitted")
    };
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !frame(l))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A deferred weight that could not be read on first use. It travels up through the layers' forward
/// calls inside a `candle_core::Error::Io` (candle's only variant whose payload can be downcast), so
/// that [`Error`] can tell it apart by type and report an I/O error, not a bug.
#[derive(Debug)]
pub(crate) struct FirstUseReadFailed(pub String);

impl std::fmt::Display for FirstUseReadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reading a weight on first use failed: {}", self.0)
    }
}

impl std::error::Error for FirstUseReadFailed {}

/// The deferred-weight read failure inside `e`, looking through the context candle may wrap around
/// an error on its way up.
fn first_use_read_failure(e: &candle_core::Error) -> Option<&FirstUseReadFailed> {
    use candle_core::Error as E;
    match e {
        E::Io(io) => io.get_ref()?.downcast_ref(),
        E::Context { inner, .. } | E::WithPath { inner, .. } | E::WithBacktrace { inner, .. } => {
            first_use_read_failure(inner)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn candle_backtraces_stay_out_of_messages() {
        let bt = std::backtrace::Backtrace::force_capture();
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch".into()).context("loading conv_in")),
            backtrace: Box::new(bt),
        };
        assert!(
            e.to_string().lines().count() > 2,
            "the test needs a real backtrace"
        );
        let msg = super::Error::from(e).to_string();
        assert_eq!(msg, "tensor operation failed: loading conv_in: shape mismatch");
    }

    #[test]
    fn one_line_drops_backtrace_frames() {
        let msg =
            "bad thing\nstack backtrace:\n   0: foo::bar\n             at ./src/x.rs:1:2\n  12: baz\nmore";
        assert_eq!(super::one_line(msg), "bad thing; more");
    }
}
