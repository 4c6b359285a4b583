//! Layers shared by the UNet and the VAE, each matching its diffusers module (names follow the checkpoint keys).

use super::bounded;
use crate::kernels::cpu;
use crate::weights::{Weight, Weights};
use candle_core::{DType, Module, Result, Tensor, D};

/// `torch.nn.Conv2d` with a square kernel, stride and symmetric padding (no groups or dilation).
///
/// Float32 weights on the CPU are packed for [`cpu::conv::conv2d`] (on first use, see
/// [`crate::weights`]); CUDA tensors take our kernels (`cuda::conv2d`, with the `cuda` feature);
/// everything else runs candle's `conv2d`, split into bands of rows where its im2col columns would be
/// large ([`bounded::conv2d`]).
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `(c_out, c_in, k, k)`, or `(k·k, c_in, c_out)` when `packed`.
    weight: Weight,
    packed: bool,
    kernel: usize,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// The dtype of the weights (what inputs are cast to).
    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }

    /// The convolution of `xs` upsampled ×`up` (nearest) and mapped by `pre` (a group norm, + SiLU)
    /// first, without materialising either: fused into the convolution's input copy on the CPU,
    /// separate ops elsewhere.
    pub fn forward_with(&self, xs: &Tensor, up: usize, pre: Option<&GroupNormAct<'_>>) -> Result<Tensor> {
        self.forward_fused(xs, up, pre, None, None)
    }

    /// [`Conv2d::forward_with`], then `+ channel_add` (one value per image and output channel, shaped
    /// `(b, c_out)`) and `+ residual`, added as the result is written on the CPU.
    pub fn forward_fused(
        &self,
        xs: &Tensor,
        up: usize,
        pre: Option<&GroupNormAct<'_>>,
        channel_add: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.packed
            && cpu::fast_path(xs)
            && [channel_add, residual].into_iter().flatten().all(cpu::fast_path)
        {
            let map = match pre {
                Some(p) => Some(p.norm.map(xs, p.silu)?),
                None => None,
            };
            let input = cpu::conv::Input {
                up,
                pre: map.as_ref(),
            };
            let output = cpu::conv::Output {
                channel_add,
                residual,
            };
            let k = (self.kernel, self.kernel);
            return cpu::conv::conv2d(
                xs,
                self.weight.get()?,
                k,
                self.bias.as_ref(),
                self.stride,
                self.padding,
                input,
                output,
            );
        }
        let xs = match pre {
            Some(p) => p.norm.run(xs, p.silu)?,
            None => xs.clone(),
        };
        if self.packed {
            let xs = if up > 1 {
                let (_, _, h, w) = xs.dims4()?;
                xs.upsample_nearest2d(h * up, w * up)?
            } else {
                xs
            };
            let mut out = self.forward(&xs)?;
            if let Some(add) = channel_add {
                out = out.broadcast_add(&add.unsqueeze(2)?.unsqueeze(3)?)?;
            }
            return match residual {
                Some(r) => out + r,
                None => Ok(out),
            };
        }
        let add = bounded::ConvAdd {
            bias: self.bias.as_ref(),
            channel: channel_add,
            residual,
        };
        #[cfg(feature = "cuda")]
        if crate::kernels::cuda::conv_applies(&xs) {
            return crate::kernels::cuda::conv2d(
                &xs,
                self.weight.get()?,
                self.shape(up),
                add,
                bounded::BAND_BYTES,
            );
        }
        bounded::conv2d(
            &xs,
            self.weight.get()?,
            self.shape(up),
            add,
            bounded::conv_band_bytes(&xs),
        )
    }

    fn shape(&self, up: usize) -> bounded::ConvShape {
        bounded::ConvShape {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            up,
        }
    }

    /// Whether this is a 1×1, stride 1 convolution with CPU-packed weights, which
    /// [`Conv2d::to_tokens`] and [`Conv2d::from_tokens`] take.
    pub fn token_projection(&self, xs: &Tensor) -> bool {
        self.packed && self.kernel == 1 && self.stride == 1 && self.padding == 0 && cpu::fast_path(xs)
    }

    /// NCHW `xs` → this 1×1 convolution in token layout `(b, h·w, c_out)` (see
    /// [`cpu::conv::pointwise_to_tokens`]). Only when [`Conv2d::token_projection`].
    pub fn to_tokens(&self, xs: &Tensor) -> Result<Tensor> {
        cpu::conv::pointwise_to_tokens(xs, self.weight.get()?, self.bias.as_ref())
    }

    /// Tokens `(b, h·w, c_in)` → this 1×1 convolution in NCHW, plus `residual` (see
    /// [`cpu::conv::tokens_to_pointwise`]). Only when [`Conv2d::token_projection`].
    pub fn from_tokens(&self, tokens: &Tensor, hw: (usize, usize), residual: &Tensor) -> Result<Tensor> {
        cpu::conv::tokens_to_pointwise(tokens, hw, self.weight.get()?, self.bias.as_ref(), residual)
    }
}

