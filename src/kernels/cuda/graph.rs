//! A computation captured once as a CUDA graph and replayed: one launch for what is otherwise a few
//! thousand (a UNet step), so the host's per-op cost (candle's bookkeeping, allocations, the driver's
//! launch path) no longer bounds the step once the GPU's work is small. diffusers' SD 1.5 step on an
//! H100 is host-bound this way (27 % of its wall time busy on the GPU).
//!
//! How: the computation runs once eagerly with candle's CUDA-graph host caches on
//! (`enable_cuda_graph_htod_cache`: every small host→device upload it makes, layouts and constant
//! tables, is kept on the device and reused), then again under stream capture, reading its inputs from
//! buffers owned here and writing its output into one owned here; a replay copies new inputs into those
//! buffers, launches the graph and copies the output out. Everything the computation allocates and
//! frees while captured becomes graph memory nodes. What a graph cannot see changes between replays:
//! host values that reach kernels as launch arguments are baked in at capture, so the computation must
//! take everything that varies as device tensors (the UNet takes its timestep as one: `forward_t`).
//! Capture needs candle's stream-ordered allocations (any GPU of the last years) and no host↔device
//! copies of uncached data during the captured run; candle and cudarc refuse those with an error, which
//! the caller turns into eager execution.
//!
//! Concurrency: candle's `CudaDevice` works on the per-thread default stream, so a capture records
//! only its own thread's work, and the capture mode is thread-local. Runs on other threads (jobs of
//! the same pipeline, loads) go on in their own streams: they neither enter the graph nor break the
//! capture (the device check runs two 20-step jobs at once, each capturing: both succeed, and the
//! first equals the same run made synchronously).
//!
//! Rules the captured computation keeps: it frees nothing that existed before the capture (a free of
//! such a buffer would be recorded into the graph, and cudarc's pending-error bookkeeping would then
//! make candle mistake the capture for none); it keeps nothing it allocates (each allocation is graph
//! memory, valid only inside the graph). The UNet forward keeps both.
//!
//! What stays behind: candle's layout cache is process-wide and never emptied, and each of its device
//! buffers holds the device's stream, so with graphs on a device's cuDNN handle (`cudnn.rs`) and its
//! context outlive the pipelines that used it (a few hundred small buffers per distinct model shape).

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::driver::sys::{self, CUgraphInstantiate_flags, CUstreamCaptureMode};
use candle_core::cuda_backend::cudarc::driver::{CudaGraph, CudaStream};
use candle_core::{CudaDevice, Device, Result, Tensor};

/// A captured computation of fixed input shapes (see the module documentation).
pub struct Replay {
    /// `Some` until dropped.
    graph: Option<CudaGraph>,
    inputs: Vec<Tensor>,
    output: Tensor,
}

impl Drop for Replay {
    /// The graph's memory (what the captured computation allocates: its whole working set) stays
    /// reserved by the device's graph memory pool after the graph is gone, until trimmed: without the
    /// trim a run's later work (the VAE decode, the peak of a run) would have that much less memory.
    fn drop(&mut self) {
        if let Some(graph) = self.graph.take() {
            let stream = self.output.device().as_cuda_device().map(|d| d.cuda_stream());
            // Replays finished first: the graph (and then its memory) is released only when idle.
            if let Ok(stream) = &stream {
                let _ = stream.synchronize();
            }
            drop(graph);
            if let Ok(stream) = stream {
                let ctx = stream.context();
                let _ = ctx.bind_to_thread();
                // SAFETY: a plain driver call on the device of a live context; it frees only graph
                // memory that no graph uses.
                let _ = unsafe { sys::cuDeviceGraphMemTrim(ctx.cu_device()) };
            }
        }
    }
}

fn wrap(what: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA graph: {what}: {e}"))
}

/// Runs `f` with candle's CUDA-graph host caches on (the eager run before a [`capture`] must run under
/// it, so that the caches hold everything the captured run uploads).
pub fn with_host_caches<R>(device: &CudaDevice, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let _caches = device.enable_cuda_graph_htod_cache();
    f()
}

