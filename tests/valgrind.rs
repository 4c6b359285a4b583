//! Opt-in: `AP_VALGRIND=1 cargo test --test valgrind` runs `scripts/valgrind.sh` (the C ABI tests under
//! valgrind memcheck: no definite/indirect leaks, no invalid accesses) against the cdylib cargo built
//! for this test run. Skipped (passes) without `AP_VALGRIND=1`: it needs valgrind and takes minutes.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn c_abi_is_clean_under_valgrind() {
    if std::env::var("AP_VALGRIND").ok().as_deref() != Some("1") {
        eprintln!("skipped: set AP_VALGRIND=1 to run the C ABI tests under valgrind");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let lib: PathBuf = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/valgrind.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("AP_LIB_DIR", &lib)
        .output()
        .expect("bash runs scripts/valgrind.sh");
    assert!(
        output.status.success(),
        "valgrind found problems (exit {:?}):\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