/// A group norm, with or without the SiLU after it, to fuse into the next convolution.
#[derive(Debug, Clone, Copy)]
pub struct GroupNormAct<'a> {
    pub norm: &'a GroupNorm,
    pub silu: bool,
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.packed {
            let k = (self.kernel, self.kernel);
            let (input, out) = (cpu::conv::Input::default(), cpu::conv::Output::default());
            if cpu::fast_path(xs) {
                return cpu::conv::conv2d(
                    xs,
                    self.weight.get()?,
                    k,
                    self.bias.as_ref(),
                    self.stride,
                    self.padding,
                    input,
                    out,
                );
            }
            let x32 = xs.to_dtype(DType::F32)?;
            return cpu::conv::conv2d(
                &x32,
                self.weight.get()?,
                k,
                self.bias.as_ref(),
                self.stride,
                self.padding,
                input,
                out,
            )?
            .to_dtype(xs.dtype());
        }
        let add = bounded::ConvAdd {
            bias: self.bias.as_ref(),
            ..Default::default()
        };
        #[cfg(feature = "cuda")]
        if crate::kernels::cuda::conv_applies(xs) {
            return crate::kernels::cuda::conv2d(
                xs,
                self.weight.get()?,
                self.shape(1),
                add,
                bounded::BAND_BYTES,
            );
        }
        bounded::conv2d(
            xs,
            self.weight.get()?,
            self.shape(1),
            add,
            bounded::conv_band_bytes(xs),
        )
    }
}

/// `torch.nn.Linear`. Float32 weights on the CPU are kept transposed (`(in, out)`, on first use) for
/// [`cpu::linear`], which also adds a residual as it writes; elsewhere candle's matmul, followed on
/// CUDA by one kernel adding bias and residual (`cuda::add_last`).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `(out, in)`, or `(in, out)` when `packed`.
    weight: Weight,
    bias: Option<Tensor>,
    packed: bool,
}

/// A [`Linear`] with bias (`weight` and `bias` under `vb`).
pub fn linear(in_dim: usize, out_dim: usize, vb: Weights) -> Result<Linear> {
    Linear::new(in_dim, out_dim, true, vb)
}

/// A [`Linear`] without bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: Weights) -> Result<Linear> {
    Linear::new(in_dim, out_dim, false, vb)
}

/// Whether attention in `vb`'s dtype on its device, with heads of `head_dim` values, runs our CUDA
/// kernel, which reads q, k, v as column views of one stacked projection's output in place (candle's
/// path would copy each view twice, where separate projections cost one copy).
pub fn attention_takes_views(vb: &Weights, head_dim: usize) -> bool {
    #[cfg(feature = "cuda")]
    {
        crate::kernels::cuda::attention_applies_to(vb.device(), vb.dtype(), head_dim)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (vb, head_dim);
        false
    }
}

