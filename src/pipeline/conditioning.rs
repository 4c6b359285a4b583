//! Image inputs of img2img and inpainting, prepared as diffusers' `VaeImageProcessor` does: resize to a
//! multiple of the VAE scale factor, normalise to `[-1, 1]`, binarise masks at 0.5, and the
//! `padding_mask_crop` crop region and paste-back overlay.

use crate::error::{Error, Result};
use crate::image::Image;
use candle_core::{Device, Tensor};

/// A crop rectangle `(x1, y1, x2, y2)` in pixels of the original image.
pub type CropBox = (u32, u32, u32, u32);

/// Rounds a side down to a multiple of the VAE scale factor (`get_default_height_width`).
pub fn round_down(v: usize, factor: usize) -> usize {
    v - v % factor
}

/// PIL's `convert("L")` luma: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// The image as 8-bit grey (masks).
fn to_grey(img: &Image) -> Vec<u8> {
    let c = img.channels as usize;
    img.data
        .chunks_exact(c)
        .map(|px| if c == 1 { px[0] } else { luma(px[0], px[1], px[2]) })
        .collect()
}

/// The image as RGB8 (alpha dropped, grey replicated), like PIL's `convert("RGB")`.
fn to_rgb(img: &Image) -> Image {
    if img.channels == 3 {
        return img.clone();
    }
    let c = img.channels as usize;
    let data = img
        .data
        .chunks_exact(c)
        .flat_map(|px| if c == 1 { [px[0]; 3] } else { [px[0], px[1], px[2]] })
        .collect();
    Image {
        width: img.width,
        height: img.height,
        channels: 3,
        data,
    }
}

fn crop(img: &Image, (x1, y1, x2, y2): CropBox) -> Image {
    let c = img.channels as usize;
    let (w, h) = ((x2 - x1) as usize, (y2 - y1) as usize);
    let mut data = Vec::with_capacity(w * h * c);
    for y in y1 as usize..y2 as usize {
        let row = (y * img.width as usize + x1 as usize) * c;
        data.extend_from_slice(&img.data[row..row + w * c]);
    }
    Image {
        width: w as u32,
        height: h as u32,
        channels: img.channels,
        data,
    }
}

/// Pillow-exact Lanczos resize (diffusers' default resample); a no-op at the same size, as in PIL.
fn resize(img: &Image, w: u32, h: u32) -> Image {
    if img.width == w && img.height == h {
        return img.clone();
    }
    let data = super::resample::lanczos_resize(
        &img.data,
        img.width as usize,
        img.height as usize,
        img.channels as usize,
        w as usize,
        h as usize,
    );
    Image {
        width: w,
        height: h,
        channels: img.channels,
        data,
    }
}

/// diffusers' `_resize_and_fill` (`fill`) and `_resize_and_crop`: resize keeping the aspect ratio so the
/// image fits inside (fill) or covers (crop) `w×h`, centre it, and either stretch its edge pixels over
/// the uncovered borders (fill) or leave them black (crop).
fn resize_and_place(img: &Image, w: u32, h: u32, fill: bool) -> Image {
    let ratio = w as f64 / h as f64;
    let src_ratio = img.width as f64 / img.height as f64;
    let fit_width = if fill {
        ratio < src_ratio
    } else {
        ratio > src_ratio
    };
    let src_w = if fit_width { w } else { img.width * h / img.height };
    let src_h = if fit_width { img.height * w / img.width } else { h };
    let resized = resize(img, src_w.max(1), src_h.max(1));
    let c = img.channels as usize;
    let (ox, oy) = (
        (w / 2) as i64 - (src_w / 2) as i64,
        (h / 2) as i64 - (src_h / 2) as i64,
    );
    let (rw, rh) = (resized.width as i64, resized.height as i64);
    let mut out = vec![0u8; (w * h) as usize * c];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let (mut sx, mut sy) = (x - ox, y - oy);
            if fill {
                (sx, sy) = (sx.clamp(0, rw - 1), sy.clamp(0, rh - 1));
            } else if sx < 0 || sy < 0 || sx >= rw || sy >= rh {
                continue;
            }
            let src = (sy as usize * rw as usize + sx as usize) * c;
            let dst = (y as usize * w as usize + x as usize) * c;
            out[dst..dst + c].copy_from_slice(&resized.data[src..src + c]);
        }
    }
    Image {
        width: w,
        height: h,
        channels: img.channels,
        data: out,
    }
}

