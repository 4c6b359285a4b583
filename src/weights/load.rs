//! Reading a component's `config.json` and safetensors weights, with errors that name the file.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Largest JSON or text file a checkpoint may hand us (configs are kilobytes, a tokenizer.json a few
/// megabytes): reading is refused beyond this rather than allocating whatever a file claims.
pub const MAX_TEXT_FILE: u64 = 256 << 20;

/// Reads a checkpoint's text file: missing → `Error::NotFound`, larger than [`MAX_TEXT_FILE`] or not
/// UTF-8 → `Error::InvalidModel`, each naming the file.
///
/// A directory, FIFO or device in its place is `Error::InvalidModel` saying what is there (checked
/// before opening: a FIFO would block the open, a device would be read to the size limit). A `.json`
/// file that starts with a UTF-8 byte-order mark is refused as diffusers refuses it: it reads with
/// `open(..., encoding="utf-8")` and `json.loads`, which raises "Unexpected UTF-8 BOM".
pub fn read_text_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let not_found = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!("{} not found", path.display()))
        } else {
            Error::io(path, e)
        }
    };
    let meta = std::fs::metadata(path).map_err(not_found)?;
    if !meta.is_file() {
        return Err(not_a_regular_file(path, &meta));
    }
    let file = std::fs::File::open(path).map_err(not_found)?;
    let mut bytes = Vec::new();
    file.take(MAX_TEXT_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_TEXT_FILE {
        return Err(Error::InvalidModel(format!(
            "{} is larger than {} MiB, too large for a config or tokenizer file",
            path.display(),
            MAX_TEXT_FILE >> 20
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::InvalidModel(format!("{} is not UTF-8 text: {e}", path.display())))?;
    if text.starts_with('\u{feff}') && path.extension().is_some_and(|e| e == "json") {
        return Err(Error::InvalidModel(format!(
            "{} starts with a UTF-8 byte-order mark, which diffusers' JSON reader refuses; save it as \
             UTF-8 without a BOM",
            path.display()
        )));
    }
    Ok(text)
}

/// The error for an entry at `path` that should be a regular file but is something else, saying what.
pub fn not_a_regular_file(path: &Path, meta: &std::fs::Metadata) -> Error {
    let t = meta.file_type();
    #[cfg(unix)]
    let (fifo, device, socket) = {
        use std::os::unix::fs::FileTypeExt;
        (
            t.is_fifo(),
            t.is_char_device() || t.is_block_device(),
            t.is_socket(),
        )
    };
    #[cfg(not(unix))]
    let (fifo, device, socket) = (false, false, false);
    let what = if t.is_dir() {
        "is a directory"
    } else if fifo {
        "is not a regular file (it is a FIFO)"
    } else if device {
        "is not a regular file (it is a device)"
    } else if socket {
        "is not a regular file (it is a socket)"
    } else {
        "is not a regular file"
    };
    Error::InvalidModel(format!(
        "{} {what}; the checkpoint needs a file there",
        path.display()
    ))
}

/// Parses a JSON config file into `T`, naming the file and the bad key on failure.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text_file(path).map_err(|e| match e {
        Error::NotFound(_) => Error::NotFound(format!(
            "{} not found: the checkpoint is missing this component's config",
            path.display()
        )),
        other => other,
    })?;
    parse_config(&text, &path.display().to_string())
}

/// Parses a config's JSON text into `T`; `origin` names the file in errors, which also name the key
/// being read when the error is inside one (serde's messages give only a line and column).
pub fn parse_config<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    // serde would also fill a struct from a JSON array, field by field: a config is an object.
    if !text.trim_start().starts_with('{') {
        return Err(Error::InvalidModel(format!(
            "{origin} is not a valid config: expected a JSON object"
        )));
    }
    serde_json::from_str(text).map_err(|e| {
        // serde names a missing field itself; for other errors, name the key being read.
        let located = e.is_data() && !e.to_string().starts_with("missing field");
        let key = match key_before(text, e.line(), e.column()).filter(|_| located) {
            Some(key) => format!("key \"{key}\": "),
            None => String::new(),
        };
        Error::InvalidModel(format!("{origin} is not a valid config: {key}{e}"))
    })
}

/// The innermost `"key":` before line `line`, column `column` (1-based, serde_json's error position).
fn key_before(text: &str, line: usize, column: usize) -> Option<String> {
    if line == 0 {
        return None;
    }
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            offset += column.min(l.len());
            break;
        }
        offset += l.len();
    }
    let before = text.get(..offset)?;
    // A missing field is reported at the end of its object, where no key precedes it usefully.
    let colon = before.rfind("\":")?;
    let start = before[..colon].rfind('"')?;
    let key = &before[start + 1..colon];
    (!key.is_empty() && key.len() <= 200).then(|| key.to_string())
}

