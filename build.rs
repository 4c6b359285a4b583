//! Generates the C header from `src/ffi` with cbindgen into OUT_DIR (a unit test compares it with the
//! committed `include/autopipeline.h`); with `AP_WRITE_HEADER=1` it also rewrites the committed file.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-env-changed=AP_WRITE_HEADER");
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
