//! The one denoising loop every task and family runs: scale → denoiser (with the family's guidance
//! mode) → scheduler step, with per-task hooks for what differs (extra inpaint channels, 4-channel
//! inpaint blending).

use super::control::RunControl;
use super::families::{Conditioning, Denoiser, GuidanceMode, ModelCond};
use super::Trace;
use crate::error::Result;
use crate::rng::Generator;
use crate::schedulers::{mul_s, Scheduler};
use candle_core::{Tensor, D};

/// Task-specific behaviour inside the loop.
pub trait StepHooks {
    /// Extra channels appended to the (CFG-doubled, scaled) UNet input: 9-channel inpainting's mask and
    /// masked-image latents.
    fn extra_unet_channels(&self) -> Option<&Tensor> {
        None
    }
    /// Called with the latents after step `i`; returns the latents to carry on with.
    fn after_step(&mut self, _i: usize, latents: Tensor, _scheduler: &dyn Scheduler) -> Result<Tensor> {
        Ok(latents)
    }
}

/// The hooks of plain text-to-image and image-to-image: none.
pub struct NoHooks;
impl StepHooks for NoHooks {}

/// Everything the loop reads.
pub struct Denoise<'a> {
    pub denoiser: &'a dyn Denoiser,
    /// The conditioning and its guidance mode.
    pub cond: &'a Conditioning,
    /// Whether `scheduler.scale_model_input` runs before the denoiser.
    pub scale_input: bool,
    pub timesteps: &'a [f64],
}

impl Denoise<'_> {
    /// Runs the loop from `latents`, telling `progress` after each step (progress, previews, cancel).
    pub fn run(
        &self,
        mut latents: Tensor,
        scheduler: &mut dyn Scheduler,
        rng: &mut Generator,
        hooks: &mut dyn StepHooks,
        progress: &mut RunControl<'_>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let total = self.timesteps.len();
        progress.begin(total)?;
        let guidance = self.cond.guidance;
        if trace.is_some() {
            // Scheduler noise (ancestral, SDE, LCM steps) goes into the trace's draws too.
            rng.record_draws();
        }
        let mut calls = DenoiserCalls::new(&latents, total);
        // A separate negative pass has its own call state: a CUDA graph is bound to one conditioning.
        let mut negative_calls = DenoiserCalls::new(&latents, total);
        for (i, &t) in self.timesteps.iter().enumerate() {
            let input = if guidance.doubles_batch() {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let mut input = if self.scale_input {
                scheduler.scale_model_input(&input, t)?
            } else {
                input
            };
            if let Some(extra) = hooks.extra_unet_channels() {
                input = Tensor::cat(&[&input, extra], 1)?;
            }
            let out = calls.call(self.denoiser, &self.cond.cond, &input, t, progress)?;
            if let Some(trace) = trace.as_deref_mut() {
                trace.unet_timesteps.push(t);
                if i == 0 {
                    trace.added_cond = self.cond.cond.added.clone();
                    trace.unet_input_step0 = Some(input.clone());
                    trace.unet_output_step0 = Some(out.clone());
                }
            }
            let noise_pred = match guidance {
                GuidanceMode::BatchCfg { scale, rescale } => {
                    let b = out.dim(0)? / 2;
                    let text = out.narrow(0, b, b)?;
                    let pred = apply_guidance(&out.narrow(0, 0, b)?, &text, scale, rescale)?;
                    match &self.cond.skip_layer {
                        // SD3's skip-layer guidance: the positive prompt again with blocks skipped, on
                        // the un-doubled latents.
                        Some(slg) if slg.active(i) => {
                            let ts = Tensor::full(t as f32, latents.dim(0)?, latents.device())?;
                            let skipped =
                                self.denoiser
                                    .forward_skipping(&latents, &ts, &slg.cond, &slg.layers)?;
                            (pred + mul_s(&(text - skipped)?, slg.scale as f32)?)?
                        }
                        _ => pred,
                    }
                }
                GuidanceMode::SeparateCfg { scale } => {
                    let negative = self.cond.negative.as_ref().ok_or_else(|| {
                        crate::Error::Internal(
                            "separate-pass guidance without a negative conditioning".into(),
                        )
                    })?;
                    let uncond = negative_calls.call(self.denoiser, negative, &input, t, progress)?;
                    apply_guidance(&uncond, &out, scale, 0.0)?
                }
                GuidanceMode::None | GuidanceMode::Embedded => out,
            };
            latents = scheduler.step(&noise_pred, t, &latents, rng)?;
            latents = hooks.after_step(i, latents, &*scheduler)?;
            if let Some(trace) = trace.as_deref_mut() {
                for draw in rng.take_recorded() {
                    let n = draw.len();
                    let t = Tensor::from_vec(draw, n, &candle_core::Device::Cpu)?;
                    let t = if n == latents.elem_count() {
                        t.reshape(latents.shape())?
                    } else {
                        t
                    };
                    trace.noise.push(t);
                }
                trace.latents.push(latents.clone());
            }
            // On a GPU the step is only queued so far: wait for it, so that progress (and a cancel's
            // latency) counts finished steps and per-step timings are real.
            if !latents.device().is_cpu() {
                latents.device().synchronize()?;
            }
            progress.step_done(i + 1, total, &latents)?;
        }
        Ok(latents)
    }
}

