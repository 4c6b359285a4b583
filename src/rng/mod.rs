//! Random generators that reproduce PyTorch's, so a seed gives the same image as diffusers.
//!
//! * [`TorchCpuGenerator`]: `torch.Generator("cpu")` (mt19937), bit-exact. The default, as in diffusers
//!   when no device is named for the generator.
//! * [`TorchCudaGenerator`]: `torch.Generator("cuda")` (Philox4x32-10 with torch's launch geometry), for
//!   seeds that users ran on a GPU. Uniforms are bit-exact everywhere; normals are bit-exact when drawn
//!   on a CUDA device of a `cuda` build, and within 2.5e-6 on the host (see [`philox`]).
//!
//! A run picks one with [`RngKind`]; every draw of the run (initial latents, VAE encode sampling,
//! stochastic schedulers) comes from it in diffusers' order.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda_kernel;
pub mod philox;

pub use cpu::TorchCpuGenerator;
pub use philox::TorchCudaGenerator;

use crate::error::{Error, Result};
use candle_core::Device;

/// Which torch generator a run imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RngKind {
    /// `torch.Generator("cpu")`.
    #[default]
    Cpu,
    /// `torch.Generator("cuda")`; `max_blocks` is the launch limit of the GPU imitated
    /// (multiprocessors × max threads per multiprocessor / 256), `None` for the GPU the run is on, or an
    /// H100's when it runs on the CPU.
    Cuda { max_blocks: Option<u32> },
}

impl RngKind {
    /// Parses `"cpu"`, `"cuda"`, or `"cuda:SMS"` / `"cuda:SMS:THREADS"` (the multiprocessor count of the
    /// GPU whose draws to reproduce, and its max threads per multiprocessor, default 2048). `None` or an
    /// empty string is `cpu`.
    pub fn parse(spec: Option<&str>) -> Result<Self> {
        let bad = |s: &str| {
            Error::InvalidArgument(format!(
                "rng {s:?}: expected \"cpu\", \"cuda\", or \"cuda:SMS[:THREADS_PER_SM]\" (e.g. \"cuda:128:1536\" for an RTX 4090)"
            ))
        };
        let spec = spec.map(str::trim).unwrap_or("");
        if spec.is_empty() || spec.eq_ignore_ascii_case("cpu") {
            return Ok(RngKind::Cpu);
        }
        if spec.eq_ignore_ascii_case("cuda") {
            return Ok(RngKind::Cuda { max_blocks: None });
        }
        let rest = spec.strip_prefix("cuda:").ok_or_else(|| bad(spec))?;
        let mut parts = rest.split(':');
        let sms: u32 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(spec))?;
        let threads: u32 = match parts.next() {
            Some(t) => t.parse().map_err(|_| bad(spec))?,
            None => 2048,
        };
        if parts.next().is_some() || sms == 0 || threads < philox::BLOCK as u32 {
            return Err(bad(spec));
        }
        Ok(RngKind::Cuda {
            max_blocks: Some(sms.saturating_mul(threads / philox::BLOCK as u32)),
        })
    }
}

impl From<TorchCpuGenerator> for Generator {
    fn from(g: TorchCpuGenerator) -> Self {
        Generator::Cpu(Box::new(g))
    }
}

/// The generator of one run.
#[derive(Debug, Clone)]
pub enum Generator {
    /// Boxed: the mt19937 state is 2.5 KB.
    Cpu(Box<TorchCpuGenerator>),
    Cuda {
        gen: TorchCudaGenerator,
        /// Draw on this GPU (bit-exact normals) rather than on the host.
        #[cfg(feature = "cuda")]
        device: Option<candle_core::CudaDevice>,
    },
}

impl Generator {
    /// The generator `kind` seeded with `seed`, for a run on `device`.
    pub fn new(kind: RngKind, seed: u64, device: &Device) -> Self {
        match kind {
            RngKind::Cpu => Generator::Cpu(Box::new(TorchCpuGenerator::new(seed))),
            RngKind::Cuda { max_blocks } => {
                #[cfg(feature = "cuda")]
                if let Device::Cuda(dev) = device {
                    let blocks = max_blocks.or_else(|| cuda_kernel::max_blocks(dev));
                    return Generator::Cuda {
                        gen: TorchCudaGenerator::new(seed, blocks.unwrap_or(philox::DEFAULT_MAX_BLOCKS)),
                        device: Some(dev.clone()),
                    };
                }
                let _ = device;
                Generator::Cuda {
                    gen: TorchCudaGenerator::new(seed, max_blocks.unwrap_or(philox::DEFAULT_MAX_BLOCKS)),
                    #[cfg(feature = "cuda")]
                    device: None,
                }
            }
        }
    }

    /// `torch.randn(n, generator=g)` in float32, row-major for any shape of `n` elements.
    pub fn randn(&mut self, n: usize) -> Result<Vec<f32>> {
        match self {
            Generator::Cpu(g) => Ok(g.randn(n)),
            #[cfg(feature = "cuda")]
            Generator::Cuda {
                gen,
                device: Some(dev),
            } => {
                let (offset, blocks) = gen.reserve(n);
                cuda_kernel::randn(dev, gen.seed(), offset, blocks, n)
            }
            Generator::Cuda { gen, .. } => Ok(gen.randn(n)),
        }
    }
}
