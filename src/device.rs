//! Where and in which precision models run: the `device` and `dtype` strings of the load options.

use crate::error::{Error, Result};
use candle_core::{DType, Device};

/// Parses `"cpu"`, `"cuda"`, `"cuda:N"`.
pub fn parse_device(spec: Option<&str>) -> Result<Device> {
    let spec = spec.unwrap_or("cpu").trim();
    if spec.is_empty() || spec.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ordinal = if spec.eq_ignore_ascii_case("cuda") {
        0
    } else if let Some(n) = spec.strip_prefix("cuda:") {
        n.parse::<usize>()
            .map_err(|_| Error::InvalidArgument(format!("device {spec:?}: expected cpu, cuda or cuda:N")))?
    } else {
        return Err(Error::InvalidArgument(format!(
            "device {spec:?}: expected cpu, cuda or cuda:N"
        )));
    };
    if cfg!(feature = "cuda") {
        let device = Device::new_cuda(ordinal)
            .map_err(|e| Error::Unsupported(format!("CUDA device {ordinal} is not usable: {e}")))?;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cuda) = &device {
            // cudarc gives every buffer two CUDA events (created with it, destroyed with it: four
            // driver calls per tensor of every op) for its multi-stream bookkeeping, which it only
            // uses once a context has streams of its own. candle works on the per-thread default
            // stream and creates none, so the events are never recorded or waited on: turning
            // tracking off before the first buffer changes no ordering and saves those calls.
            // SAFETY: no stream is ever created on this context, so there is no second stream to
            // synchronise with (the condition `disable_event_tracking` asks the caller to uphold).
            unsafe { cuda.disable_event_tracking() };
        }
        Ok(device)
    } else {
        Err(Error::Unsupported(format!(
            "device {spec:?} asked for, but this build of autopipeline has no CUDA support: build it with `--features cuda`"
        )))
    }
}

/// Parses a dtype name (`f32`/`float32`, `f16`/`float16`/`fp16`, `bf16`/`bfloat16`).
pub fn parse_dtype(name: Option<&str>) -> Result<DType> {
    match name.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("f32") | Some("float32") | Some("fp32") => Ok(DType::F32),
        Some("f16") | Some("float16") | Some("fp16") | Some("half") => Ok(DType::F16),
        Some("bf16") | Some("bfloat16") => Ok(DType::BF16),
        Some(other) => Err(Error::InvalidArgument(format!(
            "dtype {other:?}: expected f32, f16 or bf16"
        ))),
    }
}
