//! autopipeline
