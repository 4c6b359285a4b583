//! What the diffusion-transformer families (FLUX, SD3) share: flow-matching schedulers only, the T5
//! prompt length and its encoding (with diffusers' truncation warning), and the VAE's scaling and
//! shift factors as the latent normalisation.

use super::family::LatentNorm;
use crate::error::{Error, Result};
use crate::pipeline::components::{Components, T5TextEncoder};
use crate::schedulers::SchedulerConfig;
use candle_core::{Device, Tensor};

/// The longest T5 prompt the FLUX and SD3 pipelines accept.
pub(super) const MAX_SEQUENCE_LENGTH: usize = 512;

/// Refuses schedulers other than flow matching for `pipelines` ("FLUX", "SD3"): these pipelines pass
/// `sigmas` / `mu` to `set_timesteps`, which only flow-matching schedulers take.
pub(super) fn require_flow_match(pipelines: &str, cfg: &SchedulerConfig) -> Result<()> {
    if !cfg.class_name.starts_with("FlowMatch") {
        return Err(Error::InvalidArgument(format!(
            "the {pipelines} pipelines denoise with flow-matching schedulers (FlowMatchEulerDiscreteScheduler), not {}",
            cfg.class_name
        )));
    }
    Ok(())
}

/// diffusers' `check_inputs` bound on `max_sequence_length`.
pub(super) fn check_max_sequence_length(n: Option<usize>) -> Result<()> {
    match n {
        Some(n) if n > MAX_SEQUENCE_LENGTH => Err(Error::InvalidArgument(format!(
            "`max_sequence_length` cannot be greater than {MAX_SEQUENCE_LENGTH} but is {n}"
        ))),
        _ => Ok(()),
    }
}

/// `(z − shift_factor) · scaling_factor`: the 16-channel VAEs' normalisation.
pub(super) fn scale_shift_norm(c: &Components) -> LatentNorm {
    let v = c.vae.config();
    LatentNorm::Scale {
        scaling: v.scaling_factor,
        shift: v.shift_factor.unwrap_or(0.0),
    }
}

/// T5's `(1, max_len, d_model)` last hidden state of `text`, padded or truncated to `max_len` tokens
/// (a truncation is warned, as diffusers warns).
pub(super) fn encode_t5(
    t5: &T5TextEncoder,
    text: &str,
    max_len: usize,
    device: &Device,
    warnings: &mut Vec<String>,
) -> Result<Tensor> {
    let enc = t5.tokenizer.encode(text, max_len)?;
    if enc.truncated() {
        warnings.push(format!(
            "The following part of your input was truncated because `max_sequence_length` is set to {max_len} \
             tokens: {}",
            t5.tokenizer.decode(&enc.removed)
        ));
    }
    let ids = Tensor::new(enc.ids, device)?.unsqueeze(0)?;
    Ok(t5.model.forward(&ids)?)
}
