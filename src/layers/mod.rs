//! The layers models are built from (linear, convolution, norms, attention, resnet and time-embedding
//! blocks), dispatching to our CPU and CUDA kernels where they apply; `bounded` holds the
//! memory-bounded convolution and group norm that keep large images within one band of memory;
//! `cancel` the cancellation points models check between blocks.

pub mod bounded;
pub mod cancel;
pub mod nn;
