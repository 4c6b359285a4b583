//! 8-bit images as engines upload them (RGBA8 or RGB8, row-major, top row first) and their conversion
//! to and from the `[-1, 1]` / `[0, 1]` float tensors the models use.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// An 8-bit image: `channels` is 1 (mask), 3 (RGB) or 4 (RGBA); rows are tightly packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub data: Vec<u8>,
}

impl Image {
    /// Wraps `data`, checking that its length is `width · height · channels`.
    pub fn new(width: u32, height: u32, channels: u32, data: Vec<u8>) -> Result<Self> {
        if !matches!(channels, 1 | 3 | 4) {
            return Err(Error::InvalidArgument(format!(
                "image channels must be 1, 3 or 4, not {channels}"
            )));
        }
        let want = width as usize * height as usize * channels as usize;
        if width == 0 || height == 0 || data.len() != want {
            return Err(Error::InvalidArgument(format!(
                "image buffer holds {} bytes but {width}x{height}x{channels} needs {want}",
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }

    /// Decodes a PNG or JPEG file to RGB8.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let img = image::open(path)
            .map_err(|e| Error::InvalidArgument(format!("cannot read image {}: {e}", path.display())))?
            .to_rgb8();
        let (w, h) = img.dimensions();
        Self::new(w, h, 3, img.into_raw())
    }

    /// Writes a PNG (RGB or RGBA as stored).
    pub fn save_png(&self, path: &std::path::Path) -> Result<()> {
        let color = match self.channels {
            1 => image::ExtendedColorType::L8,
            3 => image::ExtendedColorType::Rgb8,
            _ => image::ExtendedColorType::Rgba8,
        };
        image::save_buffer_with_format(
            path,
            &self.data,
            self.width,
            self.height,
            color,
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
    }

    /// The image as float RGB `(1, 3, h, w)` in `[0, 1]` (alpha dropped, grey replicated).
    pub fn to_rgb_tensor01(&self, device: &Device) -> Result<Tensor> {
        let (w, h, c) = (self.width as usize, self.height as usize, self.channels as usize);
        let mut planes = vec![0f32; 3 * w * h];
        for i in 0..w * h {
            for ch in 0..3 {
                let src = if c == 1 { 0 } else { ch };
                planes[ch * w * h + i] = self.data[i * c + src] as f32 / 255.0;
            }
        }
        Ok(Tensor::from_vec(planes, (1, 3, h, w), device)?)
    }

    /// Converts `(b, 3, h, w)` floats in `[0, 1]` to images: `round(x · 255)` with ties to even, exactly
    /// what diffusers' `numpy_to_pil` does; `channels` 4 adds an opaque alpha.
    pub fn from_tensor01(t: &Tensor, channels: u32) -> Result<Vec<Self>> {
        let (b, c, h, w) = t.dims4()?;
        if c != 3 {
            return Err(Error::Internal(format!("expected 3 image channels, got {c}")));
        }
        let data = t
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let oc = channels as usize;
        let mut out = Vec::with_capacity(b);
        for n in 0..b {
            let mut px = vec![255u8; w * h * oc];
            for i in 0..w * h {
                for ch in 0..3 {
                    let v = data[((n * 3 + ch) * h * w) + i];
                    px[i * oc + ch] = (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8;
                }
            }
            out.push(Self::new(w as u32, h as u32, channels, px)?);
        }
        Ok(out)
    }
}
