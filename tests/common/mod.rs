//! Helpers shared by the integration tests: the vendored fixture folder and a minimal `.npy` reader.
#![allow(dead_code)]

pub mod cases;
pub mod recorded;

use std::path::{Path, PathBuf};

/// `tests/data`, where the fixture files the tests read are vendored.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("data")
}

/// A little-endian float32 (`<f4`) or int64 (`<i8`) `.npy` array, returned as f32 values and its shape.
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not a .npy file", path.display());
    let (header_len, header_start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[header_start..header_start + header_len]).unwrap();
    assert!(
        header.contains("'fortran_order': False"),
        "{}: fortran order",
        path.display()
    );
    let shape_src = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_src
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let body = &bytes[header_start + header_len..];
    let values = if header.contains("'<f4'") {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else if header.contains("'<i8'") {
        body.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect()
    } else {
        panic!("{}: unsupported dtype in header {header}", path.display())
    };
    (shape, values)
}

/// `target/<profile>` with the cdylib the C, C++, C# and CLI tests link against, built (or brought up
/// to date) once per test binary: `cargo test` itself builds only the rlib, so a fresh clone has no
/// `.so` yet, and an old one could be stale. Cargo does not hold its build lock while tests run.
pub fn cdylib_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>")
            .to_path_buf();
        let target = dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--lib", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", &target);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build --lib failed");
        assert!(
            dir.join("libautopipeline.so").exists() || dir.join("libautopipeline.dylib").exists(),
            "no cdylib in {} after cargo build --lib",
            dir.display()
        );
        dir
    })
    .clone()
}

/// Copies the folder `from` to `to` (created), leaving every copied file writable.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let mut perms = std::fs::metadata(&target).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms).unwrap();
        }
    }
}

/// The tensors of a safetensors file in header order: name, header entry, data bytes.
pub fn read_safetensors(path: &Path) -> Vec<(String, serde_json::Value, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, info)| {
            let offsets = info["data_offsets"].as_array().unwrap();
            let (a, b) = (
                offsets[0].as_u64().unwrap() as usize,
                offsets[1].as_u64().unwrap() as usize,
            );
            (name, info, data[a..b].to_vec())
        })
        .collect()
}

/// A safetensors file of `tensors` (their `data_offsets` recomputed, laid end to end).
pub fn write_safetensors(tensors: &[(String, serde_json::Value, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, info, bytes) in tensors {
        let mut info = info.clone();
        info["data_offsets"] = serde_json::json!([data.len(), data.len() + bytes.len()]);
        header.insert(name.clone(), info);
        data.extend_from_slice(bytes);
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}
