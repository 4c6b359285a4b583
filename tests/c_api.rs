//! Compiles `tests/c/api_test.c` with the system C compiler against `include/autopipeline.h`, links it
//! to the cdylib cargo built for this test run, runs it, and compares its image with diffusers'.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>`, where cargo put the cdylib next to this test's `deps/` folder.
fn lib_dir() -> PathBuf {
    common::cdylib_dir()
}

/// Compiles `tests/c/<name>.c` into a fresh folder (strict C99) against the cdylib; returns the folder
/// and the executable.
fn compile(name: &str) -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    assert!(
        lib.join("libautopipeline.so").exists() || lib.join("libautopipeline.dylib").exists(),
        "no cdylib in {}",
        lib.display()
    );
    let work = std::env::temp_dir().join(format!("ap-c-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let exe = work.join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join(format!("tests/c/{name}.c")))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lautopipeline", "-o"])
        .arg(&exe)
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(status.success(), "compiling tests/c/{name}.c failed");
    (work, exe)
}

#[test]
fn c_program_drives_the_async_job_api() {
    let (work, exe) = compile("jobs_test");
    let output = Command::new(&exe)
        .arg(common::data_dir().join("checkpoints/sd15-tiny"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "jobs_test failed:\n{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn c_program_generates_through_the_c_abi() {
    let (work, exe) = compile("api_test");

    let out_png = work.join("out.png");
    let data = common::data_dir();
    let output = Command::new(&exe)
        .arg(data.join("checkpoints/sd15-tiny"))
        .arg(data.join("unsupported"))
        .arg(&out_png)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "api_test failed:\n{stderr}{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let ours = autopipeline::Image::load(&out_png).unwrap();
    let want = autopipeline::Image::load(&data.join("cases/sd15-t2i-cfg-neg/output.png")).unwrap();
    assert_eq!((ours.width, ours.height), (want.width, want.height));
    let worst = ours
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "C ABI image differs from diffusers by up to {worst}/255"
    );
    let _ = std::fs::remove_dir_all(&work);
}
