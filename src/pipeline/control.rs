//! Per-run hooks of the denoising loop: progress, cancellation, previews of the current latents, and a
//! log sink. Everything here belongs to one run (or, for the log sink, to whoever builds the run), never
//! to the process: two runs on one pipeline each bring their own `RunControl`.

use super::params::ProgressFn;
use super::Pipeline;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::models::vae::DecodeOptions;
use crate::registry::Family;
use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Severity of a log message; a sink receives messages at or above its minimum level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

/// A log callback: `(level, message)`. May be called from several threads at once when it is shared by
/// concurrent runs.
pub type LogFn = dyn Fn(LogLevel, &str) + Send + Sync;

/// Where a run's messages go: a callback and the least severe level it wants.
#[derive(Clone)]
pub struct LogSink {
    min_level: LogLevel,
    f: Arc<LogFn>,
}

impl LogSink {
    pub fn new(min_level: LogLevel, f: impl Fn(LogLevel, &str) + Send + Sync + 'static) -> Self {
        Self {
            min_level,
            f: Arc::new(f),
        }
    }

    pub fn enabled(&self, level: LogLevel) -> bool {
        level >= self.min_level
    }

    pub fn log(&self, level: LogLevel, msg: &str) {
        if self.enabled(level) {
            (self.f)(level, msg)
        }
    }
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("min_level", &self.min_level)
            .finish_non_exhaustive()
    }
}

/// How a preview image is made from the current latents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreviewMode {
    /// A fixed linear latent→RGB projection per family (the factors ComfyUI and A1111 use): about a
    /// microsecond per latent pixel, at latent resolution (1/8 of the output size per side).
    #[default]
    Latent,
    /// A full VAE decode at output resolution: as slow as the final decode, once per preview.
    Vae,
}

/// A preview callback: `(step, total, images)`, one RGBA8 image per image of the batch.
pub type PreviewFn<'a> = dyn FnMut(usize, usize, &[Image]) + Send + 'a;

struct Preview<'a> {
    every: usize,
    mode: PreviewMode,
    f: Box<PreviewFn<'a>>,
}

/// What the decoder of previews needs from the pipeline; bound when a run starts.
struct Bound {
    family: Family,
    task: crate::registry::Task,
    components: Arc<super::Components>,
    /// The run's VAE tiling/slicing, which VAE previews follow too.
    vae: DecodeOptions,
}

/// The per-run hooks [`Pipeline::run_with`] and the denoising loop call.
///
/// ```no_run
/// # use autopipeline::pipeline::{RunControl, PreviewMode, LogLevel, LogSink};
/// # let pipe: autopipeline::Pipeline = unimplemented!();
/// let mut control = RunControl::new()
///     .with_progress(|step, total| { eprintln!("{step}/{total}"); true })
///     .with_preview(5, PreviewMode::Latent, |step, _total, images| {
///         let _ = images[0].save_png(format!("preview-{step}.png").as_ref());
///     })
///     .with_log(LogSink::new(LogLevel::Warn, |_, msg| eprintln!("{msg}")));
/// let out = pipe.run_with(&Default::default(), &mut control)?;
/// # Ok::<(), autopipeline::Error>(())
/// ```
pub struct RunControl<'a> {
    progress: Option<Box<ProgressFn<'a>>>,
    cancel: Arc<AtomicBool>,
    preview: Option<Preview<'a>>,
    log: Option<LogSink>,
    /// Told `(0, total)` when the loop starts and `(step, total)` after each step, before the user's
    /// callbacks; lets a job publish its progress without owning the user's progress callback.
    observer: Option<Box<dyn FnMut(usize, usize) + Send + 'a>>,
    bound: Option<Bound>,
}

