//! Stable Diffusion XL prompt conditioning: two text encoders and the size/crop time ids.

use super::generate::{Conditioning, Settings};
use super::{Pipeline, RunParams, Trace};
use crate::error::{Error, Result};

/// Not yet implemented: SDXL conditioning lands with the SDXL issue.
pub(super) fn encode(
    _p: &Pipeline,
    _params: &RunParams,
    _s: &Settings,
    _do_cfg: bool,
    _trace: Option<&mut Trace>,
    _warnings: &mut Vec<String>,
) -> Result<Conditioning> {
    Err(Error::Unsupported(
        "stable-diffusion-xl runs are not implemented yet in this build".into(),
    ))
}
