//! Reading tensors out of a safetensors file into memory the model owns.
//!
//! candle's CPU tensors own their storage, so a file's data is copied either way; the question is only
//! how it is read. Weights read during the load ([`TensorFile::read`]) use `pread`: float32 data goes
//! straight from the page cache into the tensor's buffer (advised as transparent huge pages on Linux,
//! which cuts the fault cost of filling it), other dtypes into a byte buffer converted as candle
//! converts them. Weights packed on first use ([`TensorFile::with_mapped_f32`]) are read through a
//! short-lived mapping of just their bytes, so packing is the only pass over them; unmapping afterwards
//! keeps the file's pages out of this process's resident set (RSS holds the model once, not model +
//! mapped file).

use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// What a safetensors header says about one tensor.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The header's dtype string (`"F32"`, `"I64"`, …).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    begin: u64,
    end: u64,
}

impl Entry {
    /// The dtype as a float type a model can hold, or `None` (integers, bools, 8-bit floats).
    pub fn float_dtype(&self) -> Option<DType> {
        match self.dtype.as_str() {
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            "F32" => Some(DType::F32),
            "F64" => Some(DType::F64),
            _ => None,
        }
    }
}

/// One safetensors file open for reading: its path and what its header says each tensor is.
#[derive(Debug)]
pub(crate) struct TensorFile {
    file: File,
    path: PathBuf,
    entries: HashMap<String, Entry>,
}

impl TensorFile {
    /// Opens `path` and reads its header. The header must already have passed
    /// [`crate::weights::load::check_safetensors`] (offsets inside the file, sizes matching shapes); only what
    /// reading needs is taken from it here.
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
        let mut entries = HashMap::new();
        for (name, info) in json.as_object().into_iter().flatten() {
            let offsets = info.get("data_offsets").and_then(|o| o.as_array());
            let Some([a, b]) = offsets.map(Vec::as_slice) else {
                continue; // `__metadata__`
            };
            let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) else {
                continue;
            };
            let dtype = info
                .get("dtype")
                .and_then(|d| d.as_str())
                .unwrap_or("")
                .to_string();
            let shape = info
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|s| s.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect())
                .unwrap_or_default();
            let entry = Entry {
                dtype,
                shape,
                begin: start + a,
                end: start + b,
            };
            entries.insert(name.clone(), entry);
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the tensors in this file.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Runs `f` on tensor `name`'s float32 values read through a mapping of just its bytes (the page
    /// cache's own pages: no copy, and read ahead from disk as one range), then unmaps them, so they do
    /// not stay in this process's resident set. `Ok(None)` when the tensor is not stored as
    /// little-endian float32 at an aligned offset, or the file cannot be mapped (some network and FUSE
    /// file systems): the caller then reads it with [`TensorFile::read`] instead.
    pub fn with_mapped_f32<R>(&self, name: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<Option<R>> {
        let Some(entry) = self.entries.get(name) else {
            candle_core::bail!("tensor {name} is not in {}", self.path.display());
        };
        if entry.dtype != "F32" || !cfg!(target_endian = "little") {
            return Ok(None);
        }
        let n = ((entry.end - entry.begin) / 4) as usize;
        if n == 0 {
            return f(&[]).map(Some);
        }
        // A file cut short since it was loaded would make reading the mapping fault (SIGBUS) instead of
        // failing: check its length first. Truncating it *while* it is read is still not survivable,
        // which is why the files must stay unchanged while a pipeline uses them (as diffusers' mapped
        // weights must).
        let len = self.file.metadata()?.len();
        if len < entry.end {
            candle_core::bail!(
                "{} is {len} bytes, too short to hold tensor {name} (bytes {}..{}): the file changed since it \
                 was loaded",
                self.path.display(),
                entry.begin,
                entry.end
            );
        }
        // SAFETY: a read-only mapping of a range checked to lie inside the file; see above for files
        // changed by others meanwhile.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(entry.begin)
                .len(n * 4)
                .map(&self.file)
        };
        let Ok(map) = map else {
            return Ok(None);
        };
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::WillNeed);
        if !(map.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>()) {
            return Ok(None);
        }
        // SAFETY: n·4 mapped bytes at an f32-aligned address; any bit pattern is a valid f32.
        let values = unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<f32>(), n) };
        f(values).map(Some)
    }

    /// Reads tensor `name`, stored as `dtype` with `shape`, onto `device`.
    pub fn read(&self, name: &str, dtype: DType, shape: &[usize], device: &Device) -> Result<Tensor> {
        let Some(entry) = self.entries.get(name) else {
            candle_core::bail!("tensor {name} is not in {}", self.path.display());
        };
        let (begin, end) = (entry.begin, entry.end);
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
    crate::kernels::cpu::advise_huge_pages(v.as_mut_ptr().cast(), len);
    let dst = crate::kernels::cpu::SendPtr(v.as_mut_ptr());
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