impl Default for RunControl<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RunControl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunControl")
            .field("progress", &self.progress.is_some())
            .field("cancelled", &self.is_cancelled())
            .field("preview_every", &self.preview.as_ref().map(|p| p.every))
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl<'a> RunControl<'a> {
    /// No progress callback, a fresh cancel flag, no previews, no log.
    pub fn new() -> Self {
        Self {
            progress: None,
            cancel: Arc::new(AtomicBool::new(false)),
            preview: None,
            log: None,
            observer: None,
            bound: None,
        }
    }

    /// `progress(step, total)` after each denoising step; returning `false` cancels the run.
    pub fn with_progress(mut self, f: impl FnMut(usize, usize) -> bool + Send + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Shares `flag` as this run's cancel flag: setting it (from any thread) cancels the run with
    /// [`Error::Cancelled`] at the next cancellation point (between model blocks, see
    /// [`crate::layers::cancel`]), or after the step in progress for models without them.
    pub fn with_cancel_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = flag;
        self
    }

    /// `f(step, total, images)` after every `every`-th denoising step (`step % every == 0`), with RGBA8
    /// previews of the current latents; `every == 0` turns previews off.
    pub fn with_preview(
        mut self,
        every: usize,
        mode: PreviewMode,
        f: impl FnMut(usize, usize, &[Image]) + Send + 'a,
    ) -> Self {
        self.preview = (every > 0).then(|| Preview {
            every,
            mode,
            f: Box::new(f),
        });
        self
    }

    /// Sends the run's messages (warnings such as a truncated prompt, failures, timings) to `sink`.
    pub fn with_log(mut self, sink: LogSink) -> Self {
        self.log = Some(sink);
        self
    }

    /// The cancel flag; set it to cancel.
    pub fn cancel_flag(&self) -> &Arc<AtomicBool> {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    /// Logs `msg` at `level` to the run's sink, if any.
    pub fn log(&self, level: LogLevel, msg: &str) {
        if let Some(sink) = &self.log {
            sink.log(level, msg);
        }
    }

    pub(crate) fn set_observer(&mut self, f: impl FnMut(usize, usize) + Send + 'a) {
        self.observer = Some(Box::new(f));
    }

    /// Called by the pipeline before a run: remembers what previews need, checks the cancel flag.
    pub(crate) fn bind(&mut self, p: &Pipeline, vae: DecodeOptions) -> Result<()> {
        self.bound = Some(Bound {
            family: p.family(),
            task: p.task(),
            components: Arc::clone(p.components()),
            vae,
        });
        self.check_cancel()
    }

    /// Called by the pipeline after a run: the run's warnings and outcome go to the log.
    pub(crate) fn finish<T>(&mut self, out: &Result<T>, warnings: &[String], started: Instant) {
        self.bound = None;
        for w in warnings {
            self.log(LogLevel::Warn, w);
        }
        let secs = started.elapsed().as_secs_f64();
        match out {
            Ok(_) => self.log(LogLevel::Debug, &format!("run finished in {secs:.3} s")),
            Err(Error::Cancelled) => self.log(LogLevel::Info, &format!("run cancelled after {secs:.3} s")),
            Err(e) => self.log(LogLevel::Error, &format!("run failed after {secs:.3} s: {e}")),
        }
    }

    pub(crate) fn check_cancel(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The denoising loop is about to run `total` steps.
    pub(crate) fn begin(&mut self, total: usize) -> Result<()> {
        if let Some(obs) = self.observer.as_mut() {
            obs(0, total);
        }
        self.check_cancel()
    }

    /// Step `step` of `total` produced `latents`: cancel check, preview when due, progress.
    pub(crate) fn step_done(&mut self, step: usize, total: usize, latents: &Tensor) -> Result<()> {
        if let Some(obs) = self.observer.as_mut() {
            obs(step, total);
        }
        self.check_cancel()?;
        let due = self
            .preview
            .as_ref()
            .is_some_and(|p| step.is_multiple_of(p.every));
        if due {
            self.preview(step, total, latents);
        }
        if let Some(progress) = self.progress.as_mut() {
            if !progress(step, total) {
                self.cancel.store(true, Ordering::Release);
                return Err(Error::Cancelled);
            }
        }
        self.check_cancel()
    }

    fn preview(&mut self, step: usize, total: usize, latents: &Tensor) {
        let Some(bound) = &self.bound else { return };
        let Some(preview) = self.preview.as_mut() else {
            return;
        };
        let images = match preview.mode {
            PreviewMode::Latent => latent_rgb_preview(latents, bound.family),
            PreviewMode::Vae => vae_preview(bound.family, bound.task, &bound.components, bound.vae, latents),
        };
        match images {
            Ok(images) => (preview.f)(step, total, &images),
            Err(e) => {
                // A preview is a convenience: its failure must not cost the user the run.
                self.preview = None;
                self.log(LogLevel::Warn, &format!("previews turned off for this run: {e}"));
            }
        }
    }
}

/// The latent→RGB factors of a family (one `[r, g, b]` row per latent channel), if it has them.
pub fn latent_rgb_factors(family: Family) -> Option<&'static [[f32; 3]]> {
    super::families::imp(family).preview_factors()
}

/// `(b, c, h, w)` latents → `b` RGBA8 images of `w × h`: `rgb = latents · factors`, mapped from
/// `[-1, 1]` to `[0, 255]`.
pub fn latent_rgb_preview(latents: &Tensor, family: Family) -> Result<Vec<Image>> {
    let (b, c, h, w) = latents.dims4()?;
    let factors = latent_rgb_factors(family).ok_or_else(|| {
        Error::Unsupported(format!(
            "the {} family has no latent→RGB preview factors: use the VAE preview mode",
            family.name()
        ))
    })?;
    if c != factors.len() {
        return Err(Error::Unsupported(format!(
            "latent previews need {} latent channels, these latents have {c}",
            factors.len()
        )));
    }
    let values = latents
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plane = h * w;
    let to_u8 = |v: f32| (((v + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
    (0..b)
        .map(|n| {
            let sample = &values[n * c * plane..(n + 1) * c * plane];
            let mut data = Vec::with_capacity(plane * 4);
            for px in 0..plane {
                let mut rgb = [0f32; 3];
                for (ch, row) in factors.iter().enumerate() {
                    let v = sample[ch * plane + px];
                    for (acc, f) in rgb.iter_mut().zip(row) {
                        *acc += v * f;
                    }
                }
                data.extend_from_slice(&[to_u8(rgb[0]), to_u8(rgb[1]), to_u8(rgb[2]), 255]);
            }
            Image::new(w as u32, h as u32, 4, data)
        })
        .collect()
}

/// A full decode of the current latents, post-processed as the final image is (the same steps as the
/// pipeline's decode: `FamilyPipeline::decode`).
fn vae_preview(
    family: Family,
    task: crate::registry::Task,
    c: &super::Components,
    opts: DecodeOptions,
    latents: &Tensor,
) -> Result<Vec<Image>> {
    Image::from_tensor01(&super::families::imp(family).decode(c, task, latents, opts)?, 4)
}
