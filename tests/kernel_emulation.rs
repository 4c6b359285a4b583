//! Our CUDA kernels' source (src/kernels/cuda/kernels.cu) run on the CPU: compiled by the host C++
//! compiler with tests/kernel_emulation/emulation.h, which stands in for CUDA's threads, barriers, warp
//! shuffles, `mma.sync` (from the PTX ISA's fragment layouts) and `cp.async`, and checked against
//! double-precision references by tests/kernel_emulation/driver.cpp (misaligned or out-of-bounds
//! shared-memory accesses and copies abort it, as they would fault or corrupt on a GPU). This needs no
//! GPU and no CUDA toolkit, so every test run checks the kernels' index arithmetic, tiling, masking,
//! online softmax, reductions and the synchronisation of the double-buffered copies;
//! tests/cuda_kernels.rs checks the same kernels on a real GPU (speed and the real instructions'
//! rounding only show there).

use std::path::PathBuf;
use std::process::Command;

fn build_driver() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel_emulation_driver");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O2",
            "-pthread",
            "-DAP_HOST_EMULATION",
            "-Wall",
            "-Wno-unused-function",
            "-Wno-unknown-pragmas",
        ])
        .arg(root.join("tests/kernel_emulation/driver.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("{cxx} not found ({e}): this test needs a C++20 compiler (g++ ≥ 11)"));
    assert!(
        out.status.success(),
        "compiling the kernel emulation failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(exe: &PathBuf, late_copies: bool) {
    let mut cmd = Command::new(exe);
    if late_copies {
        cmd.env("AP_EMU_LATE_COPIES", "1");
    }
    let out = cmd.output().expect("the emulation driver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "kernels off under emulation ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 failure(s)"), "{stdout}");
    // Every case ran: 22 attention cases (9 shapes × f16, bf16; 4 as views of fused projections), 6
    // convolution-column cases, 3 group norms, GEGLU and two adds.
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok")).count(),
        34,
        "{stdout}"
    );
}

#[test]
fn cuda_kernels_under_cpu_emulation() {
    let exe = build_driver();
    // Copies landing at once, then as late as each wait allows: a missing wait or barrier around the
    // double buffer reads stale or zero data in the second.
    run(&exe, false);
    run(&exe, true);
}
