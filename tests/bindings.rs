//! The language bindings and the install layout, driven from `cargo test`:
//! - `bindings/cpp/autopipeline.hpp`: `tests/cpp/*.cpp` compiled with the system `c++` (under
//!   AddressSanitizer/LeakSanitizer when the compiler has it, so leaks on error paths fail the test),
//!   with and without exceptions;
//! - `bindings/csharp`: `tests/csharp/BindingTest.cs` compiled with Mono's `mcs` and run with `mono`;
//! - `bindings/python/autopipeline.py`: `tests/python/binding_test.py` with `python3`;
//! - `scripts/install.sh` into a temporary prefix, then `examples/cpp` built by CMake with
//!   `find_package(autopipeline)`, and the pkg-config file.
//!
//! A missing optional tool (mcs/mono, python3, cmake, pkg-config) prints a SKIP line and passes; CI
//! installs them (`.ci/run`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `target/<profile>`, where cargo put the cdylib next to this test's `deps/` folder.
fn lib_dir() -> PathBuf {
    common::cdylib_dir()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh scratch folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ap-bindings-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Says on the real stderr (not the test harness's captured one) that a check did not run.
fn skip(what: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIP {what}: {why}");
}

fn show(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", show(&out));
    out
}

/// The PNG a binding wrote equals diffusers' recorded output of the same case within 1/255.
fn assert_matches_case(png: &Path, case: &str) {
    let ours = autopipeline::Image::load(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    let want =
        autopipeline::Image::load(&common::data_dir().join("cases").join(case).join("output.png")).unwrap();
    assert_eq!(
        (ours.width, ours.height),
        (want.width, want.height),
        "{case}: size"
    );
    let worst = ours
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "{case}: differs from diffusers by up to {worst}/255");
}

/// Compiles one C++ test against the wrapper and the cdylib.
fn compile_cpp(src: &str, exe: &Path, extra: &[&str]) -> Output {
    let lib = lib_dir();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    Command::new(&cxx)
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .args(extra)
        .arg(format!("-I{}", root().join("include").display()))
        .arg(format!("-I{}", root().join("bindings/cpp").display()))
        .arg(root().join(src))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lautopipeline", "-o"])
        .arg(exe)
        .output()
        .expect("a C++ compiler (c++) is installed")
}

#[test]
fn cpp_wrapper_generates_and_maps_errors() {
    let work = Scratch::new("cpp");
    let exe = work.0.join("binding_test");
    // Under ASan/LSan when available: a leak on any path (errors, moves, exceptions) fails the run.
    let mut sanitized = compile_cpp("tests/cpp/binding_test.cpp", &exe, &["-fsanitize=address"])
        .status
        .success();
    if !sanitized {
        eprintln!("note: c++ has no AddressSanitizer here; running the C++ test without leak checks");
        let out = compile_cpp("tests/cpp/binding_test.cpp", &exe, &[]);
        assert!(
            out.status.success(),
            "compiling tests/cpp/binding_test.cpp failed:\n{}",
            show(&out)
        );
    }
    let data = common::data_dir();
    let mut out = Command::new(&exe).arg(&data).arg(&work.0).output().unwrap();
    if sanitized
        && !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("LeakSanitizer has encountered a fatal error")
    {
        // LSan cannot run under ptrace or in some sandboxes; that is no finding about our code.
        eprintln!("note: LeakSanitizer cannot run here; rerunning without leak checks");
        sanitized = false;
        out = Command::new(&exe)
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .arg(&data)
            .arg(&work.0)
            .output()
            .unwrap();
    }
    assert!(
        out.status.success(),
        "binding_test failed (sanitized: {sanitized}):\n{}",
        show(&out)
    );
    assert_matches_case(&work.0.join("t2i.png"), "sd15-t2i-cfg-neg");
    assert_matches_case(&work.0.join("i2i.png"), "sd15-i2i-cfg-neg");
}

#[test]
fn cpp_wrapper_without_exceptions() {
    let work = Scratch::new("cpp-noexcept");
    let exe = work.0.join("noexcept_test");
    let out = compile_cpp("tests/cpp/noexcept_test.cpp", &exe, &["-fno-exceptions"]);
    assert!(
        out.status.success(),
        "compiling tests/cpp/noexcept_test.cpp with -fno-exceptions failed:\n{}",
        show(&out)
    );
    run_ok(Command::new(&exe).arg(common::data_dir()), "noexcept_test");
}

/// The C layouts the bindings' own struct declarations must match, as `name size` and
/// `name.field offset` pairs: the library accepts any size from the 0.1.0 layout up, so a binding
/// whose struct went wrong would no longer be refused by the library; its test checks these instead.
fn layouts() -> String {
    use autopipeline::ffi::{ap_job_status, ap_load_params, ap_run_params};
    use std::mem::{offset_of, size_of};
    [
        ("ap_load_params".to_string(), size_of::<ap_load_params>()),
        (
            "ap_load_params.preload".into(),
            offset_of!(ap_load_params, preload),
        ),
        ("ap_run_params".into(), size_of::<ap_run_params>()),
        ("ap_run_params.rng".into(), offset_of!(ap_run_params, rng)),
        (
            "ap_run_params.timesteps".into(),
            offset_of!(ap_run_params, timesteps),
        ),
        (
            "ap_run_params.num_timesteps".into(),
            offset_of!(ap_run_params, num_timesteps),
        ),
        ("ap_run_params.sigmas".into(), offset_of!(ap_run_params, sigmas)),
        (
            "ap_run_params.num_sigmas".into(),
            offset_of!(ap_run_params, num_sigmas),
        ),
        ("ap_job_status".into(), size_of::<ap_job_status>()),
    ]
    .iter()
    .map(|(k, v)| format!("{k} {v}"))
    .collect::<Vec<_>>()
    .join(" ")
}

#[test]
fn csharp_binding_under_mono() {
    if !have("mcs") || !have("mono") {
        skip(
            "csharp_binding_under_mono",
            "mcs and mono are not installed (apt-get install mono-mcs mono-runtime)",
        );
        return;
    }
    let work = Scratch::new("csharp");
    let exe = work.0.join("BindingTest.exe");
    let mut mcs = Command::new("mcs");
    // C# 6 is what the binding promises (older Unity, Mono's mcs); warnings are errors.
    mcs.args(["-langversion:6", "-warnaserror", "-debug"])
        .arg(format!("-out:{}", exe.display()));
    for f in [
        "bindings/csharp/Native.cs",
        "bindings/csharp/Autopipeline.cs",
        "tests/csharp/BindingTest.cs",
    ] {
        mcs.arg(root().join(f));
    }
    run_ok(&mut mcs, "mcs (compiling the C# binding and its test)");
    let out = run_ok(
        Command::new("mono")
            .arg("--debug")
            .arg(&exe)
            .arg(common::data_dir())
            .arg(&work.0)
            .env("AP_LAYOUTS", layouts())
            .env("LD_LIBRARY_PATH", lib_dir())
            .env("DYLD_LIBRARY_PATH", lib_dir()),
        "mono BindingTest.exe",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
    assert_matches_case(&work.0.join("t2i.png"), "sd15-t2i-cfg-neg");
    assert_matches_case(&work.0.join("i2i.png"), "sd15-i2i-cfg-neg");

    // examples/csharp builds with the binding and generates with progress.
    let example = work.0.join("Example.exe");
    run_ok(
        Command::new("mcs")
            .args(["-langversion:6", "-warnaserror"])
            .arg(format!("-out:{}", example.display()))
            .arg(root().join("examples/csharp/Program.cs"))
            .arg(root().join("bindings/csharp/Native.cs"))
            .arg(root().join("bindings/csharp/Autopipeline.cs")),
        "mcs examples/csharp",
    );
    let png = work.0.join("example.png");
    let out = run_ok(
        Command::new("mono")
            .arg(&example)
            .arg(common::data_dir().join("checkpoints/sd15-tiny"))
            .arg("a red house")
            .arg(&png)
            .arg("2")
            .arg("7")
            .env("LD_LIBRARY_PATH", lib_dir())
            .env("DYLD_LIBRARY_PATH", lib_dir()),
        "examples/csharp",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loading") && stderr.contains("denoise") && stderr.contains("wrote"),
        "{stderr}"
    );
    assert!(autopipeline::Image::load(&png).is_ok());
}

#[test]
fn python_binding() {
    if !have("python3") {
        skip("python_binding", "python3 is not installed");
        return;
    }
    let work = Scratch::new("python");
    run_ok(
        Command::new("python3")
            .arg(root().join("tests/python/binding_test.py"))
            .arg(common::data_dir())
            .arg(&work.0)
            .env("AP_LAYOUTS", layouts())
            .env("AUTOPIPELINE_LIBRARY", lib_dir().join(lib_file_name()))
            .env("PYTHONPATH", root().join("bindings/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        "tests/python/binding_test.py",
    );
    assert_matches_case(&work.0.join("t2i.png"), "sd15-t2i-cfg-neg");
}

fn lib_file_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "libautopipeline.dylib"
    } else {
        "libautopipeline.so"
    }
}

#[test]
fn install_then_build_the_cpp_example_with_cmake() {
    let work = Scratch::new("install");
    let prefix = work.0.join("prefix");
    // The static archive of a debug build is hundreds of MB: this test installs the shared library
    // only (the static layout is the same copy; scripts/check-install.sh links it too).
    let out = run_ok(
        Command::new("sh")
            .arg(root().join("scripts/install.sh"))
            .arg("--libdir")
            .arg(lib_dir())
            .arg("--no-static")
            .arg(&prefix),
        "scripts/install.sh",
    );
    let version = env!("CARGO_PKG_VERSION");
    let abi = {
        let mut it = version.split('.');
        let (major, minor) = (it.next().unwrap(), it.next().unwrap());
        if major == "0" {
            format!("0.{minor}")
        } else {
            major.to_string()
        }
    };
    for f in [
        "include/autopipeline.h",
        "include/autopipeline.hpp",
        "lib/pkgconfig/autopipeline.pc",
        "lib/cmake/autopipeline/autopipeline-config.cmake",
        "lib/cmake/autopipeline/autopipeline-config-version.cmake",
        "share/autopipeline/bindings/csharp/Autopipeline.cs",
        "share/autopipeline/bindings/csharp/Native.cs",
        "share/autopipeline/bindings/python/autopipeline.py",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }
    if cfg!(target_os = "linux") {
        let lib = prefix.join("lib");
        if String::from_utf8_lossy(&out.stderr).contains("patchelf not found") {
            skip(
                "soname checks",
                "patchelf is not installed (apt-get install patchelf)",
            );
        } else {
            let real = format!("libautopipeline.so.{version}");
            let soname = format!("libautopipeline.so.{abi}");
            assert!(lib.join(&real).is_file());
            assert_eq!(
                std::fs::read_link(lib.join(&soname)).unwrap(),
                PathBuf::from(&real)
            );
            assert_eq!(
                std::fs::read_link(lib.join("libautopipeline.so")).unwrap(),
                PathBuf::from(&soname)
            );
            if have("readelf") {
                let dynamic = run_ok(Command::new("readelf").arg("-d").arg(lib.join(&real)), "readelf");
                assert!(
                    String::from_utf8_lossy(&dynamic.stdout).contains(&format!("Library soname: [{soname}]")),
                    "soname of the installed library is not {soname}"
                );
            }
        }
    }

    if have("pkg-config") {
        let pc = run_ok(
            Command::new("pkg-config")
                .args(["--modversion", "autopipeline"])
                .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
            "pkg-config --modversion",
        );
        assert_eq!(String::from_utf8_lossy(&pc.stdout).trim(), version);
        let flags = run_ok(
            Command::new("pkg-config")
                .args(["--cflags", "--libs", "autopipeline"])
                .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
            "pkg-config --cflags --libs",
        );
        let flags = String::from_utf8_lossy(&flags.stdout).to_string();
        assert!(
            flags.contains(&format!("-I{}", prefix.join("include").display()))
                && flags.contains(&format!("-L{}", prefix.join("lib").display()))
                && flags.contains("-lautopipeline"),
            "pkg-config flags: {flags}"
        );
    } else {
        skip("pkg-config checks", "pkg-config is not installed");
    }

    if !have("cmake") {
        skip(
            "cmake build of examples/cpp",
            "cmake is not installed (apt-get install cmake)",
        );
        return;
    }
    let build = work.0.join("build");
    run_ok(
        Command::new("cmake")
            .arg("-S")
            .arg(root().join("examples/cpp"))
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())),
        "cmake configure of examples/cpp",
    );
    run_ok(
        Command::new("cmake").arg("--build").arg(&build),
        "cmake --build examples/cpp",
    );
    let png = work.0.join("example.png");
    let out = run_ok(
        Command::new(build.join("generate"))
            .arg(common::data_dir().join("checkpoints/sd15-tiny"))
            .arg("a red house")
            .arg(&png)
            .arg("2")
            .arg("7"),
        "examples/cpp generate",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("denoise") && stderr.contains("wrote"), "{stderr}");
    let img = autopipeline::Image::load(&png).unwrap();
    assert_eq!((img.width, img.height, img.channels), (64, 64, 3));

    // find_package's version check: 0.x releases are compatible only within their minor version.
    let probe = work.0.join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    std::fs::write(
        probe.join("CMakeLists.txt"),
        "cmake_minimum_required(VERSION 3.16)\nproject(probe C)\nfind_package(autopipeline ${WANT} REQUIRED)\n",
    )
    .unwrap();
    let configure = |want: &str| {
        let _ = std::fs::remove_dir_all(probe.join("b"));
        Command::new("cmake")
            .arg("-S")
            .arg(&probe)
            .arg("-B")
            .arg(probe.join("b"))
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .arg(format!("-DWANT={want}"))
            .output()
            .unwrap()
    };
    let (major, minor) = {
        let mut it = version.split('.');
        (
            it.next().unwrap().parse::<u32>().unwrap(),
            it.next().unwrap().parse::<u32>().unwrap(),
        )
    };
    let same = format!("{major}.{minor}");
    let next_breaking = if major == 0 {
        format!("0.{}", minor + 1)
    } else {
        format!("{}.0", major + 1)
    };
    let o = configure(&same);
    assert!(o.status.success(), "find_package({same}):\n{}", show(&o));
    let o = configure(&next_breaking);
    assert!(!o.status.success(), "find_package({next_breaking}) should fail");
}
