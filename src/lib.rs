//! autopipeline: diffusers' AutoPipeline (text2img, img2img, inpaint) in Rust on candle.

pub mod components;
pub mod error;
pub mod image;
pub mod rng;
pub mod schedulers;

pub use error::{Error, Result};
