//! Memory over time: repeated load / run / free cycles through the C ABI (sync and async runs,
//! previews, log callbacks, jobs freed while running, async loads, from_pipe) must not grow the
//! resident set. Its own test binary, so no other test's allocations move the numbers.

mod common;

use autopipeline::ffi::*;
use std::ffi::{c_char, c_void, CString};
use std::time::{Duration, Instant};

/// Threads of this process, from `/proc/self/status`.
fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Resident set size in bytes, from `/proc/self/statm` (Linux); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

unsafe extern "C" fn on_preview(_step: u32, _total: u32, images: *const ap_images, user_data: *mut c_void) {
    let n = &mut *(user_data as *mut u32);
    *n += (*images).count as u32;
}

unsafe extern "C" fn on_log(_level: i32, _msg: *const c_char, user_data: *mut c_void) {
    let n = &*(user_data as *const std::sync::atomic::AtomicU32);
    n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

fn ok(status: ap_status, what: &str) {
    if status != AP_OK {
        let msg = unsafe { std::ffi::CStr::from_ptr(ap_last_error()) };
        panic!("{what}: status {status}: {msg:?}");
    }
}

fn wait(job: *const ap_job) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = unsafe { ap_job_wait(job, 100) };
        if s == AP_OK {
            return;
        }
        assert_eq!(s, AP_ERR_TIMEOUT);
        assert!(Instant::now() < deadline, "job did not finish");
    }
}

/// One load → runs → free cycle exercising every allocation path of the runtime.
fn cycle(model: &CString, prompt: &CString, log_count: &std::sync::atomic::AtomicU32) {
    unsafe {
        let mut pipe: *mut ap_pipeline = std::ptr::null_mut();
        ok(
            ap_from_pretrained(model.as_ptr(), AP_TASK_TEXT2IMAGE, std::ptr::null(), &mut pipe),
            "load",
        );
        ok(
            ap_pipeline_set_log_callback(
                pipe,
                Some(on_log),
                log_count as *const _ as *mut c_void,
                AP_LOG_DEBUG,
            ),
            "log callback",
        );
        let mut previews = 0u32;
        let mut run = ap_run_params_default();
        run.prompt = prompt.as_ptr();
        run.seed = 7;
        run.num_inference_steps = 2;
        run.width = 64;
        run.height = 64;
        run.preview = Some(on_preview);
        run.preview_user_data = &mut previews as *mut u32 as *mut c_void;
        run.preview_every = 1;

        let mut images: *mut ap_images = std::ptr::null_mut();
        ok(ap_run(pipe, &run, &mut images), "run");
        ap_images_free(images);

        // Async: run to completion and take; then a job freed while running.
        run.preview = None;
        let mut job: *mut ap_job = std::ptr::null_mut();
        ok(ap_run_async(pipe, &run, &mut job), "run_async");
        wait(job);
        let mut images: *mut ap_images = std::ptr::null_mut();
        ok(ap_job_take_result(job, &mut images), "take");
        ap_images_free(images);
        ap_job_free(job);
        run.num_inference_steps = 50;
        let mut running: *mut ap_job = std::ptr::null_mut();
        ok(ap_run_async(pipe, &run, &mut running), "run_async (to free)");

        // A from_pipe sibling, and an async load collected and freed.
        let mut sibling: *mut ap_pipeline = std::ptr::null_mut();
        ok(
            ap_from_pipe(pipe, AP_TASK_IMAGE2IMAGE, std::ptr::null(), &mut sibling),
            "from_pipe",
        );
        let mut load: *mut ap_job = std::ptr::null_mut();
        ok(
            ap_from_pretrained_async(model.as_ptr(), AP_TASK_TEXT2IMAGE, std::ptr::null(), &mut load),
            "load async",
        );
        wait(load);
        let mut loaded: *mut ap_pipeline = std::ptr::null_mut();
        ok(ap_job_take_pipeline(load, &mut loaded), "take pipeline");
        ap_job_free(load);
        ap_job_free(running);
        ap_pipeline_free(loaded);
        ap_pipeline_free(sibling);
        ap_pipeline_free(pipe);
        assert_eq!(previews, 3, "PNDM: 3 UNet steps for 2");
    }
}