/// How the loop calls the denoiser: eagerly, or (CUDA, with `graph` in `AP_CUDA_KERNELS`: see
/// `components::cuda::graph`) as a CUDA graph: the first step runs eagerly with candle's graph caches
/// on, the second is captured, and every step from there is a replay (one launch instead of thousands).
/// A capture that fails is logged and the run goes on eagerly.
enum DenoiserCalls {
    Eager,
    #[cfg(feature = "cuda")]
    Graph(GraphState),
}

#[cfg(feature = "cuda")]
enum GraphState {
    /// Before the first step.
    Warm(candle_core::CudaDevice),
    /// After it: what the UNet returned, for the capture's output buffer.
    Capture(Tensor),
    Replay(crate::kernels::cuda::graph::Replay),
}

/// Fewest steps for which a run captures a graph: capturing costs about an eager step's host time plus
/// the graph's instantiation, which only replays pay back.
#[cfg(feature = "cuda")]
const GRAPH_MIN_STEPS: usize = 4;

impl DenoiserCalls {
    fn new(latents: &Tensor, steps: usize) -> Self {
        #[cfg(feature = "cuda")]
        if let candle_core::Device::Cuda(dev) = latents.device() {
            if crate::kernels::cuda::enabled("graph") && steps >= GRAPH_MIN_STEPS {
                return Self::Graph(GraphState::Warm(dev.clone()));
            }
        }
        let _ = (latents, steps);
        Self::Eager
    }

    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn call(
        &mut self,
        denoiser: &dyn Denoiser,
        cond: &ModelCond,
        input: &Tensor,
        t: f64,
        log: &RunControl<'_>,
    ) -> Result<Tensor> {
        // The timestep as a device tensor: a graph replays whatever host values it was captured with.
        let ts = Tensor::full(t as f32, input.dim(0)?, input.device())?;
        let eager = |x: &Tensor, ts: &Tensor| denoiser.forward(x, ts, cond);
        match self {
            Self::Eager => Ok(eager(input, &ts)?),
            #[cfg(feature = "cuda")]
            Self::Graph(state) => {
                use crate::kernels::cuda::graph;
                use crate::pipeline::LogLevel;
                match state {
                    GraphState::Warm(dev) => {
                        let out = graph::with_host_caches(dev, || eager(input, &ts))?;
                        *state = GraphState::Capture(out.clone());
                        Ok(out)
                    }
                    GraphState::Capture(like) => {
                        // The first replay counts as part of the capture: the graph's memory is
                        // only reserved as it first launches.
                        let first = graph::capture(&[input, &ts], like, |v| eager(&v[0], &v[1]))
                            .and_then(|mut replay| Ok((replay.run(&[input, &ts])?, replay)));
                        match first {
                            Ok((out, replay)) => {
                                *state = GraphState::Replay(replay);
                                Ok(out)
                            }
                            Err(e) => {
                                log.log(
                                    LogLevel::Warn,
                                    &format!(
                                        "UNet steps run without a CUDA graph: capturing one failed: {e}"
                                    ),
                                );
                                *self = Self::Eager;
                                Ok(eager(input, &ts)?)
                            }
                        }
                    }
                    GraphState::Replay(replay) => Ok(replay.run(&[input, &ts])?),
                }
            }
        }
    }
}

/// `uncond + s·(text − uncond)`, then diffusers' `rescale_noise_cfg` when `rescale > 0`.
fn apply_guidance(uncond: &Tensor, text: &Tensor, scale: f64, rescale: f64) -> Result<Tensor> {
    let cfg = (uncond + mul_s(&(text - uncond)?, scale as f32)?)?;
    if rescale <= 0.0 {
        return Ok(cfg);
    }
    let std_text = std_per_sample(text)?;
    let std_cfg = std_per_sample(&cfg)?;
    let rescaled = cfg.broadcast_mul(&(std_text / std_cfg)?)?;
    Ok((mul_s(&rescaled, rescale as f32)? + mul_s(&cfg, (1.0 - rescale) as f32)?)?)
}

/// Unbiased standard deviation over all but the batch dimension, kept as `(b, 1, 1, 1)`.
fn std_per_sample(t: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = t.dims4()?;
    let n = (c * h * w) as f64;
    let flat = t.reshape((b, c * h * w))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let var = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(D::Minus1)? / (n - 1.0))?;
    Ok(var.sqrt()?.reshape((b, 1, 1, 1))?)
}
