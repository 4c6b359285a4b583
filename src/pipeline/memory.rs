//! A memory sanity check before a run: Rust aborts the whole process when an allocation fails, and
//! the library lives inside a game engine, so a run whose activations cannot possibly fit is refused
//! up front with a message instead.
//!
//! The estimate is a *lower bound*: the largest activation tensor the run must hold (VAE decoder
//! output at full resolution, UNet feature maps and GEGLU projections, one attention chunk), times
//! two for a layer's input and output living together. Real peaks are higher, so this never refuses
//! a run that could have fit; it catches requests that are off by orders of magnitude (an 8192² batch
//! of 64 on a laptop). Weights still to be read on first use ([`crate::weights`]) are
//! added: a lazily loaded model too large for the machine is refused here, at its first run, rather
//! than aborting the process halfway through reading it. That sum is every unread weight, including
//! ones this task never reads (text2img leaves the VAE encoder unread, about 3 % of SD 1.5), so the
//! bound can overshoot by that much on a first run. Memory available comes from `/proc/meminfo` (`MemAvailable + SwapFree`), a
//! cgroup v2 limit when there is one, and the process's address-space limit (`RLIMIT_AS`, e.g.
//! `ulimit -v`, less what is already mapped); elsewhere (other systems, CUDA devices) only the
//! address-space bound applies.

use crate::error::{Error, Result};
use crate::models::vae::AutoencoderKL;
use candle_core::DType;

/// What one run asks for, after the pipeline's defaults are applied.
#[derive(Debug, Clone, Copy)]
pub struct RunShape {
    pub width: usize,
    pub height: usize,
    /// Images generated (`num_images_per_prompt`).
    pub batch: usize,
    /// Classifier-free guidance doubles the UNet batch.
    pub cfg: bool,
    /// VAE tiling bounds the decode to one tile, slicing to one image.
    pub vae: crate::models::vae::DecodeOptions,
}

/// Refuses a run whose activations (`activations`, a lower bound from the family's estimate) plus the
/// `pending_weights` it reads first cannot fit in the memory this process can get (`on_cpu`: the system
/// says how much; elsewhere only the address space bounds it).
pub fn check_run(run: RunShape, activations: u128, pending_weights: u128, on_cpu: bool) -> Result<()> {
    let weights = pending_weights;
    let need = activations + weights;
    let available = if on_cpu { available_bytes() } else { None };
    let limit = available.unwrap_or(isize::MAX as u128);
    if need > limit {
        let whence = match available {
            Some(_) => {
                "memory available to this process (MemAvailable + SwapFree, the cgroup limit, or what \
                        RLIMIT_AS leaves)"
            }
            None => "the address space",
        };
        let unread = if weights > 0 {
            format!(" and the {} of weights it reads first", human(weights))
        } else {
            String::new()
        };
        return Err(Error::InvalidArgument(format!(
            "a {}x{} run of {} image(s) needs at least {} for its activations{unread}, more than the {} of \
             {whence}: lower width/height or num_images_per_prompt",
            run.width,
            run.height,
            run.batch,
            human(activations),
            human(limit)
        )));
    }
    Ok(())
}

/// The VAE decoder's largest activation: its last up block runs at full resolution with
/// `block_out_channels[0]` channels (one tile under tiling, one image under slicing).
pub fn vae_decode_bytes(vae: &AutoencoderKL, run: RunShape) -> u128 {
    let (w, h) = (run.width as u128, run.height as u128);
    let cfg = vae.config();
    let ch = cfg.block_out_channels.first().copied().unwrap_or(1) as u128;
    let tile = cfg.sample_size.max(1) as u128;
    let (dw, dh) = if run.vae.tiling {
        (w.min(tile), h.min(tile))
    } else {
        (w, h)
    };
    let batch = if run.vae.slicing { 1 } else { run.batch as u128 };
    batch * ch * dw * dh * bytes_of(vae.dtype())
}

fn bytes_of(dtype: DType) -> u128 {
    dtype.size_in_bytes() as u128
}

/// Memory this process could still get, when the system says.
fn available_bytes() -> Option<u128> {
    match (system_available(), address_space_room()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What `RLIMIT_AS` leaves: the soft limit less the process's mapped size (`VmSize`), when limited.
/// An allocation past it fails (and Rust aborts), however much memory the machine has free.
fn address_space_room() -> Option<u128> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb: u128 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some((lim.rlim_cur as u128).saturating_sub(kb * 1024))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `MemAvailable + SwapFree`, bounded by the cgroup's room.
fn system_available() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u128> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kb: u128 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    let mut available = field("MemAvailable:")? + field("SwapFree:").unwrap_or(0);
    if let Some(room) = cgroup_room() {
        available = available.min(room);
    }
    Some(available)
}

/// `memory.max - memory.current` of this process's cgroup (v2), when limited.
fn cgroup_room() -> Option<u128> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let dir = std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let max: u128 = read("memory.max")?.trim().parse().ok()?; // "max" (unlimited) does not parse
    let current: u128 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

fn human(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(512), "512.0 B");
        assert_eq!(super::human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn meminfo_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(super::available_bytes().is_some_and(|b| b > 0));
        }
    }
}
