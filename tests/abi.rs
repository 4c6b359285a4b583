//! The ABI grows, it never breaks: C programs compiled against the frozen 0.1.0 and 0.1.1 headers
//! (`tests/abi/autopipeline-0.1.0.h`, a copy of the first published header, never to be edited) is
//! linked against the library of this build and run. It loads the tiny checkpoint and generates with
//! 0.1.0-sized structs and the 0.1.0 by-value `*_default()` symbols, with every struct placed against
//! an inaccessible page so that reading or writing past a 0.1.0 size crashes it (see the C file).
//! And the current header, whose `*_default()` are static inline, compiles cleanly in C and C++,
//! included twice, next to those exported symbols.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles `source` (C or C++, by `compiler`) with `include` on the include path, linked to this
/// build's cdylib; returns the executable.
fn compile(compiler: &str, std: &str, source: &Path, include: &Path, name: &str) -> PathBuf {
    let lib = common::cdylib_dir();
    let work = std::env::temp_dir().join(format!("ap-abi-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let exe = work.join(name);
    let output = Command::new(compiler)
        .arg(format!("-std={std}"))
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fstack-protector-all",
        ])
        .arg(format!("-I{}", include.display()))
        .arg(source)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lautopipeline", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("{compiler} is installed: {e}"));
    assert!(
        output.status.success(),
        "compiling {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

#[test]
#[cfg(unix)] // the C program guards its structs with mmap / mprotect
fn a_program_built_against_the_0_1_0_header_runs_on_this_library() {
    let exe = compile(
        &std::env::var("CC").unwrap_or_else(|_| "cc".into()),
        "c99",
        &root().join("tests/abi/frozen_0_1_0.c"),
        &root().join("tests/abi"),
        "frozen_0_1_0",
    );
    let output = Command::new(&exe)
        .arg(common::data_dir().join("checkpoints/sd15-tiny"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the 0.1.0 program failed ({}):\n{}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(stdout.contains("ok"), "{stdout}");
    // The sizes the 0.1.0 header gives are those the library takes as its first layouts.
    #[cfg(target_pointer_width = "64")]
    assert!(stdout.contains("sizes 88 184 24"), "{stdout}");
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}

/// A program built against the 0.1.1 header (custom schedules; `tests/abi/autopipeline-0.1.1.h`, a
/// frozen copy) runs with its 0.1.1-sized `ap_run_params` on this library, which has grown since.
#[test]
#[cfg(unix)]
fn a_program_built_against_the_0_1_1_header_runs_on_this_library() {
    let exe = compile(
        &std::env::var("CC").unwrap_or_else(|_| "cc".into()),
        "c99",
        &root().join("tests/abi/frozen_0_1_1.c"),
        &root().join("tests/abi"),
        "frozen_0_1_1",
    );
    let output = Command::new(&exe)
        .arg(common::data_dir().join("checkpoints/sd15-tiny"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the 0.1.1 program failed ({}):\n{}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
    );
    #[cfg(target_pointer_width = "64")]
    assert!(stdout.contains("ok size 216"), "{stdout}");
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}

/// The current header in a C and a C++ translation unit: included twice (the inline defaults have
/// a guard of their own, after cbindgen's), its inline `*_default()` beside the exported symbols of
/// the same names, and defaults equal to what `*_init` gives.
#[test]
fn the_current_header_defines_the_defaults_inline() {
    let source = r#"
#include "autopipeline.h"
#include "autopipeline.h"
#include <stdio.h>
#include <string.h>
int main(void) {
  ap_run_params a = ap_run_params_default(), b;
  ap_load_params l = ap_load_params_default();
  ap_job_status s = ap_job_status_default();
  memset(&b, 0xff, sizeof b);
  if (ap_run_params_init(&b, sizeof b) != AP_OK) return 1;
  if (a.struct_size != sizeof a || l.struct_size != sizeof l || s.struct_size != sizeof s) return 2;
  if (b.struct_size != sizeof b || b.guidance_scale != a.guidance_scale || b.timesteps != NULL ||
      b.num_sigmas != 0 || a.num_timesteps != 0)
    return 3;
  printf("ok\n");
  return 0;
}
"#;
    let work = std::env::temp_dir().join(format!("ap-abi-inline-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    for (compiler, std, file) in [
        (
            std::env::var("CC").unwrap_or_else(|_| "cc".into()),
            "c99",
            "inline.c",
        ),
        (
            std::env::var("CXX").unwrap_or_else(|_| "c++".into()),
            "c++11",
            "inline.cpp",
        ),
    ] {
        let path = work.join(file);
        std::fs::write(&path, source).unwrap();
        let exe = compile(
            &compiler,
            std,
            &path,
            &root().join("include"),
            file.replace('.', "_").as_str(),
        );
        let output = Command::new(&exe).output().unwrap();
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("ok"),
            "{file}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let _ = std::fs::remove_dir_all(exe.parent().unwrap());
    }
    let _ = std::fs::remove_dir_all(&work);
}
