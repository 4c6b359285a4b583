//! diffusers `AutoencoderKL`: encoder (image → latent distribution) and decoder (latents → image).

use crate::layers::cancel;
use crate::layers::nn::{
    conv2d, group_norm, Conv2d, Downsample2D, GroupNorm, ResnetBlock2D, ResnetConfig, Upsample2D,
};
use crate::weights::Weights;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::Linear;
use serde::Deserialize;

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn one() -> usize {
    1
}
fn groups() -> usize {
    32
}
fn channels() -> Vec<usize> {
    vec![64]
}
fn scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}
fn sample_size() -> usize {
    32
}
fn silu() -> String {
    "silu".into()
}

/// `vae/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    #[serde(default = "sample_size")]
    pub sample_size: usize,
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub force_upcast: Option<bool>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
}

impl VaeConfig {
    /// Pixels per latent along each side: `2^(len(block_out_channels) - 1)`, as diffusers derives it.
    pub fn scale_factor(&self) -> usize {
        // Capped so a config with absurdly many blocks (refused when the model is built) cannot
        // overflow the shift.
        1 << self.block_out_channels.len().saturating_sub(1).min(16)
    }

    fn check_supported(&self) -> std::result::Result<(), String> {
        let mut problems = Vec::new();
        if self.act_fn != "silu" {
            problems.push(format!("act_fn {}", self.act_fn));
        }
        for t in &self.down_block_types {
            if t != "DownEncoderBlock2D" {
                problems.push(format!("down block type {t}"));
            }
        }
        for t in &self.up_block_types {
            if t != "UpDecoderBlock2D" {
                problems.push(format!("up block type {t}"));
            }
        }
        if self.block_out_channels.is_empty() {
            problems.push("empty block_out_channels".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }

    /// Refuses values no working VAE has and that would divide by zero or overflow (the scale
    /// factor is `2^(blocks - 1)`) while the model is built or run, naming the key.
    fn check_values(&self) -> std::result::Result<(), String> {
        const MAX_WIDTH: usize = 1 << 16;
        let mut problems = Vec::new();
        let n = self.block_out_channels.len();
        if !(1..=8).contains(&n) {
            problems.push(format!("block_out_channels must list 1 to 8 blocks, not {n}"));
        }
        let g = self.norm_num_groups;
        if self.block_out_channels.iter().any(|&c| c == 0 || c > MAX_WIDTH) {
            problems.push(format!("block_out_channels entries must be 1..={MAX_WIDTH}"));
        } else if g == 0 || self.block_out_channels.iter().any(|c| c % g != 0) {
            problems.push(format!(
                "norm_num_groups {g} must be positive and divide every block_out_channels entry"
            ));
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
        ] {
            if v == 0 || v > MAX_WIDTH {
                problems.push(format!("{key} {v} must be 1..={MAX_WIDTH}"));
            }
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            problems.push(format!(
                "scaling_factor {} must be a finite nonzero number",
                self.scaling_factor
            ));
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            problems.push("shift_factor must be finite".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }
}

/// Single-head self-attention over pixels with a residual (the VAE mid block's `Attention`).
/// Accepts both the current (`to_q`, `group_norm`) and the legacy (`query`, `proj_attn`) key names.
#[derive(Debug, Clone)]
struct PixelAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl PixelAttention {
    fn new(vb: Weights, ch: usize, groups: usize) -> Result<Self> {
        let legacy = !vb.contains_tensor("to_q.weight") && vb.contains_tensor("query.weight");
        let name = |new: &'static str, old: &'static str| if legacy { old } else { new };
        Ok(Self {
            norm: group_norm(groups, ch, 1e-6, vb.pp(name("group_norm", "group_norm")))?,
            q: candle_nn::linear(ch, ch, vb.pp(name("to_q", "query")).vb())?,
            k: candle_nn::linear(ch, ch, vb.pp(name("to_k", "key")).vb())?,
            v: candle_nn::linear(ch, ch, vb.pp(name("to_v", "value")).vb())?,
            out: candle_nn::linear(ch, ch, vb.pp(name("to_out.0", "proj_attn")).vb())?,
        })
    }
}

impl Module for PixelAttention {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        // Contiguous before the linears: candle 0.11's CPU matmul folds the batch of a transposed lhs
        // into its rows and multiplies the wrong elements for batch > 1.
        let tokens = self
            .norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.q.forward(&tokens)?;
        let k = self.k.forward(&tokens)?;
        let v = self.v.forward(&tokens)?;
        let out = self.out.forward(&crate::layers::nn::attention(&q, &k, &v, 1)?)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + xs
    }
}

#[derive(Debug, Clone)]
struct VaeMid {
    first: ResnetBlock2D,
    attn: Option<PixelAttention>,
    second: ResnetBlock2D,
}

impl VaeMid {
    fn new(vb: Weights, ch: usize, cfg: &VaeConfig) -> Result<Self> {
        let r = resnet_cfg(ch, ch, cfg.norm_num_groups);
        Ok(Self {
            first: ResnetBlock2D::new(vb.pp("resnets.0"), r)?,
            attn: if cfg.mid_block_add_attention {
                Some(PixelAttention::new(
                    vb.pp("attentions.0"),
                    ch,
                    cfg.norm_num_groups,
                )?)
            } else {
                None
            },
            second: ResnetBlock2D::new(vb.pp("resnets.1"), r)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.first.forward(xs, None)?;
        if let Some(attn) = &self.attn {
            xs = attn.forward(&xs)?;
        }
        self.second.forward(&xs, None)
    }
}

fn resnet_cfg(in_ch: usize, out_ch: usize, groups: usize) -> ResnetConfig {
    ResnetConfig {
        in_channels: in_ch,
        out_channels: out_ch,
        temb_channels: None,
        groups,
        eps: 1e-6,
        output_scale_factor: 1.0,
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    blocks: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid: VaeMid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: Weights, cfg: &VaeConfig) -> Result<Self> {
        let chs = &cfg.block_out_channels;
        let n = chs.len();
        let mut blocks = Vec::with_capacity(n);
        let mut out_ch = chs[0];
        for (i, &ch) in chs.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = ch;
            let bvb = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let r_in = if j == 0 { in_ch } else { out_ch };
                    ResnetBlock2D::new(
                        bvb.pp(format!("resnets.{j}")),
                        resnet_cfg(r_in, out_ch, cfg.norm_num_groups),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            // The VAE encoder downsamples with padding 0, i.e. diffusers' asymmetric right/bottom pad.
            let down = if i + 1 < n {
                Some(Downsample2D::new(bvb.pp("downsamplers.0"), out_ch, 0)?)
            } else {
                None
            };
            blocks.push((resnets, down));
        }
        let last = chs[n - 1];
        Ok(Self {
            conv_in: conv2d(vb.pp("conv_in"), cfg.in_channels, chs[0], 3, 1, 1)?,
            blocks,
            mid: VaeMid::new(vb.pp("mid_block"), last, cfg)?,
            norm_out: group_norm(cfg.norm_num_groups, last, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for (resnets, down) in &self.blocks {
            for r in resnets {
                cancel::check()?;
                xs = r.forward(&xs, None)?;
            }
            if let Some(d) = down {
                xs = d.forward(&xs)?;
            }
        }
        let xs = self.mid.forward(&xs)?;
        self.conv_out
            .forward_with(&xs, 1, Some(&self.norm_out.with_silu()))
    }
}

#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid: VaeMid,
    blocks: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: Weights, cfg: &VaeConfig) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let n = rev.len();
        let mut blocks = Vec::with_capacity(n);
        let mut out_ch = rev[0];
        for (i, &ch) in rev.iter().enumerate() {
            let prev = out_ch;
            out_ch = ch;
            let bvb = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let r_in = if j == 0 { prev } else { out_ch };
                    ResnetBlock2D::new(
                        bvb.pp(format!("resnets.{j}")),
                        resnet_cfg(r_in, out_ch, cfg.norm_num_groups),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let up = if i + 1 < n {
                Some(Upsample2D::new(bvb.pp("upsamplers.0"), out_ch)?)
            } else {
                None
            };
            blocks.push((resnets, up));
        }
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: conv2d(vb.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?,
            mid: VaeMid::new(vb.pp("mid_block"), rev[0], cfg)?,
            blocks,
            norm_out: group_norm(cfg.norm_num_groups, first, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(vb.pp("conv_out"), first, cfg.out_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.conv_in.forward(xs)?;
        cancel::check()?;
        let mut xs = self.mid.forward(&xs)?;
        for (resnets, up) in &self.blocks {
            for r in resnets {
                cancel::check()?;
                xs = r.forward(&xs, None)?;
            }
            if let Some(u) = up {
                xs = u.forward(&xs, None)?;
            }
        }
        self.conv_out
            .forward_with(&xs, 1, Some(&self.norm_out.with_silu()))
    }
}

/// The latent distribution the encoder predicts (`DiagonalGaussianDistribution`).
#[derive(Debug, Clone)]
pub struct LatentDist {
    pub mean: Tensor,
    pub std: Tensor,
}

impl LatentDist {
    /// `mean + std · noise`, with `noise` drawn by the caller from the run's generator.
    pub fn sample_with(&self, noise: &Tensor) -> Result<Tensor> {
        self.mean.broadcast_add(&self.std.broadcast_mul(noise)?)
    }
}

/// `AutoencoderKL`.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    /// The dtype the VAE computes in.
    pub fn dtype(&self) -> DType {
        self.decoder.conv_in.dtype()
    }

    pub fn new(vb: Weights, config: VaeConfig) -> Result<Self> {
        if let Err(what) = config.check_values() {
            candle_core::bail!("invalid VAE config: {what}");
        }
        if let Err(what) = config.check_supported() {
            candle_core::bail!("this VAE config needs features autopipeline does not implement yet: {what}");
        }
        let lc = config.latent_channels;
        let quant_conv = if config.use_quant_conv {
            Some(conv2d(vb.pp("quant_conv"), 2 * lc, 2 * lc, 1, 1, 0)?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(conv2d(vb.pp("post_quant_conv"), lc, lc, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), &config)?,
            decoder: Decoder::new(vb.pp("decoder"), &config)?,
            quant_conv,
            post_quant_conv,
            config,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Image in `[-1, 1]`, `(b, 3, h, w)` → latent distribution (unscaled).
    /// Runs in the weights' dtype; mean and std come back as float32.
    pub fn encode(&self, image: &Tensor) -> Result<LatentDist> {
        self.encode_with(image, DecodeOptions::default())
    }

    /// [`AutoencoderKL::encode`] with diffusers' `enable_tiling` / `enable_slicing` behaviour.
    pub fn encode_with(&self, image: &Tensor, opts: DecodeOptions) -> Result<LatentDist> {
        let image = image.to_dtype(self.encoder.conv_in.dtype())?;
        let moments = sliced(&image, opts.slicing, |x| {
            let (_, _, h, w) = x.dims4()?;
            let t = self.tiles();
            if opts.tiling && (h > t.sample || w > t.sample) {
                // Image tiles of `sample` pixels every `overlap_sample`, blended over `blend_latent`.
                tiled(
                    x,
                    t.sample,
                    t.overlap_sample,
                    t.blend_latent,
                    t.latent - t.blend_latent,
                    |tile| self.encode_moments(tile),
                )
            } else {
                self.encode_moments(x)
            }
        })?;
        let lc = self.config.latent_channels;
        let moments = moments.to_dtype(DType::F32)?;
        let mean = moments.narrow(1, 0, lc)?;
        let logvar = moments.narrow(1, lc, lc)?.clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok(LatentDist { mean, std })
    }

    fn encode_moments(&self, x: &Tensor) -> Result<Tensor> {
        let moments = self.encoder.forward(x)?;
        match &self.quant_conv {
            Some(q) => q.forward(&moments),
            None => Ok(moments),
        }
    }

    /// Unscaled latents → image in roughly `[-1, 1]`, `(b, out_channels, h·f, w·f)`.
    /// Runs in the weights' dtype; the image comes back as float32.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_with(latents, DecodeOptions::default())
    }

    /// [`AutoencoderKL::decode`] with diffusers' `enable_tiling` / `enable_slicing` behaviour: latents
    /// larger than a tile are decoded tile by tile, and a batch image by image.
    pub fn decode_with(&self, latents: &Tensor, opts: DecodeOptions) -> Result<Tensor> {
        let latents = latents.to_dtype(self.decoder.conv_in.dtype())?;
        let image = sliced(&latents, opts.slicing, |z| {
            let (_, _, h, w) = z.dims4()?;
            let t = self.tiles();
            if opts.tiling && (h > t.latent || w > t.latent) {
                // Latent tiles of `latent` every `overlap_latent`, blended over `blend_sample` pixels.
                tiled(
                    z,
                    t.latent,
                    t.overlap_latent,
                    t.blend_sample,
                    t.sample - t.blend_sample,
                    |tile| self.decode_plain(tile),
                )
            } else {
                self.decode_plain(z)
            }
        })?;
        image.to_dtype(DType::F32)
    }

    fn decode_plain(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
    }

    /// diffusers' tile geometry: `tile_sample_min_size = sample_size`, `tile_latent_min_size =
    /// sample_size / 2^(blocks - 1)`, `tile_overlap_factor = 0.25`, and the overlaps and blend widths
    /// `_tiled_encode` / `tiled_decode` derive from them (Python `int()` truncation included).
    fn tiles(&self) -> Tiles {
        const OVERLAP: f64 = 0.25;
        let sample = self.config.sample_size;
        let latent = (sample as f64 / self.config.scale_factor() as f64) as usize;
        Tiles {
            sample,
            latent,
            overlap_sample: (sample as f64 * (1.0 - OVERLAP)) as usize,
            overlap_latent: (latent as f64 * (1.0 - OVERLAP)) as usize,
            blend_sample: (sample as f64 * OVERLAP) as usize,
            blend_latent: (latent as f64 * OVERLAP) as usize,
        }
    }
}

/// How the VAE splits its work, as diffusers' `AutoencoderKL.enable_tiling()` and `enable_slicing()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Encode/decode inputs larger than one tile (`sample_size` pixels) as overlapping tiles blended
    /// linearly at the seams: memory stays that of one tile whatever the image size, and the result
    /// differs slightly from an untiled run (each tile sees only its own context), as in diffusers.
    pub tiling: bool,
    /// Encode/decode a batch one image at a time: lower peak memory, identical results.
    pub slicing: bool,
}

/// Tile sizes of [`AutoencoderKL::tiles`].
struct Tiles {
    sample: usize,
    latent: usize,
    overlap_sample: usize,
    overlap_latent: usize,
    blend_sample: usize,
    blend_latent: usize,
}

/// `f` over each image of the batch when `slicing` (and the batch has more than one), concatenated.
fn sliced(x: &Tensor, slicing: bool, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let b = x.dim(0)?;
    if !slicing || b <= 1 {
        return f(x);
    }
    let parts = (0..b)
        .map(|i| f(&x.narrow(0, i, 1)?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// diffusers' tiled VAE pass: tiles of `tile` input rows/columns starting every `overlap`, each run
/// through `f`; each output tile blended with the (already blended) one above over `blend` rows and
/// the one to its left over `blend` columns, then cropped to `limit × limit` and stitched.
fn tiled(
    x: &Tensor,
    tile: usize,
    overlap: usize,
    blend: usize,
    limit: usize,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if overlap == 0 || limit == 0 {
        candle_core::bail!(
            "VAE tiling needs a larger sample_size in the VAE config (tiles of {tile} do not overlap)"
        );
    }
    let mut rows: Vec<Vec<Tensor>> = Vec::new();
    for i in (0..h).step_by(overlap) {
        let mut row = Vec::new();
        for j in (0..w).step_by(overlap) {
            cancel::check()?;
            let t = x.narrow(2, i, tile.min(h - i))?.narrow(3, j, tile.min(w - j))?;
            let mut out = f(&t)?;
            if let Some(above) = rows.last().and_then(|r: &Vec<Tensor>| r.get(row.len())) {
                out = blend_edge(above, &out, blend, 2)?;
            }
            if let Some(left) = row.last() {
                out = blend_edge(left, &out, blend, 3)?;
            }
            row.push(out);
        }
        rows.push(row);
    }
    let stitched = rows
        .iter()
        .map(|row| {
            let crops = row
                .iter()
                .map(|t| {
                    t.narrow(2, 0, limit.min(t.dim(2)?))?
                        .narrow(3, 0, limit.min(t.dim(3)?))
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&crops, 3)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&stitched, 2)
}

/// diffusers' `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `extent` rows (columns) of `b`
/// become `a_end · (1 − y/extent) + b · (y/extent)`, where `a_end` are the last `extent` of `a`. The
/// weights are computed in f64 and rounded to the tensors' dtype, as torch does with Python floats.
fn blend_edge(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(dim)?).min(b.dim(dim)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let mut shape = vec![1usize; 4];
    shape[dim] = extent;
    let weights = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
        let w: Vec<f32> = (0..extent).map(|y| f(y as f64 / extent as f64) as f32).collect();
        Tensor::from_vec(w, shape.as_slice(), b.device())?.to_dtype(b.dtype())
    };
    let a_end = a.narrow(dim, a.dim(dim)? - extent, extent)?;
    let b_start = b.narrow(dim, 0, extent)?;
    let mixed =
        (a_end.broadcast_mul(&weights(&|t| 1.0 - t)?)? + b_start.broadcast_mul(&weights(&|t| t)?)?)?;
    let len = b.dim(dim)?;
    if extent == len {
        return Ok(mixed);
    }
    Tensor::cat(&[mixed, b.narrow(dim, extent, len - extent)?], dim)
}
