//! Reading tensors out of a safetensors file into memory the model owns, without mapping the file.
//!
//! candle's CPU tensors own their storage, so a mapped file is copied either way; reading with
//! `pread` instead of through the mapping keeps the file's pages out of this process's resident set
//! (while loading, RSS holds the model once instead of model + mapped file) and skips a page fault per
//! 4 KiB of file. Float32 data goes straight from the page cache into the tensor's buffer (advised as
//! transparent huge pages on Linux, which cuts the fault cost of filling it); other dtypes are read
//! into a byte buffer and converted as candle converts them.

use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// One safetensors file open for reading: where each tensor's bytes are.
#[derive(Debug)]
pub(crate) struct TensorFile {
    file: File,
    /// Tensor name → absolute byte range in the file.
    ranges: HashMap<String, (u64, u64)>,
}

impl TensorFile {
    /// Opens `path` and reads its header. The header must already have passed
    /// [`super::load::check_safetensors`]; only what reading needs is taken from it here.
    pub fn open(path: &Path) -> Result<Self> {
        use std::io::Read;
        let mut file = File::open(path)?;
        let mut n = [0u8; 8];
        file.read_exact(&mut n)?;
        let len = u64::from_le_bytes(n);
        let mut header = vec![0u8; usize::try_from(len).map_err(candle_core::Error::wrap)?];
        file.read_exact(&mut header)?;
        let json: serde_json::Value = serde_json::from_slice(&header).map_err(candle_core::Error::wrap)?;
        let start = 8 + len;
        let mut ranges = HashMap::new();
        for (name, info) in json.as_object().into_iter().flatten() {
            let offsets = info.get("data_offsets").and_then(|o| o.as_array());
            if let Some([a, b]) = offsets.map(Vec::as_slice) {
                if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
                    ranges.insert(name.clone(), (start + a, start + b));
                }
            }
        }
        Ok(Self { file, ranges })
    }

    /// Reads tensor `name`, stored as `dtype` with `shape`, onto `device`.
    pub fn read(&self, name: &str, dtype: DType, shape: &[usize], device: &Device) -> Result<Tensor> {
        let Some(&(begin, end)) = self.ranges.get(name) else {
            candle_core::bail!("tensor {name} has no data offsets");
        };
        let bytes = (end - begin) as usize;
        let elems: usize = shape.iter().product();
        if bytes != elems * dtype.size_in_bytes() {
            candle_core::bail!("tensor {name} holds {bytes} bytes, not {elems} × {dtype:?}");
        }
        if dtype == DType::F32 && cfg!(target_endian = "little") {
            let data = read_f32(&self.file, begin, elems)?;
            return Tensor::from_vec(data, shape, &Device::Cpu)?.to_device(device);
        }
        let mut buf = vec![0u8; bytes];
        read_at(&self.file, &mut buf, begin)?;
        Tensor::from_raw_buffer(&buf, dtype, shape, device)
    }
}

/// `n` little-endian f32 values from `offset` of `file`. Large tensors are read in parallel chunks:
/// filling fresh pages (the kernel zeroes each before the copy) costs more than the copy itself.
#[cfg(unix)]
fn read_f32(file: &File, offset: u64, n: usize) -> Result<Vec<f32>> {
    use rayon::prelude::*;
    use std::os::unix::io::AsRawFd;
    const CHUNK: usize = 4 << 20;
    let mut v: Vec<f32> = Vec::with_capacity(n);
    let len = n * 4;
    advise_huge_pages(v.as_mut_ptr().cast(), len);
    let dst = super::cpu::SendPtr(v.as_mut_ptr());
    let fd = file.as_raw_fd();
    (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .try_for_each(|i| -> std::io::Result<()> {
            let (start, end) = (i * CHUNK, ((i + 1) * CHUNK).min(len));
            let mut done = start;
            while done < end {
                // SAFETY: writes at most `end - done` bytes into this chunk of the reserved capacity.
                let r = unsafe {
                    libc::pread(
                        fd,
                        dst.get().cast::<u8>().add(done).cast(),
                        end - done,
                        (offset + done as u64) as libc::off_t,
                    )
                };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if r == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                done += r as usize;
            }
            Ok(())
        })?;
    // SAFETY: every chunk of all `n` values was written above (any bit pattern is a valid f32).
    unsafe { v.set_len(n) };
    Ok(v)
}

#[cfg(not(unix))]
fn read_f32(file: &File, offset: u64, n: usize) -> Result<Vec<f32>> {
    let mut buf = vec![0u8; n * 4];
    read_at(file, &mut buf, offset)?;
    Ok(buf
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Fills `buf` from `offset` of `file`.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)?;
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match file.seek_read(&mut buf[done..], offset + done as u64)? {
                0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                n => done += n,
            }
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = file.try_clone()?;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)?;
    }
    Ok(())
}

/// Asks Linux to back `len` bytes at `ptr` with transparent huge pages where it can (a hint; the
/// kernel's `madvise` mode of THP honours it, `never` ignores it).
pub(crate) fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside the caller's allocation; MADV_HUGEPAGE changes no contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}