/// Largest safetensors header we read (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// Validates a safetensors file's header (size, JSON, offsets within the file) without reading tensors.
pub fn check_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidModel(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let len = meta.len();
    let what = path.display().to_string();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| bad_safetensors(&what, "shorter than its 8-byte header length"))?;
    let header_len = header_len(n, len, &what)?;
    let mut header = vec![0u8; header_len];
    f.read_exact(&mut header)
        .map_err(|_| bad_safetensors(&what, "truncated header"))?;
    check_header(&header, len - 8 - header_len as u64, &what)
}

/// [`check_safetensors`] on a whole file's bytes; `what` names it in errors. (The fuzz target's
/// entry point: the same checks without the file system.)
pub fn check_safetensors_bytes(bytes: &[u8], what: &str) -> Result<()> {
    let Some((n, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(bad_safetensors(what, "shorter than its 8-byte header length"));
    };
    let header_len = header_len(*n, bytes.len() as u64, what)?;
    let (header, data) = rest.split_at(header_len);
    check_header(header, data.len() as u64, what)
}

fn bad_safetensors(what: &str, why: &str) -> Error {
    Error::InvalidModel(format!("{what} is not a valid safetensors file: {why}"))
}

/// The header length the first 8 bytes give, checked against the file length and [`MAX_HEADER`].
fn header_len(n: [u8; 8], file_len: u64, what: &str) -> Result<usize> {
    let header_len = u64::from_le_bytes(n);
    if header_len > file_len.saturating_sub(8) || header_len > MAX_HEADER {
        return Err(bad_safetensors(what, "header length exceeds the file size"));
    }
    Ok(header_len as usize)
}

/// The header must be a JSON object of `name → {dtype, shape, data_offsets}` whose byte ranges match
/// each tensor's shape and dtype and tile the `data_len` bytes after it exactly, as the safetensors
/// format requires (and its readers, diffusers' included, check): no gaps, overlaps or trailing bytes.
fn check_header(header: &[u8], data_len: u64, what: &str) -> Result<()> {
    let bad = |why: &str| bad_safetensors(what, why);
    let json: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bad(&format!("header is not JSON ({e})")))?;
    let Some(map) = json.as_object() else {
        return Err(bad("header is not a JSON object"));
    };
    let mut ranges = Vec::with_capacity(map.len());
    for (name, info) in map {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| match o.as_slice() {
                [a, b] => Some((a.as_u64()?, b.as_u64()?)),
                _ => None,
            });
        let Some((begin, end)) = offsets else {
            return Err(bad(&format!("tensor {name} has no valid data_offsets")));
        };
        if begin > end {
            return Err(bad(&format!(
                "tensor {name} has data_offsets that end before they begin"
            )));
        }
        if end > data_len {
            return Err(bad(&format!(
                "tensor {name} lies beyond the end of the file (truncated download?)"
            )));
        }
        // Bits per element of every dtype the safetensors format defines.
        let elem_bits: u64 = match info.get("dtype").and_then(|d| d.as_str()) {
            Some("F4") => 4,
            Some("F6_E2M3" | "F6_E3M2") => 6,
            Some(
                "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ" | "F8_E5M2FNUZ",
            ) => 8,
            Some("I16" | "U16" | "F16" | "BF16") => 16,
            Some("I32" | "U32" | "F32") => 32,
            Some("I64" | "U64" | "F64") => 64,
            _ => return Err(bad(&format!("tensor {name} has no known dtype"))),
        };
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad(&format!("tensor {name} has no shape")))?;
        let mut elems: u64 = 1;
        for d in shape {
            let d = d
                .as_u64()
                .ok_or_else(|| bad(&format!("tensor {name} has a shape that is not a list of sizes")))?;
            elems = elems
                .checked_mul(d)
                .ok_or_else(|| bad(&format!("tensor {name} has an impossibly large shape")))?;
        }
        let bytes = elems
            .checked_mul(elem_bits)
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8);
        if bytes != Some(end - begin) {
            return Err(bad(&format!(
                "tensor {name} holds {} bytes, but its shape and dtype need {}",
                end - begin,
                bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string())
            )));
        }
        ranges.push((begin, end, name));
    }
    ranges.sort();
    let mut covered = 0;
    for (begin, end, name) in ranges {
        if begin != covered {
            return Err(bad(&format!(
                "tensor {name} starts at data byte {begin}, not where the tensor before it ends ({covered}): \
                 its data_offsets leave a gap or overlap another tensor"
            )));
        }
        covered = end;
    }
    if covered != data_len {
        return Err(bad(&format!(
            "its tensors cover {covered} of the {data_len} data bytes after the header (extra bytes at the end)"
        )));
    }
    Ok(())
}

/// Maps a candle error raised while building a model to a message naming the component folder.
pub fn model_error(component: &str, dir: &Path, e: candle_core::Error) -> Error {
    Error::InvalidModel(format!(
        "{component} in {} does not match its config.json: {}",
        dir.display(),
        crate::error::candle_message(&e)
    ))
}
