//! Reading a component's `config.json` and safetensors weights, with errors that name the file.

use crate::error::{Error, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Parses a JSON config file into `T`, naming the file and the bad key on failure.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!(
                "{} not found: the checkpoint is missing this component's config",
                path.display()
            ))
        } else {
            Error::io(path, e)
        }
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::InvalidModel(format!("{} is not a valid config: {e}", path.display())))
}

/// A weight reader over memory-mapped safetensors files (one, or the shards of a sharded checkpoint).
///
/// Tensors are converted to `dtype` on load. The files must not be modified while the model is alive:
/// they are mapped, not copied, so that loading costs no extra memory.
pub fn var_builder(weights: &[PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    for w in weights {
        // Check the header up front so a truncated or foreign file gets a message naming it.
        check_safetensors(w)?;
    }
    // SAFETY: the mapped files are only read; the caller is told (above) not to modify them while in use.
    unsafe { VarBuilder::from_mmaped_safetensors(weights, dtype, device) }.map_err(|e| {
        let names: Vec<String> = weights.iter().map(|p| p.display().to_string()).collect();
        Error::InvalidModel(format!(
            "cannot read safetensors weights {}: {e}",
            names.join(", ")
        ))
    })
}

/// Validates a safetensors file's header (size, JSON, offsets within the file) without reading tensors.
pub fn check_safetensors(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    let bad = |why: &str| {
        Error::InvalidModel(format!(
            "{} is not a valid safetensors file: {why}",
            path.display()
        ))
    };
    f.read_exact(&mut n)
        .map_err(|_| bad("shorter than its 8-byte header length"))?;
    let header_len = u64::from_le_bytes(n);
    if header_len > len.saturating_sub(8) || header_len > 100 << 20 {
        return Err(bad("header length exceeds the file size"));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|_| bad("truncated header"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(&format!("header is not JSON ({e})")))?;
    let data_len = len - 8 - header_len;
    if let Some(map) = json.as_object() {
        for (name, info) in map {
            if name == "__metadata__" {
                continue;
            }
            let end = info
                .get("data_offsets")
                .and_then(|o| o.get(1))
                .and_then(|v| v.as_u64());
            match end {
                Some(end) if end <= data_len => {}
                _ => {
                    return Err(bad(&format!(
                        "tensor {name} lies beyond the end of the file (truncated download?)"
                    )))
                }
            }
        }
    } else {
        return Err(bad("header is not a JSON object"));
    }
    Ok(())
}

/// Maps a candle error raised while building a model to a message naming the component folder.
pub fn model_error(component: &str, dir: &Path, e: candle_core::Error) -> Error {
    Error::InvalidModel(format!(
        "{component} in {} does not match its config.json: {e}",
        dir.display()
    ))
}