/// One bias-free [`Linear`] for several that read the same input: the weight `name` of each of `parts`
/// (`(out, in_dim)` under its `Weights`) stacked into `(Σ out, in_dim)`, so one matmul writes their
/// outputs side by side in each row (narrow the last dimension to take them apart). `None` where the
/// weights are packed for our float32 CPU kernels, which take them apart. The parts are read now and
/// dropped once stacked: the model holds the stacked copy alone.
pub fn linear_stacked_no_bias(
    in_dim: usize,
    parts: &[(usize, Weights)],
    name: &str,
) -> Result<Option<Linear>> {
    if parts.iter().any(|(_, vb)| vb.packs()) {
        return Ok(None);
    }
    let weights = parts
        .iter()
        .map(|(out, vb)| vb.get((*out, in_dim), name))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Linear {
        weight: Weight::ready(Tensor::cat(&weights, 0)?),
        bias: None,
        packed: false,
    }))
}

/// `(out, in)` → `(in, out)`, the layout [`cpu::linear`] takes.
fn pack_linear(w: &[f32], shape: &[usize]) -> Result<Tensor> {
    let &[o, i] = shape else {
        candle_core::bail!("internal error: linear weight of shape {shape:?}")
    };
    cpu::tensor(cpu::conv::pack_data(w, o, i, 1)?, (i, o))
}

/// `(c_out, c_in, kh, kw)` → `(kh·kw, c_in, c_out)`, the layout [`cpu::conv::conv2d`] takes.
fn pack_conv(w: &[f32], shape: &[usize]) -> Result<Tensor> {
    let &[o, i, kh, kw] = shape else {
        candle_core::bail!("internal error: convolution weight of shape {shape:?}")
    };
    cpu::tensor(cpu::conv::pack_data(w, o, i, kh * kw)?, (kh * kw, i, o))
}

impl Linear {
    fn new(in_dim: usize, out_dim: usize, bias: bool, vb: Weights) -> Result<Self> {
        let (weight, packed) = vb.packed(&[out_dim, in_dim], "weight", pack_linear)?;
        let bias = bias.then(|| vb.get(out_dim, "bias")).transpose()?;
        Ok(Self { weight, bias, packed })
    }

    /// `self(xs) + residual`.
    pub fn forward_add(&self, xs: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        if self.packed && cpu::fast_path(xs) && residual.is_none_or(cpu::fast_path) {
            return cpu::linear(xs, self.weight.get()?, self.bias.as_ref(), residual);
        }
        #[cfg(feature = "cuda")]
        if !self.packed && crate::kernels::cuda::applies(xs, "add") {
            let y = self.matmul(xs)?;
            return match (&self.bias, residual) {
                (Some(bias), r) => crate::kernels::cuda::add_last(&y, bias, r),
                (None, Some(r)) => y + r,
                (None, None) => Ok(y),
            };
        }
        let out = if self.packed {
            let x32 = xs.to_dtype(DType::F32)?;
            cpu::linear(&x32, self.weight.get()?, self.bias.as_ref(), None)?.to_dtype(xs.dtype())?
        } else {
            candle_nn::Linear::new(self.weight.get()?.clone(), self.bias.clone()).forward(xs)?
        };
        match residual {
            Some(r) => out + r,
            None => Ok(out),
        }
    }

    /// `xs · weightᵀ` without the bias (unpacked weights).
    #[cfg(feature = "cuda")]
    fn matmul(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::Linear::new(self.weight.get()?.clone(), None).forward(xs)
    }

    /// diffusers' GEGLU of this projection: `(h₁ + b₁) · gelu(h₂ + b₂)` for `h = xs · weightᵀ` split in
    /// two halves, as one kernel after the matmul on CUDA; `None` where that does not apply.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub fn geglu_fused(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if !self.packed && crate::kernels::cuda::applies(xs, "geglu") {
            return crate::kernels::cuda::geglu(&self.matmul(xs)?, self.bias.as_ref()).map(Some);
        }
        Ok(None)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_add(xs, None)
    }
}

/// `torch.nn.Embedding`: rows of a `(n, dim)` table picked by id. The table is deferred like the
/// packed weights (a CLIP vocabulary's is 150-250 MB) and used as stored.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Weight,
    dim: usize,
}

/// An [`Embedding`] of `n` rows of `dim` values (`weight` under `vb`).
pub fn embedding(n: usize, dim: usize, vb: Weights) -> Result<Embedding> {
    let (table, _) = vb.packed(&[n, dim], "weight", as_stored)?;
    Ok(Embedding { table, dim })
}