/// diffusers `get_crop_region`: the box around all non-zero mask pixels, padded by `pad`, then grown to
/// the aspect ratio of `width×height` and kept inside the image.
pub fn crop_region(mask: &Image, width: usize, height: usize, pad: u32) -> Result<CropBox> {
    let grey = to_grey(mask);
    let (w, h) = (mask.width as i64, mask.height as i64);
    let at = |x: i64, y: i64| grey[(y * w + x) as usize];
    let col_empty = |x: i64| (0..h).all(|y| at(x, y) == 0);
    let row_empty = |y: i64| (0..w).all(|x| at(x, y) == 0);
    let left = (0..w).take_while(|&x| col_empty(x)).count() as i64;
    let right = (0..w).rev().take_while(|&x| col_empty(x)).count() as i64;
    let top = (0..h).take_while(|&y| row_empty(y)).count() as i64;
    let bottom = (0..h).rev().take_while(|&y| row_empty(y)).count() as i64;
    let pad = pad as i64;
    let (mut x1, mut y1) = ((left - pad).max(0), (top - pad).max(0));
    let (mut x2, mut y2) = ((w - right + pad).min(w), (h - bottom + pad).min(h));
    if x2 <= x1 || y2 <= y1 {
        return Err(Error::InvalidArgument(
            "padding_mask_crop needs a mask with at least one white pixel".into(),
        ));
    }
    let ratio_crop = (x2 - x1) as f64 / (y2 - y1) as f64;
    let ratio = width as f64 / height as f64;
    if ratio_crop > ratio {
        let desired = (x2 - x1) as f64 / ratio;
        let diff = (desired - (y2 - y1) as f64) as i64;
        y1 -= diff.div_euclid(2);
        y2 += diff - diff.div_euclid(2);
        if y2 >= h {
            let d = y2 - h;
            y2 -= d;
            y1 -= d;
        }
        if y1 < 0 {
            y2 -= y1;
            y1 = 0;
        }
        y2 = y2.min(h);
    } else {
        let desired = (y2 - y1) as f64 * ratio;
        let diff = (desired - (x2 - x1) as f64) as i64;
        x1 -= diff.div_euclid(2);
        x2 += diff - diff.div_euclid(2);
        if x2 >= w {
            let d = x2 - w;
            x2 -= d;
            x1 -= d;
        }
        if x1 < 0 {
            x2 -= x1;
            x1 = 0;
        }
        x2 = x2.min(w);
    }
    Ok((x1 as u32, y1 as u32, x2 as u32, y2 as u32))
}

/// `VaeImageProcessor.preprocess` for the init image: optional crop, resize ("fill" when cropped),
/// RGB, `[0, 1]`, then `2x − 1`. Returns `(1, 3, h, w)`.
pub fn image_tensor(
    img: &Image,
    width: usize,
    height: usize,
    crop_box: Option<CropBox>,
    device: &Device,
) -> Result<Tensor> {
    let mut img = img.clone();
    if let Some(b) = crop_box {
        img = resize_and_place(&crop(&img, b), width as u32, height as u32, true);
    } else {
        img = resize(&img, width as u32, height as u32);
    }
    let t = to_rgb(&img).to_rgb_tensor01(device)?;
    Ok(((t * 2.0)? - 1.0)?)
}

/// The mask processor: optional crop, resize, grey, `[0, 1]`, binarised at 0.5. Returns `(1, 1, h, w)`.
pub fn mask_tensor(
    mask: &Image,
    width: usize,
    height: usize,
    crop_box: Option<CropBox>,
    device: &Device,
) -> Result<Tensor> {
    let mut m = mask.clone();
    if let Some(b) = crop_box {
        m = resize_and_place(&crop(&m, b), width as u32, height as u32, true);
    } else {
        m = resize(&m, width as u32, height as u32);
    }
    let values: Vec<f32> = to_grey(&m)
        .into_iter()
        .map(|v| if (v as f32 / 255.0) < 0.5 { 0.0 } else { 1.0 })
        .collect();
    Ok(Tensor::from_vec(values, (1, 1, height, width), device)?)
}

/// diffusers `apply_overlay`: pastes the generated crop back over the original, through the (unbinarised)
/// mask, so pixels outside the mask stay exactly the original's.
pub fn overlay(
    original: &Image,
    mask: &Image,
    generated: &Image,
    b: CropBox,
    out_channels: u32,
) -> Result<Image> {
    let (x1, y1, x2, y2) = b;
    let patch = resize_and_place(&to_rgb(generated), x2 - x1, y2 - y1, false);
    let orig = to_rgb(original);
    let grey = to_grey(&resize(mask, original.width, original.height));
    let (w, h) = (original.width as usize, original.height as usize);
    let oc = out_channels as usize;
    let mut out = vec![255u8; w * h * oc];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let inside = x >= x1 as usize && x < x2 as usize && y >= y1 as usize && y < y2 as usize;
            let m = grey[i] as u32;
            for ch in 0..3 {
                let gen = if inside {
                    patch.data[((y - y1 as usize) * patch.width as usize + (x - x1 as usize)) * 3 + ch] as u32
                } else {
                    0
                };
                let o = orig.data[i * 3 + ch] as u32;
                out[i * oc + ch] = ((o * (255 - m) + gen * m + 127) / 255) as u8;
            }
        }
    }
    Image::new(original.width, original.height, out_channels, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_region_grows_to_the_aspect_ratio() {
        // 64×64 mask with a 10×4 white block at (20, 30): square processing size → 10×10 box.
        let mut data = vec![0u8; 64 * 64];
        for y in 30..34 {
            for x in 20..30 {
                data[y * 64 + x] = 255;
            }
        }
        let mask = Image::new(64, 64, 1, data).unwrap();
        assert_eq!(crop_region(&mask, 64, 64, 0).unwrap(), (20, 27, 30, 37));
        assert_eq!(crop_region(&mask, 64, 64, 2).unwrap(), (18, 25, 32, 39));
    }

    #[test]
    fn grey_masks_keep_their_values() {
        assert_eq!(luma(200, 200, 200), 200);
        assert_eq!(luma(255, 255, 255), 255);
    }
}
