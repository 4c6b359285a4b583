//! Model components, each built from its own folder's `config.json` and weights.

pub mod bounded;
pub mod clip;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod load;
pub mod nn;
mod tensor_file;
#[cfg(test)]
mod test_util;
pub mod tokenizer;
pub mod transformer;
pub mod unet;
pub mod unet_config;
pub mod vae;
pub mod weights;
