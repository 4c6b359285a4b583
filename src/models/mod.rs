//! The diffusers and transformers models, each built from its folder's `config.json` and weights
//! (`new(weights, config)`, `forward`): no pipeline, FFI or file-finding code here.

pub mod clip;
pub mod dit;
pub mod flux;
pub mod sd3;
pub mod t5;
pub mod transformer;
pub mod unet;
pub mod unet_config;
pub mod vae;