/// The weight as stored (an [`Embedding`] table needs no other layout).
fn as_stored(w: &[f32], shape: &[usize]) -> Result<Tensor> {
    Tensor::from_slice(w, shape, &candle_core::Device::Cpu)
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.dim);
        // A table kept in half precision gives its rows in the dtype the model computes in.
        self.table
            .get()?
            .index_select(&ids.flatten_all()?, 0)?
            .to_dtype(self.table.dtype())?
            .reshape(dims)
    }
}

/// A 2-D convolution with square kernel, stride and symmetric padding, as `torch.nn.Conv2d`.
pub fn conv2d(
    vb: Weights,
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    let shape = [out_ch, in_ch, kernel, kernel];
    let (weight, packed) = vb.packed(&shape, "weight", pack_conv)?;
    Ok(Conv2d {
        weight,
        packed,
        kernel,
        bias: Some(vb.get(out_ch, "bias")?),
        stride,
        padding,
    })
}

/// `torch.nn.GroupNorm` (with affine weight and bias), optionally fused with the SiLU that follows it
/// in every resnet and output block.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// Loads a [`GroupNorm`] from `weight` and `bias` under `vb`, as `candle_nn::group_norm`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: Weights) -> Result<GroupNorm> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        candle_core::bail!("GroupNorm: num_groups ({groups}) must divide num_channels ({channels})")
    }
    Ok(GroupNorm {
        weight: vb.get(channels, "weight")?,
        bias: vb.get(channels, "bias")?,
        groups,
        eps,
    })
}

impl GroupNorm {
    /// The per-channel map this norm (+ SiLU) applies to `xs` (float32 CPU input only).
    fn map(&self, xs: &Tensor, silu: bool) -> Result<cpu::conv::Affine> {
        cpu::group_norm_map(xs, self.groups, self.eps, &self.weight, &self.bias, silu)
    }

    /// This norm followed by SiLU, for [`Conv2d::forward_with`].
    pub fn with_silu(&self) -> GroupNormAct<'_> {
        GroupNormAct {
            norm: self,
            silu: true,
        }
    }

    /// Float32 on the CPU: [`cpu::group_norm`]. On CUDA our kernels (`cuda::group_norm`). Elsewhere
    /// candle's ops, with bounded temporaries
    /// ([`bounded::group_norm`]) once a float32 copy of `xs` would pass
    /// [`bounded::GROUP_NORM_BAND_BYTES`].
    fn run(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        if cpu::fast_path(xs) && cpu::fast_path(&self.weight) {
            return cpu::group_norm(xs, self.groups, self.eps, &self.weight, &self.bias, silu);
        }
        #[cfg(feature = "cuda")]
        if crate::kernels::cuda::applies(xs, "norm") {
            return crate::kernels::cuda::group_norm(
                xs,
                self.groups,
                self.eps,
                &self.weight,
                &self.bias,
                silu,
            );
        }
        let band = bounded::GROUP_NORM_BAND_BYTES;
        if xs.elem_count() * DType::F32.size_in_bytes() > band {
            return bounded::group_norm(xs, self.groups, self.eps, &self.weight, &self.bias, silu, band);
        }
        let c = xs.dim(1)?;
        let gn = candle_nn::GroupNorm::new(self.weight.clone(), self.bias.clone(), c, self.groups, self.eps)?;
        let out = gn.forward(xs)?;
        if silu {
            out.silu()
        } else {
            Ok(out)
        }
    }

    /// `silu(group_norm(xs))`.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, true)
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, false)
    }
}

