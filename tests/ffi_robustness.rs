//! Every C entry point fed what a careless or hostile caller passes: NULLs, zero/negative/huge/NaN
//! numbers, invalid UTF-8, wrong `struct_size`, inconsistent image sizes, broken image files, and
//! calls after a failed or cancelled run. Each must answer with a status and a message, never a
//! panic, abort or undefined behaviour. (Called from Rust, but through the `extern "C"` functions
//! themselves.)

mod common;

use autopipeline::ffi::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};

fn last_error() -> String {
    let p = ap_last_error();
    assert!(!p.is_null(), "ap_last_error never returns NULL");
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .expect("messages are UTF-8")
        .to_string()
}

/// Asserts `status` is `want` and that a message naming `mentions` was set.
#[track_caller]
fn expect(status: ap_status, want: ap_status, mentions: &str) {
    let msg = last_error();
    assert_eq!(status, want, "status (message: {msg})");
    if want != AP_OK {
        assert!(!msg.is_empty(), "a failure sets a message");
        assert!(
            msg.contains(mentions),
            "message {msg:?} should mention {mentions:?}"
        );
    }
}

fn sd15() -> CString {
    CString::new(common::data_dir().join("checkpoints/sd15-tiny").to_str().unwrap()).unwrap()
}

struct Pipe(*mut ap_pipeline);

impl Pipe {
    fn load() -> Self {
        let mut out = null_mut();
        let status = unsafe { ap_from_pretrained(sd15().as_ptr(), AP_TASK_TEXT2IMAGE, null(), &mut out) };
        expect(status, AP_OK, "");
        Pipe(out)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        unsafe { ap_pipeline_free(self.0) };
    }
}

/// Small, fast run parameters for the tiny checkpoint.
fn small_run() -> ap_run_params {
    let mut run = ap_run_params_default();
    run.prompt = c"a cat".as_ptr();
    run.num_inference_steps = 1;
    run.width = 64;
    run.height = 64;
    run
}

/// Runs `params` on `pipe`; frees images on success.
fn run(pipe: &Pipe, params: &ap_run_params) -> ap_status {
    let mut out: *mut ap_images = std::ptr::NonNull::dangling().as_ptr();
    let status = unsafe { ap_run(pipe.0, params, &mut out) };
    if status == AP_OK {
        assert!(!out.is_null());
        unsafe { ap_images_free(out) };
    } else {
        assert!(out.is_null(), "out is NULL after a failure");
    }
    status
}

const INVALID_UTF8: &[u8] = b"a\xffb\0";

/// Setters for one numeric field of the run parameters.
type SetInt = fn(&mut ap_run_params, i32);
type SetFloat = fn(&mut ap_run_params, f32);

fn invalid_utf8() -> *const c_char {
    INVALID_UTF8.as_ptr().cast()
}

