//! `ap_randn`: torch-compatible noise for callers who prepare latents themselves or check a seed.

use super::convert::{null, opt_str};
use super::{ap_status, guard};
use crate::error::Error;
use crate::rng::{Generator, RngKind};
use std::ffi::c_char;

/// Draws `count` tensors in a row from one generator seeded with `seed`, as
/// `g = torch.Generator(rng).manual_seed(seed); [torch.randn(n, generator=g) for n in sizes]` (float32)
/// does, writing them one after another into `out`, which must hold `sizes[0] + … + sizes[count - 1]`
/// floats. `rng`: NULL or "cpu", "cuda", `"cuda:SMS[:THREADS_PER_SM]"` (see `ap_run_params.rng`).
/// `device`: NULL or "cpu" computes on the host; "cuda" / "cuda:N" draws on that GPU (bit-exact for the
/// "cuda" generator; needs a CUDA build). Every draw matches torch's for the same shape with that many
/// elements: the shape itself does not matter.
///
/// Returns `AP_OK`, or `AP_ERR_INVALID_ARGUMENT` (NULL `sizes`/`out` with `count` > 0, unknown `rng`,
/// sizes overflowing), `AP_ERR_UNSUPPORTED` (no such device). Thread-safe; `out` is written only on
/// success.
///
/// # Safety
/// `rng` and `device` are NULL or NUL-terminated strings; `sizes` points to `count` values and `out` to
/// room for their sum.
#[no_mangle]
pub unsafe extern "C" fn ap_randn(
    rng: *const c_char,
    device: *const c_char,
    seed: u64,
    sizes: *const usize,
    count: usize,
    out: *mut f32,
) -> ap_status {
    guard(|| {
        let kind = RngKind::parse(opt_str(rng, "rng")?.as_deref())?;
        let device = crate::device::parse_device(opt_str(device, "device")?.as_deref())?;
        if count == 0 {
            return Ok(());
        }
        if sizes.is_null() {
            return Err(null("sizes"));
        }
        if out.is_null() {
            return Err(null("out"));
        }
        let sizes = std::slice::from_raw_parts(sizes, count);
        let total = sizes
            .iter()
            .try_fold(0usize, |a, &n| a.checked_add(n))
            .ok_or_else(|| Error::InvalidArgument("the sizes add up to more than a size_t holds".into()))?;
        let mut generator = Generator::new(kind, seed, &device, candle_core::DType::F32);
        let mut all = Vec::new();
        all.try_reserve_exact(total)
            .map_err(|_| Error::InvalidArgument(format!("cannot allocate {total} floats")))?;
        for &n in sizes {
            all.extend(generator.randn(n)?);
        }
        std::ptr::copy_nonoverlapping(all.as_ptr(), out, total);
        Ok(())
    })
}
