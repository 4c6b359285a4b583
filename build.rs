//! Generates the C header from `src/ffi` with cbindgen into OUT_DIR (a unit test compares it with the
//! committed `include/autopipeline.h`); with `AP_WRITE_HEADER=1` it also rewrites the committed file.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-env-changed=AP_WRITE_HEADER");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build_cuda_ptx();
    }
    let crate_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("autopipeline.h");
    let mut config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    // The version macros come from Cargo.toml so header and library can never disagree.
    let v = |k: &str| std::env::var(k).expect("cargo sets the package version");
    config.after_includes = Some(format!(
        "\n#define AUTOPIPELINE_VERSION_MAJOR {}\n#define AUTOPIPELINE_VERSION_MINOR {}\n#define AUTOPIPELINE_VERSION_PATCH {}\n#define AUTOPIPELINE_VERSION \"{}\"\n",
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
        v("CARGO_PKG_VERSION"),
    ));
    match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(&out);
            if std::env::var_os("AP_WRITE_HEADER").is_some() {
                bindings.write_to_file(crate_dir.join("include").join("autopipeline.h"));
            }
        }
        Err(e) => {
            // A header failure must not break `cargo build` for Rust users; the stale-header test
            // reports it instead.
            println!("cargo:warning=cbindgen could not generate the header: {e}");
            std::fs::write(&out, format!("/* cbindgen failed: {e} */\n")).expect("OUT_DIR is writable");
        }
    }
}

/// `cuda` builds: compiles the CUDA sources to PTX. `src/rng/torch_cuda_randn.cu` with nvcc's default
/// floating-point flags (those torch's kernels are built with, which bit-exact draws depend on); our
/// model kernels (`src/kernels/cuda/kernels.cu`) likewise, for Hopper unless CUDA_COMPUTE_CAP says
/// otherwise (their tensor-core paths need compute capability 8.0 or newer).
fn build_cuda_ptx() {
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").ok();
    for (src, ptx, default_cap) in [
        ("src/rng/torch_cuda_randn.cu", "torch_cuda_randn.ptx", None),
        ("src/kernels/cuda/kernels.cu", "ap_kernels.ptx", Some("90")),
    ] {
        println!("cargo:rerun-if-changed={src}");
        let mut nvcc = std::process::Command::new("nvcc");
        nvcc.args(["--ptx", "-O3", "-o"]).arg(out_dir.join(ptx)).arg(src);
        if let Some(cap) = cap.as_deref().or(default_cap) {
            nvcc.arg(format!("--gpu-architecture=compute_{}", cap.trim()));
        }
        match nvcc.status() {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("nvcc failed ({s}) compiling {src}"),
            Err(e) => panic!("nvcc not found ({e}): the `cuda` feature needs the CUDA toolkit on PATH (see scripts/cuda/build.sh)"),
        }
    }
}
