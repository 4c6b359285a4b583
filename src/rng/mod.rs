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
use candle_core::{DType, Device};

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
        Generator {
            source: Source::Cpu(Box::new(g)),
            dtype: DType::F32,
            recorded: None,
        }
    }
}

/// The CUDA generator: on the GPU the run is on (its own launch limit unless one is named), else the host.
fn cuda_source(seed: u64, max_blocks: Option<u32>, device: &Device) -> Source {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let blocks = max_blocks.or_else(|| cuda_kernel::max_blocks(dev));
        return Source::Cuda {
            gen: TorchCudaGenerator::new(seed, blocks.unwrap_or(philox::DEFAULT_MAX_BLOCKS)),
            device: Some(dev.clone()),
        };
    }
    let _ = device;
    Source::Cuda {
        gen: TorchCudaGenerator::new(seed, max_blocks.unwrap_or(philox::DEFAULT_MAX_BLOCKS)),
        #[cfg(feature = "cuda")]
        device: None,
    }
}

/// The value of `x` in `dtype` (round to nearest even), as f32.
fn round_to(dtype: DType) -> fn(f32) -> f32 {
    match dtype {
        DType::F16 => |x| half::f16::from_f32(x).to_f32(),
        DType::BF16 => |x| half::bf16::from_f32(x).to_f32(),
        _ => |x| x,
    }
}

/// The generator of one run.
#[derive(Debug, Clone)]
pub struct Generator {
    source: Source,
    /// The dtype draws are made in unless a caller names one: diffusers draws latents and scheduler
    /// noise in the pipeline's dtype, and torch's half-precision draws are float draws rounded.
    dtype: DType,
    /// Every draw since [`Generator::record_draws`], for traces (scheduler noise included).
    recorded: Option<Vec<Vec<f32>>>,
}

#[derive(Debug, Clone)]
enum Source {
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
    /// The generator `kind` seeded with `seed`, for a run on `device`, drawing in `dtype` by default.
    pub fn new(kind: RngKind, seed: u64, device: &Device, dtype: DType) -> Self {
        let source = match kind {
            RngKind::Cpu => Source::Cpu(Box::new(TorchCpuGenerator::new(seed))),
            RngKind::Cuda { max_blocks } => cuda_source(seed, max_blocks, device),
        };
        Generator {
            source,
            dtype,
            recorded: None,
        }
    }

    /// From now on keep a copy of every draw, for [`Generator::take_recorded`].
    pub fn record_draws(&mut self) {
        self.recorded.get_or_insert_with(Vec::new);
    }

    /// The draws recorded since the last call, in order.
    pub fn take_recorded(&mut self) -> Vec<Vec<f32>> {
        self.recorded.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The dtype [`Self::randn`] draws in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `torch.randn(n, generator=g, dtype=self.dtype())`, row-major for any shape of `n` elements, as f32.
    pub fn randn(&mut self, n: usize) -> Result<Vec<f32>> {
        self.randn_in(n, self.dtype)
    }

    /// `torch.randn(n, generator=g, dtype=dtype)` as f32 (f32, f16 or bf16; others draw in f32).
    pub fn randn_in(&mut self, n: usize, dtype: DType) -> Result<Vec<f32>> {
        let v = self.draw(n, dtype)?;
        if let Some(rec) = self.recorded.as_mut() {
            rec.push(v.clone());
        }
        Ok(v)
    }

    fn draw(&mut self, n: usize, dtype: DType) -> Result<Vec<f32>> {
        let round = round_to(dtype);
        match &mut self.source {
            Source::Cpu(g) if matches!(dtype, DType::F16 | DType::BF16) => Ok(g.randn_reduced(n, round)),
            Source::Cpu(g) => Ok(g.randn(n)),
            // torch's CUDA kernel computes in float and casts each value.
            #[cfg(feature = "cuda")]
            Source::Cuda {
                gen,
                device: Some(dev),
            } => {
                let (offset, blocks) = gen.reserve(n);
                let mut v = cuda_kernel::randn(dev, gen.seed(), offset, blocks, n)?;
                v.iter_mut().for_each(|x| *x = round(*x));
                Ok(v)
            }
            Source::Cuda { gen, .. } => Ok(gen.randn(n).into_iter().map(round).collect()),
        }
    }
}