#[test]
fn static_entry_points() {
    let v = unsafe { CStr::from_ptr(ap_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let load = ap_load_params_default();
    assert_eq!(load.struct_size as usize, std::mem::size_of::<ap_load_params>());
    let run = ap_run_params_default();
    assert_eq!(run.struct_size as usize, std::mem::size_of::<ap_run_params>());
    // Free functions accept NULL.
    unsafe {
        ap_pipeline_free(null_mut());
        ap_images_free(null_mut());
        ap_image_free(null_mut());
    }
}

/// `*_init` fill exactly the size they are given, and refuse NULL and sizes outside the accepted
/// range (the range itself is pinned by `tests/abi.rs` against the frozen 0.1.0 header).
#[test]
fn params_init_entry_points() {
    unsafe {
        expect(
            ap_run_params_init(null_mut(), std::mem::size_of::<ap_run_params>()),
            AP_ERR_INVALID_ARGUMENT,
            "ap_run_params is NULL",
        );
        expect(
            ap_load_params_init(null_mut(), 88),
            AP_ERR_INVALID_ARGUMENT,
            "NULL",
        );
        expect(
            ap_job_status_init(null_mut(), 24),
            AP_ERR_INVALID_ARGUMENT,
            "NULL",
        );
        let full = std::mem::size_of::<ap_run_params>();
        let mut bytes = vec![0x5Au8; full + 16];
        let p = bytes.as_mut_ptr().cast::<ap_run_params>();
        for size in [0, 3, 4, 100, full + 1, usize::MAX] {
            expect(
                ap_run_params_init(p, size),
                AP_ERR_INVALID_ARGUMENT,
                "ap_run_params",
            );
            assert!(
                last_error().contains(&format!("size is {size}")),
                "{}",
                last_error()
            );
            assert!(bytes.iter().all(|&b| b == 0x5A), "a refused init writes nothing");
        }
        expect(ap_run_params_init(p, full), AP_OK, "");
        assert!(
            bytes[full..].iter().all(|&b| b == 0x5A),
            "init writes no further than size"
        );
        let got = p.read_unaligned();
        assert_eq!(got.struct_size as usize, full);
        assert_eq!((got.guidance_scale, got.strength), (-1.0, -1.0));
        assert_eq!(CStr::from_ptr(got.prompt).to_bytes(), b"");
        assert_eq!((got.timesteps, got.num_timesteps), (null(), 0));
    }
}

#[test]
fn from_pretrained_arguments() {
    let mut out: *mut ap_pipeline = std::ptr::NonNull::dangling().as_ptr();
    unsafe {
        expect(
            ap_from_pretrained(sd15().as_ptr(), 0, null(), null_mut()),
            AP_ERR_INVALID_ARGUMENT,
            "out",
        );
        expect(
            ap_from_pretrained(null(), 0, null(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "model",
        );
        assert!(out.is_null());
        expect(
            ap_from_pretrained(invalid_utf8(), 0, null(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "UTF-8",
        );
        expect(
            ap_from_pretrained(c"".as_ptr(), 0, null(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "empty",
        );
        for task in [-1, 3, i32::MAX, i32::MIN] {
            expect(
                ap_from_pretrained(sd15().as_ptr(), task, null(), &mut out),
                AP_ERR_INVALID_ARGUMENT,
                "task",
            );
        }
        for size in [0u32, 1, 4, u32::MAX] {
            let mut params = ap_load_params_default();
            params.struct_size = size;
            expect(
                ap_from_pretrained(sd15().as_ptr(), 0, &params, &mut out),
                AP_ERR_INVALID_ARGUMENT,
                "struct_size",
            );
        }
        let fields: [fn(&mut ap_load_params, *const c_char); 5] = [
            |p, s| p.device = s,
            |p, s| p.variant = s,
            |p, s| p.revision = s,
            |p, s| p.cache_dir = s,
            |p, s| p.token = s,
        ];
        for set in fields {
            let mut params = ap_load_params_default();
            set(&mut params, invalid_utf8());
            expect(
                ap_from_pretrained(sd15().as_ptr(), 0, &params, &mut out),
                AP_ERR_INVALID_ARGUMENT,
                "UTF-8",
            );
        }
        for device in [c"cuda:x", c"tpu", c"cuda:99999999999999999999"] {
            let mut params = ap_load_params_default();
            params.device = device.as_ptr();
            let status = ap_from_pretrained(sd15().as_ptr(), 0, &params, &mut out);
            assert!(
                status == AP_ERR_INVALID_ARGUMENT || status == AP_ERR_UNSUPPORTED,
                "device {device:?}: {status} {}",
                last_error()
            );
        }
        let mut params = ap_load_params_default();
        params.variant = c"../../etc".as_ptr();
        expect(
            ap_from_pretrained(sd15().as_ptr(), 0, &params, &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "variant",
        );
        assert!(out.is_null());
    }
}

extern "C" fn stop_loading(_: u32, _: u32, _: *mut c_void) -> i32 {
    0
}

#[test]
fn cancelled_load() {
    let mut params = ap_load_params_default();
    params.progress = Some(stop_loading);
    let mut out = null_mut();
    let status = unsafe { ap_from_pretrained(sd15().as_ptr(), 0, &params, &mut out) };
    expect(status, AP_ERR_CANCELLED, "cancel");
    assert!(out.is_null());
}

#[test]
fn from_pipe_arguments() {
    let pipe = Pipe::load();
    let mut out: *mut ap_pipeline = std::ptr::NonNull::dangling().as_ptr();
    unsafe {
        expect(
            ap_from_pipe(pipe.0, 0, null(), null_mut()),
            AP_ERR_INVALID_ARGUMENT,
            "out",
        );
        expect(
            ap_from_pipe(null(), 0, null(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "pipe",
        );
        assert!(out.is_null());
        expect(
            ap_from_pipe(pipe.0, 9, null(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "task",
        );
        expect(
            ap_from_pipe(pipe.0, 1, invalid_utf8(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "UTF-8",
        );
        expect(
            ap_from_pipe(pipe.0, 1, c"{".as_ptr(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "JSON",
        );
        expect(
            ap_from_pipe(pipe.0, 1, c"\"x\"".as_ptr(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "object",
        );
        let deep = CString::new("[".repeat(100_000)).unwrap();
        expect(
            ap_from_pipe(pipe.0, 1, deep.as_ptr(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "JSON",
        );
        // Overrides are the caller's argument: unknown keys, wrong types, private keys, components and
        // out-of-range run defaults are refused, naming the key.
        for (text, mentions) in [
            (c"{\"bogus_key\": 1}", "bogus_key"),
            (
                c"{\"requires_safety_checker\": \"yes\"}",
                "requires_safety_checker",
            ),
            (c"{\"_class_name\": \"Evil\"}", "_class_name"),
            (c"{\"vae\": null}", "vae"),
            (c"{\"strength\": 7}", "strength"),
        ] {
            expect(
                ap_from_pipe(pipe.0, 1, text.as_ptr(), &mut out),
                AP_ERR_INVALID_ARGUMENT,
                mentions,
            );
            assert!(out.is_null());
        }
        expect(ap_from_pipe(pipe.0, 1, c"{}".as_ptr(), &mut out), AP_OK, "");
        ap_pipeline_free(out);
        let fine = c"{\"requires_safety_checker\": true, \"strength\": 0.3}";
        expect(ap_from_pipe(pipe.0, 1, fine.as_ptr(), &mut out), AP_OK, "");
        ap_pipeline_free(out);
    }
}

#[test]
fn run_arguments() {
    let pipe = Pipe::load();
    let params = small_run();
    let mut out: *mut ap_images = std::ptr::NonNull::dangling().as_ptr();
    unsafe {
        expect(
            ap_run(pipe.0, &params, null_mut()),
            AP_ERR_INVALID_ARGUMENT,
            "out",
        );
        expect(ap_run(null(), &params, &mut out), AP_ERR_INVALID_ARGUMENT, "pipe");
        assert!(out.is_null());
        expect(
            ap_run(pipe.0, null(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "params",
        );
    }
    for size in [0u32, 4, 8, u32::MAX] {
        let mut p = small_run();
        p.struct_size = size;
        expect(run(&pipe, &p), AP_ERR_INVALID_ARGUMENT, "struct_size");
    }
    // Custom timesteps / sigmas: NULL with a count, and values that are not finite, are refused
    // before the run starts.
    let values = [999.0, f64::NAN];
    type SetList = fn(&mut ap_run_params, *const f64, u32);
    let lists: [(SetList, &str); 2] = [
        (|p, v, n| (p.timesteps, p.num_timesteps) = (v, n), "timesteps"),
        (|p, v, n| (p.sigmas, p.num_sigmas) = (v, n), "sigmas"),
    ];
    for (set, name) in lists {
        let mut p = small_run();
        set(&mut p, null(), 3);
        expect(
            run(&pipe, &p),
            AP_ERR_INVALID_ARGUMENT,
            &format!("{name} is NULL"),
        );
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let values = [999.0, bad];
            set(&mut p, values.as_ptr(), 2);
            expect(run(&pipe, &p), AP_ERR_INVALID_ARGUMENT, &format!("{name}[1]"));
        }
        // A count of 0 means "none", whatever the pointer.
        set(&mut p, values.as_ptr(), 0);
        expect(run(&pipe, &p), AP_OK, "");
    }
    let mut p = small_run();
    p.prompt = null();
    expect(run(&pipe, &p), AP_ERR_INVALID_ARGUMENT, "prompt");
    let strings: [fn(&mut ap_run_params, *const c_char); 4] = [
        |p, s| p.prompt = s,
        |p, s| p.negative_prompt = s,
        |p, s| p.prompt_2 = s,
        |p, s| p.negative_prompt_2 = s,
    ];
    for set in strings {
        let mut p = small_run();
        set(&mut p, invalid_utf8());
        expect(run(&pipe, &p), AP_ERR_INVALID_ARGUMENT, "UTF-8");
    }

    // Integers: negative, not a multiple of 8, beyond every limit.
    let ints: [(&str, SetInt); 7] = [
        ("width", |p, v| p.width = v),
        ("height", |p, v| p.height = v),
        ("num_inference_steps", |p, v| p.num_inference_steps = v),
        ("num_images_per_prompt", |p, v| p.num_images_per_prompt = v),
        ("clip_skip", |p, v| p.clip_skip = v),
        ("output_channels", |p, v| p.output_channels = v),
        ("padding_mask_crop", |p, v| p.padding_mask_crop = v),
    ];
    for (name, set) in ints {
        for v in [-1, i32::MIN, i32::MAX, 7, 100_000] {
            let mut p = small_run();
            set(&mut p, v);
            let status = run(&pipe, &p);
            let msg = last_error();
            match (name, v) {
                // Workable values: 7 steps or images run.
                ("num_inference_steps" | "num_images_per_prompt", 7) => {
                    assert_eq!(status, AP_OK, "{name}={v}: {msg}")
                }
                // Outside inpainting a crop may be ignored or refused, but not crash.
                ("padding_mask_crop", v) if v > 0 => {
                    assert!(
                        status == AP_OK || status == AP_ERR_INVALID_ARGUMENT,
                        "{name}={v}: {msg}"
                    )
                }
                _ => assert_eq!(status, AP_ERR_INVALID_ARGUMENT, "{name}={v}: {msg}"),
            }
        }
    }

    // Floats: NaN and infinities are refused; out-of-range values too.
    let floats: [(&str, SetFloat); 3] = [
        ("guidance_scale", |p, v| p.guidance_scale = v),
        ("strength", |p, v| p.strength = v),
        ("guidance_rescale", |p, v| p.guidance_rescale = v),
    ];
    for (name, set) in floats {
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut p = small_run();
            set(&mut p, v);
            expect(run(&pipe, &p), AP_ERR_INVALID_ARGUMENT, name);
        }
    }
    let mut p = small_run();
    p.guidance_rescale = 2.0;
    expect(run(&pipe, &p), AP_ERR_INVALID_ARGUMENT, "guidance_rescale");
    let mut p = small_run();
    p.guidance_scale = f32::MAX; // finite: runs (diffusers would too), whatever the pixels
    expect(run(&pipe, &p), AP_OK, "");
    let mut p = small_run();
    p.seed = u64::MAX;
    expect(run(&pipe, &p), AP_OK, "");
}

/// The caller's `scheduler_config_json` is the caller's argument: a bad value in it is
/// `AP_ERR_INVALID_ARGUMENT` naming the key, whichever scheduler checks it and whenever (switch time or
/// `set_timesteps`). `AP_ERR_INVALID_MODEL` is for the checkpoint's own files only.
#[test]
fn bad_scheduler_config_values_are_argument_errors() {
    let pipe = Pipe::load();
    let cases: &[(Option<&std::ffi::CStr>, &std::ffi::CStr, &str)] = &[
        (None, c"{\"beta_schedule\": \"bogus\"}", "beta_schedule"),
        (
            Some(c"DDIMScheduler"),
            c"{\"beta_schedule\": \"bogus\"}",
            "beta_schedule",
        ),
        (None, c"{\"timestep_spacing\": \"bogus\"}", "timestep_spacing"),
        (
            Some(c"EulerDiscreteScheduler"),
            c"{\"timestep_spacing\": \"bogus\"}",
            "timestep_spacing",
        ),
        (None, c"{\"steps_offset\": 999}", "steps_offset"),
        (Some(c"DDIMScheduler"), c"{\"steps_offset\": 999}", "steps_offset"),
        (
            Some(c"EulerDiscreteScheduler"),
            c"{\"final_sigmas_type\": \"bogus\"}",
            "final_sigmas_type",
        ),
        (
            Some(c"DPMSolverMultistepScheduler"),
            c"{\"final_sigmas_type\": \"bogus\"}",
            "final_sigmas_type",
        ),
        (
            Some(c"UniPCMultistepScheduler"),
            c"{\"final_sigmas_type\": \"bogus\"}",
            "final_sigmas_type",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, json, key) in cases {
        let mut params = small_run();
        params.num_inference_steps = 2;
        params.scheduler = name.map_or(null(), |n| n.as_ptr());
        params.scheduler_config_json = json.as_ptr();
        let status = run(&pipe, &params);
        let msg = last_error();
        if status != AP_ERR_INVALID_ARGUMENT || !msg.contains(key) {
            wrong.push(format!("{name:?} {json:?}: status {status}, message {msg}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    expect(run(&pipe, &small_run()), AP_OK, "");
}

#[test]
fn runs_that_cannot_fit_in_memory_are_refused_up_front() {
    let pipe = Pipe::load();
    let mut p = small_run();
    p.width = 8192;
    p.height = 8192;
    p.num_images_per_prompt = 64;
    expect(run(&pipe, &p), AP_ERR_INVALID_ARGUMENT, "memory");
}

#[test]
fn input_images() {
    let pipe = Pipe::load();
    let mut img2img = null_mut();
    unsafe {
        expect(
            ap_from_pipe(pipe.0, AP_TASK_IMAGE2IMAGE, null(), &mut img2img),
            AP_OK,
            "",
        )
    };
    let img2img = Pipe(img2img);
    let mut pixels = vec![128u8; 64 * 64 * 4];
    let good = ap_image {
        width: 64,
        height: 64,
        channels: 4,
        stride: 256,
        data: pixels.as_mut_ptr(),
    };
    let mut p = small_run();
    p.image = &good;
    p.strength = 1.0;
    expect(run(&img2img, &p), AP_OK, "");

    let bad_images = [
        (
            ap_image {
                data: null_mut(),
                ..good
            },
            "data",
        ),
        (ap_image { width: 0, ..good }, "width"),
        (ap_image { height: 0, ..good }, "width"),
        (ap_image { channels: 2, ..good }, "channels"),
        (ap_image { channels: 0, ..good }, "channels"),
        (ap_image { stride: 255, ..good }, "stride"),
        (
            ap_image {
                width: 100_000,
                ..good
            },
            "pixels per side",
        ),
        (
            ap_image {
                height: u32::MAX,
                ..good
            },
            "pixels per side",
        ),
    ];
    for (img, mention) in bad_images {
        let mut p = small_run();
        p.image = &img;
        expect(run(&img2img, &p), AP_ERR_INVALID_ARGUMENT, mention);
        let mut q = small_run();
        q.mask = &img;
        expect(run(&img2img, &q), AP_ERR_INVALID_ARGUMENT, mention);
    }
    // img2img without an image.
    expect(run(&img2img, &small_run()), AP_ERR_INVALID_ARGUMENT, "image");
    // A padded stride reads only each row's pixels.
    let mut padded = vec![7u8; 64 * 300];
    let strided = ap_image {
        width: 64,
        height: 64,
        channels: 4,
        stride: 300,
        data: padded.as_mut_ptr(),
    };
    let mut p = small_run();
    p.image = &strided;
    p.strength = 1.0;
    expect(run(&img2img, &p), AP_OK, "");
}

extern "C" fn cancel_now(_: u32, _: u32, _: *mut c_void) -> i32 {
    0
}

#[test]
fn calls_after_failed_and_cancelled_runs() {
    let pipe = Pipe::load();
    let mut p = small_run();
    p.progress = Some(cancel_now);
    expect(run(&pipe, &p), AP_ERR_CANCELLED, "cancel");
    let mut bad = small_run();
    bad.width = 12;
    expect(run(&pipe, &bad), AP_ERR_INVALID_ARGUMENT, "divisible by 8");
    expect(run(&pipe, &small_run()), AP_OK, "");
    assert_eq!(last_error(), "", "success clears the message");
    let mut out = null_mut();
    unsafe { expect(ap_from_pipe(pipe.0, AP_TASK_INPAINT, null(), &mut out), AP_OK, "") };
    let inpaint = Pipe(out);
    expect(run(&inpaint, &small_run()), AP_ERR_INVALID_ARGUMENT, "image");
    expect(run(&pipe, &small_run()), AP_OK, "");
}

#[test]
fn image_files() {
    /// Removes the folder even when an assertion fails.
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::env::temp_dir().join(format!("ap-ffi-images-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| CString::new(dir.join(name).to_str().unwrap()).unwrap();
    let mut out: *mut ap_image = std::ptr::NonNull::dangling().as_ptr();
    unsafe {
        expect(ap_image_load(null(), &mut out), AP_ERR_INVALID_ARGUMENT, "path");
        assert!(out.is_null());
        expect(
            ap_image_load(path("x.png").as_ptr(), null_mut()),
            AP_ERR_INVALID_ARGUMENT,
            "out",
        );
        expect(
            ap_image_load(invalid_utf8(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "UTF-8",
        );
        expect(
            ap_image_load(path("missing.png").as_ptr(), &mut out),
            AP_ERR_NOT_FOUND,
            "missing.png",
        );

        // Garbage, truncated, and a PNG header claiming 2^31 x 2^31 pixels.
        std::fs::write(dir.join("garbage.png"), b"not an image at all").unwrap();
        expect(
            ap_image_load(path("garbage.png").as_ptr(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "garbage.png",
        );
        let real = std::fs::read(common::data_dir().join("cases/sd15-t2i-cfg-neg/output.png")).unwrap();
        std::fs::write(dir.join("cut.png"), &real[..real.len() / 2]).unwrap();
        expect(
            ap_image_load(path("cut.png").as_ptr(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "cut.png",
        );
        let mut bomb = real[..33].to_vec(); // signature + IHDR
        bomb[16..20].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
        bomb[20..24].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
        std::fs::write(dir.join("bomb.png"), &bomb).unwrap();
        expect(
            ap_image_load(path("bomb.png").as_ptr(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "bomb.png",
        );
        std::fs::write(dir.join("empty.png"), b"").unwrap();
        expect(
            ap_image_load(path("empty.png").as_ptr(), &mut out),
            AP_ERR_INVALID_ARGUMENT,
            "empty.png",
        );
        assert!(out.is_null());

        // A real one loads, saves, and frees.
        std::fs::write(dir.join("real.jpg"), &real).unwrap(); // a PNG under a .jpg name
        expect(ap_image_load(path("real.jpg").as_ptr(), &mut out), AP_OK, "");
        assert_eq!(((*out).width, (*out).height, (*out).channels), (64, 64, 3));
        expect(ap_image_save_png(out, path("copy.png").as_ptr()), AP_OK, "");
        expect(ap_image_save_png(out, null()), AP_ERR_INVALID_ARGUMENT, "path");
        expect(
            ap_image_save_png(null(), path("y.png").as_ptr()),
            AP_ERR_INVALID_ARGUMENT,
            "image",
        );
        expect(
            ap_image_save_png(out, invalid_utf8()),
            AP_ERR_INVALID_ARGUMENT,
            "UTF-8",
        );
        let into_dir = CString::new(dir.to_str().unwrap()).unwrap();
        let status = ap_image_save_png(out, into_dir.as_ptr());
        assert_ne!(status, AP_OK);
        let bad = ap_image { stride: 1, ..*out };
        expect(
            ap_image_save_png(&bad, path("z.png").as_ptr()),
            AP_ERR_INVALID_ARGUMENT,
            "stride",
        );
        ap_image_free(out);
    }
}

/// A 64x64 RGB image with varied pixels (so its PNG does not compress to a few bytes).
fn noise_image(data: &mut [u8]) -> ap_image {
    for (i, v) in data.iter_mut().enumerate() {
        *v = (i.wrapping_mul(2_654_435_761) >> 7) as u8;
    }
    ap_image {
        width: 64,
        height: 64,
        channels: 3,
        stride: 0,
        data: data.as_mut_ptr(),
    }
}

/// Set in the child process `image_save_failures` starts to save under a file-size limit.
const SAVE_CHILD: &str = "AP_TEST_SAVE_UNDER_FSIZE_LIMIT";

#[test]
fn image_save_failures() {
    let mut pixels = vec![0u8; 64 * 64 * 3];
    let img = noise_image(&mut pixels);
    if let Ok(target) = std::env::var(SAVE_CHILD) {
        // The child: writes past 4 KiB fail with EFBIG (SIGXFSZ ignored), even for root.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: 4096,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
        }
        let c = CString::new(target.clone()).unwrap();
        expect(unsafe { ap_image_save_png(&img, c.as_ptr()) }, AP_ERR_IO, &target);
        return;
    }
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::set_permissions(&self.0, std::os::unix::fs::PermissionsExt::from_mode(0o755));
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::env::temp_dir().join(format!("ap-ffi-save-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    let cpath = |p: &std::path::Path| CString::new(p.to_str().unwrap()).unwrap();
    let leftovers = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect::<Vec<_>>()
    };

    // A device that is full: the ENOSPC comes back, naming the path.
    if std::path::Path::new("/dev/full").exists() {
        expect(
            unsafe { ap_image_save_png(&img, c"/dev/full".as_ptr()) },
            AP_ERR_IO,
            "/dev/full",
        );
        // A tiny one too: its whole PNG fits in one buffered write, whose error used to be dropped.
        let mut px = [0u8; 3];
        let tiny = ap_image {
            width: 1,
            height: 1,
            channels: 3,
            stride: 0,
            data: px.as_mut_ptr(),
        };
        expect(
            unsafe { ap_image_save_png(&tiny, c"/dev/full".as_ptr()) },
            AP_ERR_IO,
            "/dev/full",
        );
    }

    // A normal save, then an overwrite of it, work and leave no temporary file.
    let good = dir.join("good.png");
    expect(
        unsafe { ap_image_save_png(&img, cpath(&good).as_ptr()) },
        AP_OK,
        "",
    );
    expect(
        unsafe { ap_image_save_png(&img, cpath(&good).as_ptr()) },
        AP_OK,
        "",
    );
    let mut back: *mut ap_image = null_mut();
    expect(
        unsafe { ap_image_load(cpath(&good).as_ptr(), &mut back) },
        AP_OK,
        "",
    );
    let read = unsafe { std::slice::from_raw_parts((*back).data, pixels.len()) };
    assert_eq!(read, &pixels[..]);
    unsafe { ap_image_free(back) };
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));

    // A write that fails part-way (the file-size limit, in a child process) leaves the existing file
    // as it was.
    let kept = dir.join("kept.png");
    std::fs::write(&kept, b"the old content").unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "image_save_failures",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SAVE_CHILD, &kept)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&kept).unwrap(), b"the old content");
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));

    // A read-only folder: the save fails and the existing file is intact (root may write anyway, so
    // this part checks only where the folder really refuses writes).
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let old = ro.join("old.png");
    std::fs::write(&old, b"keep me").unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), b"").is_err() {
        expect(
            unsafe { ap_image_save_png(&img, cpath(&old).as_ptr()) },
            AP_ERR_IO,
            old.to_str().unwrap(),
        );
        assert_eq!(std::fs::read(&old).unwrap(), b"keep me");
    }
}

#[test]
fn job_entry_points() {
    let pipe = Pipe::load();
    let params = small_run();
    let mut job: *mut ap_job = std::ptr::NonNull::dangling().as_ptr();
    let mut status = ap_job_status_default();
    unsafe {
        // NULL everywhere.
        ap_job_free(null_mut());
        expect(ap_job_poll(null(), &mut status), AP_ERR_INVALID_ARGUMENT, "job");
        expect(ap_job_wait(null(), 0), AP_ERR_INVALID_ARGUMENT, "job");
        expect(ap_job_cancel(null()), AP_ERR_INVALID_ARGUMENT, "job");
        let mut images = null_mut();
        expect(
            ap_job_take_result(null(), &mut images),
            AP_ERR_INVALID_ARGUMENT,
            "job",
        );
        let mut loaded = null_mut();
        expect(
            ap_job_take_pipeline(null(), &mut loaded),
            AP_ERR_INVALID_ARGUMENT,
            "job",
        );
        expect(
            ap_pipeline_set_log_callback(null_mut(), None, null_mut(), 0),
            AP_ERR_INVALID_ARGUMENT,
            "pipe",
        );
        expect(
            ap_run_async(null(), &params, &mut job),
            AP_ERR_INVALID_ARGUMENT,
            "pipe",
        );
        assert!(job.is_null());
        expect(
            ap_run_async(pipe.0, null(), &mut job),
            AP_ERR_INVALID_ARGUMENT,
            "params",
        );
        expect(
            ap_run_async(pipe.0, &params, null_mut()),
            AP_ERR_INVALID_ARGUMENT,
            "out",
        );
        let mut bad = small_run();
        bad.struct_size = 3;
        expect(
            ap_run_async(pipe.0, &bad, &mut job),
            AP_ERR_INVALID_ARGUMENT,
            "struct_size",
        );
        bad = small_run();
        bad.prompt = invalid_utf8();
        expect(
            ap_run_async(pipe.0, &bad, &mut job),
            AP_ERR_INVALID_ARGUMENT,
            "UTF-8",
        );
        expect(
            ap_from_pretrained_async(null(), 0, null(), &mut job),
            AP_ERR_INVALID_ARGUMENT,
            "model",
        );
        expect(
            ap_from_pretrained_async(sd15().as_ptr(), 42, null(), &mut job),
            AP_ERR_INVALID_ARGUMENT,
            "task",
        );
        let mut load = ap_load_params_default();
        load.struct_size = 0;
        expect(
            ap_from_pretrained_async(sd15().as_ptr(), 0, &load, &mut job),
            AP_ERR_INVALID_ARGUMENT,
            "struct_size",
        );

        // A job whose run fails: the failure comes back from the job, and the pipeline still works.
        let mut failing = small_run();
        failing.width = 12;
        let status_code = ap_run_async(pipe.0, &failing, &mut job);
        if status_code == AP_OK {
            let _ = ap_job_wait(job, -1);
            expect(ap_job_poll(job, null_mut()), AP_ERR_INVALID_ARGUMENT, "status");
            let mut wrong = ap_job_status_default();
            wrong.struct_size = 1;
            expect(
                ap_job_poll(job, &mut wrong),
                AP_ERR_INVALID_ARGUMENT,
                "struct_size",
            );
            let mut images = std::ptr::NonNull::dangling().as_ptr();
            let taken = ap_job_take_result(job, &mut images);
            assert_eq!(taken, AP_ERR_INVALID_ARGUMENT, "{}", last_error());
            assert!(last_error().contains("divisible by 8"), "{}", last_error());
            assert!(images.is_null());
            let mut loaded = std::ptr::NonNull::dangling().as_ptr();
            assert_ne!(
                ap_job_take_pipeline(job, &mut loaded),
                AP_OK,
                "a run job holds no pipeline"
            );
            ap_job_free(job);
        } else {
            expect(status_code, AP_ERR_INVALID_ARGUMENT, "divisible by 8");
        }
    }
    expect(run(&pipe, &small_run()), AP_OK, "");
}

/// Takes a JSON string handed out by the library, freeing it.
fn take_json(status: ap_status, s: *mut c_char) -> serde_json::Value {
    expect(status, AP_OK, "");
    assert!(!s.is_null());
    let text = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
    unsafe { ap_string_free(s) };
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn introspection_as_json() {
    let pipe = Pipe::load();
    let mut s: *mut c_char = std::ptr::NonNull::dangling().as_ptr();
    let info = take_json(unsafe { ap_pipeline_info(pipe.0, &mut s) }, s);
    assert_eq!(info["family"], "stable-diffusion");
    assert_eq!(info["class_name"], "StableDiffusionPipeline");
    assert_eq!(info["task"], "text2img");
    assert_eq!((&info["device"], &info["dtype"]), (&"cpu".into(), &"f32".into()));
    assert_eq!(info["scheduler"], "PNDMScheduler");
    assert_eq!(info["latent_channels"], 4);
    let names: Vec<_> = info["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["class"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("text_encoder", "CLIPTextModel"),
            ("tokenizer", "CLIPTokenizer"),
            ("unet", "UNet2DConditionModel"),
            ("vae", "AutoencoderKL"),
            ("scheduler", "PNDMScheduler")
        ]
    );
    // Models carry the size of their weight files; tokenizers and the scheduler none.
    let unet_file = common::data_dir().join("checkpoints/sd15-tiny/unet/diffusion_pytorch_model.safetensors");
    assert_eq!(
        info["components"][2]["bytes"].as_u64().unwrap(),
        std::fs::metadata(unet_file).unwrap().len()
    );
    assert!(info["components"][1]["bytes"].is_null());
    // diffusers' StableDiffusionPipeline.__call__ defaults.
    assert_eq!(info["default_steps"], 50);
    assert_eq!(info["default_guidance_scale"], 7.5);
    // The default size is what a run that leaves the size at 0 produces.
    let mut params = small_run();
    (params.width, params.height) = (0, 0);
    let mut out = null_mut();
    expect(unsafe { ap_run(pipe.0, &params, &mut out) }, AP_OK, "");
    let img = unsafe { *(*out).images };
    assert_eq!(
        (img.width as u64, img.height as u64),
        (
            info["default_width"].as_u64().unwrap(),
            info["default_height"].as_u64().unwrap()
        )
    );
    unsafe { ap_images_free(out) };

    // The config, and after from_pipe with an override.
    let config = take_json(unsafe { ap_pipeline_config_json(pipe.0, &mut s) }, s);
    assert_eq!(config["requires_safety_checker"], false);
    assert!(
        config["_name_or_path"].as_str().unwrap().ends_with("sd15-tiny"),
        "{config}"
    );
    let mut i2i = null_mut();
    let overrides = cr#"{"requires_safety_checker": true}"#;
    expect(
        unsafe { ap_from_pipe(pipe.0, AP_TASK_IMAGE2IMAGE, overrides.as_ptr(), &mut i2i) },
        AP_OK,
        "",
    );
    let config = take_json(unsafe { ap_pipeline_config_json(i2i, &mut s) }, s);
    assert_eq!(config["requires_safety_checker"], true);
    let info = take_json(unsafe { ap_pipeline_info(i2i, &mut s) }, s);
    assert_eq!(
        (&info["class_name"], &info["task"]),
        (&"StableDiffusionImg2ImgPipeline".into(), &"img2img".into())
    );
    unsafe { ap_pipeline_free(i2i) };

    let families = take_json(unsafe { ap_supported_families(&mut s) }, s);
    let families = families.as_array().unwrap();
    let xl = families
        .iter()
        .find(|f| f["family"] == "stable-diffusion-xl")
        .unwrap();
    assert_eq!(xl["status"], "supported");
    assert_eq!(xl["inpaint"], "StableDiffusionXLInpaintPipeline");
    assert!(families.iter().any(|f| f["status"] == "not supported yet"));

    // NULLs: an error and a NULL result; the free function accepts NULL.
    unsafe {
        expect(ap_pipeline_info(null(), &mut s), AP_ERR_INVALID_ARGUMENT, "pipe");
        assert!(s.is_null());
        expect(
            ap_pipeline_info(pipe.0, null_mut()),
            AP_ERR_INVALID_ARGUMENT,
            "out",
        );
        expect(
            ap_pipeline_config_json(null(), &mut s),
            AP_ERR_INVALID_ARGUMENT,
            "pipe",
        );
        expect(ap_supported_families(null_mut()), AP_ERR_INVALID_ARGUMENT, "out");
        ap_string_free(null_mut());
    }
}
