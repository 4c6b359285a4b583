//! 8-bit images as engines upload them (RGBA8 or RGB8, row-major, top row first) and their conversion
//! to and from the `[-1, 1]` / `[0, 1]` float tensors the models use.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// Largest width or height [`Image::load`] decodes (what the C ABI accepts for input images too).
pub const MAX_DECODE_SIDE: u32 = 16384;
/// Most memory the image decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

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
        Self::check_layout(width, height, channels, data.len())?;
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }

    /// Decodes a PNG or JPEG file to RGB8 (the format is read from the content, not the name).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("image {} not found", path.display())),
            _ => Error::io(path, e),
        })?;
        Self::decode_from(std::io::BufReader::new(file), &path.display().to_string())
    }

    /// Decodes PNG or JPEG bytes to RGB8; `what` names the source in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        Self::decode_from(std::io::Cursor::new(bytes), what)
    }

    /// Images come from users and the network: sides beyond [`MAX_DECODE_SIDE`] and decoder
    /// allocations beyond [`MAX_DECODE_BYTES`] are refused before anything that large is allocated.
    fn decode_from<R: std::io::BufRead + std::io::Seek>(reader: R, what: &str) -> Result<Self> {
        let bad =
            |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("cannot read image {what}: {e}"));
        let mut reader = image::ImageReader::new(reader)
            .with_guessed_format()
            .map_err(|e| bad(&e))?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_DECODE_SIDE);
        limits.max_image_height = Some(MAX_DECODE_SIDE);
        limits.max_alloc = Some(MAX_DECODE_BYTES);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| bad(&e))?.to_rgb8();
        let (w, h) = img.dimensions();
        Self::new(w, h, 3, img.into_raw())
    }

    /// Checks the invariants [`Image::new`] establishes (the fields are public, so a value built by
    /// hand may break them; the encoders and tensor conversion index by them).
    pub fn validate(&self) -> Result<()> {
        Self::check_layout(self.width, self.height, self.channels, self.data.len())
    }

    fn check_layout(width: u32, height: u32, channels: u32, len: usize) -> Result<()> {
        if !matches!(channels, 1 | 3 | 4) {
            return Err(Error::InvalidArgument(format!(
                "image channels must be 1, 3 or 4, not {channels}"
            )));
        }
        let want = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(channels as usize));
        if width == 0 || height == 0 || Some(len) != want {
            let want = want.map_or_else(|| "more than the address space".into(), |n| n.to_string());
            return Err(Error::InvalidArgument(format!(
                "image buffer holds {len} bytes but {width}x{height}x{channels} needs {want}"
            )));
        }
        Ok(())
    }

    /// Writes a PNG (RGB or RGBA as stored). Any write error is an [`Error::Io`] naming the path.
    ///
    /// A regular file (or a new name) is written through a temporary file in the same folder that is
    /// then renamed over it, so a failed save leaves an existing file as it was. A target that exists
    /// but is not a regular file (a device such as `/dev/full`, a FIFO) has no content to keep and
    /// no folder to put a sibling in, so it is written in place; its errors are reported the same.
    pub fn save_png(&self, path: &std::path::Path) -> Result<()> {
        use image::ImageEncoder;
        self.validate()?;
        let color = match self.channels {
            1 => image::ExtendedColorType::L8,
            3 => image::ExtendedColorType::Rgb8,
            _ => image::ExtendedColorType::Rgba8,
        };
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&self.data, self.width, self.height, color)
            .map_err(|e| Error::Internal(format!("cannot encode a PNG for {}: {e}", path.display())))?;
        write_replacing(path, &png)
    }

    /// The image as float RGB `(1, 3, h, w)` in `[0, 1]` (alpha dropped, grey replicated).
    pub fn to_rgb_tensor01(&self, device: &Device) -> Result<Tensor> {
        self.validate()?;
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

/// Writes `bytes` to `path` without ever leaving a half-written regular file behind (see
/// [`Image::save_png`]). Every failure is an [`Error::Io`] naming `path`.
fn write_replacing(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let fail =
        |what: &str, e: std::io::Error| Error::Io(format!("cannot write {}: {what}{e}", path.display()));
    let existing = match std::fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail("", e)),
    };
    if let Some(m) = &existing {
        if m.is_dir() {
            return Err(Error::Io(format!(
                "cannot write {}: it is a directory; pass a file name",
                path.display()
            )));
        }
        if !m.is_file() {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(|e| fail("", e))?;
            f.write_all(bytes).map_err(|e| fail("", e))?;
            return f.flush().map_err(|e| fail("", e));
        }
    }
    // A link to a regular file: replace the file it points to, not the link.
    let target = match &existing {
        Some(_) => std::fs::canonicalize(path).map_err(|e| fail("", e))?,
        None => path.to_path_buf(),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| fail("cannot create a temporary file in its folder: ", e))?;
    let written = (|| {
        f.write_all(bytes)?;
        if let Some(m) = &existing {
            f.set_permissions(m.permissions())?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &target)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail("", e)
    })
}
