//! Config checks several scheduler classes share (each names its own class in the message).

use super::SchedulerConfig;
use crate::error::{Error, Result};

/// `prediction_type` must be one diffusers' epsilon/sample/v-prediction schedulers implement.
pub(crate) fn check_prediction(c: &SchedulerConfig, class: &str) -> Result<()> {
    if !matches!(c.prediction_type.as_str(), "epsilon" | "v_prediction" | "sample") {
        return Err(Error::InvalidModel(format!(
            "{class}: prediction_type {:?} must be one of 'epsilon', 'sample' or 'v_prediction'",
            c.prediction_type
        )));
    }
    Ok(())
}

/// The KDPM2 classes implement only epsilon and v-prediction.
pub(crate) fn check_kdpm2_prediction(c: &SchedulerConfig, class: &str) -> Result<()> {
    if !matches!(c.prediction_type.as_str(), "epsilon" | "v_prediction") {
        return Err(Error::InvalidModel(format!(
            "{class} prediction_type {:?} must be 'epsilon' or 'v_prediction'",
            c.prediction_type
        )));
    }
    Ok(())
}