/// Captures `f(inputs)` (whose last eager run, made under [`with_host_caches`] with inputs of these
/// shapes, returned something shaped like `output_like`). `f` runs once, under capture: nothing is
/// computed until [`Replay::run`]. On an error the stream has left capture mode, errors cudarc recorded
/// during it are discarded, and the error is returned: the device goes on eagerly as before.
pub fn capture(
    inputs: &[&Tensor],
    output_like: &Tensor,
    f: impl FnOnce(&[Tensor]) -> Result<Tensor>,
) -> Result<Replay> {
    let Device::Cuda(device) = output_like.device() else {
        candle_core::bail!("CUDA graphs capture CUDA computations only")
    };
    // Buffers owned here, allocated outside the capture, that the graph reads and writes.
    let owned = inputs
        .iter()
        .map(|t| t.force_contiguous())
        .collect::<Result<Vec<_>>>()?;
    let output = output_like.zeros_like()?;
    device.synchronize()?;
    let stream = device.cuda_stream();
    // cudarc keeps the error of a call that could not return one (a free on drop) for its next call to
    // report, and that call then does nothing else: one pending now would make ending the capture fail
    // before it ends it. An older one is not ours to report either.
    stream
        .context()
        .check_err()
        .map_err(|e| wrap("an earlier error", e))?;
    let _caches = device.enable_cuda_graph_htod_cache();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| wrap("beginning the capture", e))?;
    // Everything `f` allocates is dropped inside the capture (graph memory), the output once copied
    // into ours. A panic inside (cudarc unwraps a failed device-to-device clone) becomes an error: the
    // stream must leave capture mode whatever happens.
    let captured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f(&owned).and_then(|out| output.slice_set(&out.contiguous()?, 0, 0))
    }))
    .unwrap_or_else(|_| Err(wrap("capturing", "the computation panicked")));
    // Frees of a capture that went wrong fail and are recorded: they belong to it, and would otherwise
    // stop `end_capture` before it ends the capture.
    let recorded = stream.context().check_err();
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    let ended = match ended {
        Ok(graph) => Ok(graph),
        Err(e) => {
            end_capture_raw(&stream);
            Err(wrap("ending the capture", e))
        }
    };
    let _ = stream.context().check_err();
    // From here on a graph is owned by a `Replay`, whose drop also trims its memory. The first error
    // reported is the root cause: the computation's own, before what it did to the capture.
    let replay = ended
        .and_then(|graph| graph.ok_or_else(|| wrap("ending the capture", "nothing was captured")))
        .map(|graph| Replay {
            graph: Some(graph),
            inputs: owned,
            output,
        });
    captured?;
    recorded.map_err(|e| wrap("during the capture", e))?;
    let replay = replay?;
    replay
        .graph
        .as_ref()
        .map_or(Ok(()), |g| g.upload())
        .map_err(|e| wrap("uploading the graph", e))?;
    Ok(replay)
}

/// Ends a capture that cudarc's `end_capture` left open (it returns early on an error recorded before
/// it), discarding whatever graph it made.
fn end_capture_raw(stream: &CudaStream) {
    let capturing = || {
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: a query of a valid stream into a local.
        let r = unsafe { sys::cuStreamIsCapturing(stream.cu_stream(), &mut status) };
        r != sys::CUresult::CUDA_SUCCESS
            || status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
    };
    if capturing() {
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: ends the capture of a valid stream (invalidated captures end with an error and no
        // graph); a graph returned is ours alone, destroyed at once.
        unsafe {
            let _ = sys::cuStreamEndCapture(stream.cu_stream(), &mut graph);
            if !graph.is_null() {
                let _ = sys::cuGraphDestroy(graph);
            }
        }
    }
}

impl Replay {
    /// The captured computation on `inputs` (the shapes and dtypes it was captured with): a fresh
    /// output tensor, which later runs do not overwrite.
    pub fn run(&mut self, inputs: &[&Tensor]) -> Result<Tensor> {
        if inputs.len() != self.inputs.len() {
            candle_core::bail!(
                "CUDA graph captured with {} inputs, run with {}",
                self.inputs.len(),
                inputs.len()
            )
        }
        for (owned, new) in self.inputs.iter().zip(inputs) {
            if owned.shape() != new.shape() || owned.dtype() != new.dtype() {
                candle_core::bail!(
                    "CUDA graph captured for an input {:?} {:?}, run with {:?} {:?}",
                    owned.dtype(),
                    owned.shape(),
                    new.dtype(),
                    new.shape()
                )
            }
            owned.slice_set(&new.contiguous()?, 0, 0)?;
        }
        let graph = self.graph.as_ref().ok_or_else(|| wrap("launching", "dropped"))?;
        graph.launch().map_err(|e| wrap("launching", e))?;
        self.output.force_contiguous()
    }
}