/// diffusers `get_timestep_embedding`: sinusoidal embedding of (possibly fractional) timesteps, in f32.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
) -> Result<Tensor> {
    let half = dim / 2;
    let device = timesteps.device();
    // exponent = -ln(10000) * arange(half) / (half - shift), computed in f32 like torch.
    let exponent: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32) / (half as f32 - downscale_freq_shift as f32))
        .collect();
    let freqs = Tensor::new(exponent, device)?.exp()?;
    let t = timesteps.to_dtype(DType::F32)?;
    let args = t.unsqueeze(1)?.broadcast_mul(&freqs.unsqueeze(0)?)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], D::Minus1)?
    } else {
        Tensor::cat(&[sin, cos], D::Minus1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(D::Minus1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// diffusers `TimestepEmbedding`: (+ `cond_proj(condition)`) → linear → SiLU → linear.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    /// `cond_proj` (no bias) of UNets with `time_cond_proj_dim` (LCM's guidance embedding).
    cond_proj: Option<Linear>,
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// `cond_dim`: the UNet's `time_cond_proj_dim`, when it has one.
    pub fn new(vb: Weights, in_dim: usize, out_dim: usize, cond_dim: Option<usize>) -> Result<Self> {
        Ok(Self {
            cond_proj: cond_dim
                .map(|d| linear_no_bias(d, in_dim, vb.pp("cond_proj")))
                .transpose()?,
            linear_1: linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }

    /// The embedding of `xs` with the optional `condition` added first (diffusers adds it to the
    /// sinusoidal embedding before `linear_1`).
    pub fn forward_cond(&self, xs: &Tensor, condition: Option<&Tensor>) -> Result<Tensor> {
        let xs = match (&self.cond_proj, condition) {
            (Some(proj), Some(c)) => (xs + proj.forward(&c.to_dtype(xs.dtype())?)?)?,
            (None, Some(_)) => {
                candle_core::bail!("timestep_cond given to a UNet without time_cond_proj_dim")
            }
            _ => xs.clone(),
        };
        self.linear_2.forward(&self.linear_1.forward(&xs)?.silu()?)
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_cond(xs, None)
    }
}

/// diffusers `ResnetBlock2D` (time-scale-shift "default", SiLU, optional time embedding and 1×1 shortcut).
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// Shape parameters of a [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding; `None` for the VAE, whose resnets take none.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(vb: Weights, c: ResnetConfig) -> Result<Self> {
        let conv_shortcut = if c.in_channels != c.out_channels {
            Some(conv2d(
                vb.pp("conv_shortcut"),
                c.in_channels,
                c.out_channels,
                1,
                1,
                0,
            )?)
        } else {
            None
        };
        let time_emb_proj = match c.temb_channels {
            Some(t) => Some(linear(t, c.out_channels, vb.pp("time_emb_proj"))?),
            None => None,
        };
        Ok(Self {
            norm1: group_norm(c.groups, c.in_channels, c.eps, vb.pp("norm1"))?,
            conv1: conv2d(vb.pp("conv1"), c.in_channels, c.out_channels, 3, 1, 1)?,
            time_emb_proj,
            norm2: group_norm(c.groups, c.out_channels, c.eps, vb.pp("norm2"))?,
            conv2: conv2d(vb.pp("conv2"), c.out_channels, c.out_channels, 3, 1, 1)?,
            conv_shortcut,
            output_scale_factor: c.output_scale_factor,
        })
    }

    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        // The norms (+ SiLU) are fused into the convolutions' input copies, the time embedding and the
        // shortcut into their outputs (float32 on the CPU; separate ops elsewhere).
        let t = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(proj.forward(&temb.silu()?)?),
            _ => None,
        };
        let h = self
            .conv1
            .forward_fused(xs, 1, Some(&self.norm1.with_silu()), t.as_ref(), None)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let out = self
            .conv2
            .forward_fused(&h, 1, Some(&self.norm2.with_silu()), None, Some(&shortcut))?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers `Downsample2D` with a conv: stride 2; `padding == 0` pads right/bottom by one like diffusers.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    asymmetric_pad: bool,
}

impl Downsample2D {
    pub fn new(vb: Weights, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(vb.pp("conv"), channels, channels, 3, 2, padding)?,
            asymmetric_pad: padding == 0,
        })
    }
}