#[test]
fn load_run_free_cycles_do_not_grow_resident_memory() {
    let Some(_) = rss_bytes() else {
        eprintln!("no /proc/self/statm on this system: skipping the RSS check");
        return;
    };
    let model = CString::new(common::data_dir().join("checkpoints/sd15-tiny").to_str().unwrap()).unwrap();
    let prompt = CString::new("a squirrel").unwrap();
    let logs = std::sync::atomic::AtomicU32::new(0);
    const WARMUP: usize = 8;
    const CYCLES: usize = 200;
    cycle(&model, &prompt, &logs); // starts the thread pools the tensor kernels use
    let idle_threads = threads().unwrap();
    let mut series = Vec::new();
    for _ in 1..CYCLES {
        cycle(&model, &prompt, &logs);
        // The worker of the job freed while running stops after its step in progress; wait for it
        // (and so check that job threads end) before sampling, so every sample sees the same state.
        let deadline = Instant::now() + Duration::from_secs(30);
        while threads().unwrap() > idle_threads {
            assert!(Instant::now() < deadline, "job worker threads did not exit");
            std::thread::sleep(Duration::from_millis(2));
        }
        series.push(rss_bytes().unwrap());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "RSS after each of cycles 2..={CYCLES} (MiB): {}; {} log lines",
        series
            .iter()
            .map(|&b| format!("{:.1}", mib(b)))
            .collect::<Vec<_>>()
            .join(" "),
        logs.load(std::sync::atomic::Ordering::SeqCst)
    );
    // Compare the floors of the first and last windows after warm-up: a leak raises the floor, while
    // single samples swing with where the allocator happens to stand.
    let floor = |w: &[u64]| mib(*w.iter().min().unwrap());
    let n = series.len();
    let early = floor(&series[WARMUP..WARMUP + 6]);
    let late = floor(&series[n - 6..]);
    eprintln!("RSS floor after warm-up {early:.1} MiB, at the end {late:.1} MiB");
    // One cycle loads the tiny checkpoint (~1.8 MB of weights) three times; leaking any of it, or the
    // images, per cycle would add tens of MiB over the measured cycles. The slack absorbs allocator
    // noise (per-thread arenas, fragmentation).
    let slack = 16.0;
    assert!(
        late - early < slack,
        "resident memory floor grew from {early:.1} to {late:.1} MiB over {} cycles",
        CYCLES - WARMUP
    );
}

/// Under an address-space limit (`ulimit -v`, `RLIMIT_AS`) a run that cannot fit is refused up front
/// instead of aborting the host process at an allocation (issue #21's reproducer: sd15-tiny at
/// 1024×1024 with 8 images). Run in a child process: the limit is the child's alone.
#[test]
#[cfg(target_os = "linux")]
fn address_space_limit_is_honoured_before_allocating() {
    const CHILD: &str = "AP_TEST_RLIMIT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let dir = common::data_dir().join("checkpoints/sd15-tiny");
        let pipe = autopipeline::Pipeline::from_pretrained(
            dir.to_str().unwrap(),
            autopipeline::Task::Text2Image,
            &Default::default(),
            None,
        )
        .unwrap();
        // Room for what is mapped now plus 256 MiB: far below the run's activations.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        let limit = vm_kb * 1024 + (256 << 20);
        let lim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
        let params = autopipeline::RunParams {
            prompt: "a cat".into(),
            width: Some(1024),
            height: Some(1024),
            num_images_per_prompt: 8,
            num_inference_steps: Some(1),
            ..Default::default()
        };
        match pipe.run(&params, None) {
            Err(autopipeline::Error::InvalidArgument(m)) => {
                assert!(m.contains("RLIMIT_AS"), "{m}");
                println!("refused: {m}");
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "address_space_limit_is_honoured_before_allocating",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed ({}):\n{text}", out.status);
    assert!(text.contains("refused:"), "{text}");
}
