//! autopipeline: diffusers' AutoPipeline (text-to-image, image-to-image, inpainting) in Rust on candle,
//! shipped as a C-ABI library.
//!
//! ```no_run
//! use autopipeline::{LoadOptions, Pipeline, RunParams, Task};
//! let pipe = Pipeline::from_pretrained("runwayml/stable-diffusion-v1-5", Task::Text2Image,
//!                                      &LoadOptions::default(), None)?;
//! let out = pipe.run(&RunParams { prompt: "a cat".into(), seed: 42, ..Default::default() }, None)?;
//! out.images[0].save_png("cat.png".as_ref())?;
//! # Ok::<(), autopipeline::Error>(())
//! ```

pub mod device;
pub mod error;
pub mod ffi;
pub mod image;
pub mod kernels;
pub mod layers;
pub mod model_index;
pub mod models;
pub mod pipeline;
pub mod registry;
pub mod rng;
pub mod runtime;
pub mod schedulers;
pub mod source;
#[cfg(test)]
mod test_util;
pub mod text;
pub mod weights;

pub use error::{Error, Result};
pub use image::Image;
pub use pipeline::{LoadOptions, Pipeline, RunOutput, RunParams, Trace};
pub use registry::{Family, Task};