impl Module for Downsample2D {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.asymmetric_pad {
            let xs = xs
                .pad_with_zeros(D::Minus1, 0, 1)?
                .pad_with_zeros(D::Minus2, 0, 1)?;
            self.conv.forward(&xs)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// diffusers `Upsample2D` with a conv: nearest-neighbour upsampling, then a 3×3 conv.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: Weights, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// Upsamples to `size` (the skip connection's size in the UNet, which handles odd sizes) or ×2.
    pub fn forward(&self, xs: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        if th == 2 * h && tw == 2 * w {
            return self.conv.forward_with(xs, 2, None);
        }
        self.conv.forward(&nearest_resize(xs, th, tw)?)
    }
}

/// `torch.nn.functional.interpolate(mode="nearest")` to any size: source index = floor(dst * in / out).
pub fn nearest_resize(xs: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let device = xs.device();
    let rows: Vec<u32> = (0..out_h)
        .map(|i| ((i as f64 * (h as f64 / out_h as f64)).floor() as usize).min(h - 1) as u32)
        .collect();
    let cols: Vec<u32> = (0..out_w)
        .map(|j| ((j as f64 * (w as f64 / out_w as f64)).floor() as usize).min(w - 1) as u32)
        .collect();
    let xs = xs.index_select(&Tensor::new(rows, device)?, 2)?;
    xs.index_select(&Tensor::new(cols, device)?, 3)
}

/// Query rows processed per attention chunk are chosen so one chunk's score matrix stays under this
/// many elements: a 4096×4096 self-attention (SD 1.5 at 512²) never materialises whole.
const ATTENTION_CHUNK_ELEMENTS: usize = 1 << 22;

/// The same bound on a GPU, where every chunk costs a handful of kernel launches: 64 Mi scores (256 MB in
/// f32) are 4 chunks for SD 1.5 at 512² instead of 64.
const GPU_ATTENTION_CHUNK_ELEMENTS: usize = 1 << 26;

/// Multi-head scaled-dot-product attention over `(batch, len, heads·dim)` inputs, softmax accumulated
/// in f32.
///
/// Float32 on the CPU runs [`cpu::attention::attention`], which holds one cache-sized block of scores
/// per thread; on CUDA in half precision our fused kernel where it is on (`cuda::attention`, off by
/// default: see `cuda::enabled`). Elsewhere rows of the query are processed in chunks: rows are independent, so chunking
/// changes nothing numerically but bounds the memory of the score matrix.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, lq, inner) = q.dims3()?;
    if [q, k, v].iter().all(|t| cpu::fast_path(t)) {
        let scale = 1.0 / ((inner / heads.max(1)) as f64).sqrt();
        return cpu::attention::attention(q, k, v, heads, scale as f32);
    }
    let lk = k.dim(1)?;
    let head_dim = inner / heads;
    #[cfg(feature = "cuda")]
    if crate::kernels::cuda::attention_applies(q, head_dim) {
        if let Some(out) = crate::kernels::cuda::attention(q, k, v, heads)? {
            return Ok(out);
        }
    }
    let split = |t: &Tensor, l: usize| -> Result<Tensor> {
        t.reshape((b, l, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * heads, l, head_dim))
    };
    let scale = 1.0 / (head_dim as f64).sqrt();
    let q = (split(q, lq)? * scale)?;
    let k_t = split(k, lk)?.t()?.contiguous()?;
    let v = split(v, lk)?;
    let in_dtype = q.dtype();
    let on_gpu = !q.device().is_cpu();
    let budget = if on_gpu {
        GPU_ATTENTION_CHUNK_ELEMENTS
    } else {
        ATTENTION_CHUNK_ELEMENTS
    };
    // candle's CUDA softmax accumulates half-precision rows in f32 itself; elsewhere upcast explicitly.
    let softmax_dtype = if on_gpu { in_dtype } else { DType::F32 };
    let rows_per_chunk = (budget / (lk * b * heads).max(1)).clamp(1, lq);
    let mut outs = Vec::with_capacity(lq.div_ceil(rows_per_chunk));
    let mut start = 0;
    while start < lq {
        let len = rows_per_chunk.min(lq - start);
        let q_chunk = q.narrow(1, start, len)?;
        let scores = q_chunk.matmul(&k_t)?.to_dtype(softmax_dtype)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(in_dtype)?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    let out = if outs.len() == 1 {
        outs.pop().expect("one chunk")
    } else {
        Tensor::cat(&outs, 1)?
    };
    out.reshape((b, heads, lq, head_dim))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, lq, inner))
}
