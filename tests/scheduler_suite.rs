//! Every scheduler class against real diffusers 0.42.1 (`tests/data/schedulers_suite`, written by its
//! `make.py`): each case is `Cls.from_config(<checkpoint's scheduler>.config, **overrides)` there and
//! `schedulers::select(<checkpoint's config>, class, overrides)` here. Timesteps must match exactly,
//! sigmas and trajectories (fixed fake model outputs, the step generator seeded) to 1e-6 relative.
//! The end-to-end test runs sd15-tiny and sdxl-tiny with a scheduler switched at run time against diffusers'
//! images.

mod common;

use autopipeline::rng::{Generator, TorchCpuGenerator};
use autopipeline::schedulers::{build, class_keys, select, strength_start, Scheduler, SchedulerConfig};
use autopipeline::{Error, Image, Pipeline, RunParams, Task};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::PathBuf;

fn suite() -> PathBuf {
    common::data_dir().join("schedulers_suite")
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn base_config(ckpt: &str) -> SchedulerConfig {
    let path = common::data_dir()
        .join(ckpt)
        .join("scheduler/scheduler_config.json");
    SchedulerConfig::from_json(&std::fs::read_to_string(&path).unwrap(), "test").unwrap()
}

fn cases() -> Vec<Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(suite().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    names.into_iter().map(json).collect()
}

fn scheduler_for(case: &Value) -> Box<dyn Scheduler> {
    let base = base_config(case["base"].as_str().unwrap());
    let cfg = select(&base, case["class"].as_str(), Some(&case["overrides"]))
        .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    build(&cfg).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// Runs `check` on every case and reports all failures together.
fn for_each_case(what: &str, check: impl Fn(&Value) -> Result<(), String>) {
    let all = cases();
    assert!(
        all.len() >= 35,
        "expected the whole suite, found {} cases",
        all.len()
    );
    let failures: Vec<String> = all
        .iter()
        .filter_map(|c| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(c)));
            match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{}: {e}", c["name"])),
                Err(p) => Some(format!(
                    "{}: panicked: {}",
                    c["name"],
                    p.downcast_ref::<String>().cloned().unwrap_or_default()
                )),
            }
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{what}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Timesteps: exact where both are integers (every spaced or rounded schedule). Fractional ones
/// (`_sigma_to_t` of an unrounded Karras / exponential schedule, KDPM2's interpolated steps) divide by
/// the small log-sigma gap between neighbouring training steps, so one ulp upstream moves them by up to
/// ~1e-4 (out of 1000). The log-sigmas themselves are numpy's bit for bit (`schedulers::numpy_log`);
/// what remains is numpy's float64 `power`/`exp` (SVML on AVX-512, ~5% of values one ulp from libm's)
/// building the Karras / exponential sigmas, and torch's vectorised float32 `log` in KDPM2. Worst
/// measured: 1.2e-4 (kdpm2-a-karras-leading); no image moves measurably (the end-to-end KDPM2 runs
/// below match to ~5e-6).
const FRACTIONAL_TIMESTEP_TOL: f64 = 2e-4;

fn same_timesteps(got: &[f64], want: &[f64]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            g == w || ((w.fract() != 0.0 || g.fract() != 0.0) && (g - w).abs() <= FRACTIONAL_TIMESTEP_TOL)
        })
}

fn close_rel(got: f64, want: f64, rel: f64) -> bool {
    (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() <= rel * want.abs()
}

#[test]
fn set_timesteps_matches_diffusers() {
    for_each_case("set_timesteps", |case| {
        for (n, want) in case["set_timesteps"].as_object().unwrap() {
            let mut s = scheduler_for(case);
            let r = s.set_timesteps(n.parse().unwrap());
            if want.get("error").is_some() {
                if r.is_ok() {
                    return Err(format!(
                        "n={n}: diffusers fails ({}) but we did not",
                        want["error"]
                    ));
                }
                continue;
            }
            r.map_err(|e| format!("n={n}: {e}"))?;
            let wt = f64s(&want["timesteps"]);
            if !same_timesteps(s.timesteps(), &wt) {
                return Err(format!("n={n}: timesteps {:?} != {wt:?}", s.timesteps()));
            }
            let ins = want["init_noise_sigma"].as_f64().unwrap();
            if !close_rel(s.init_noise_sigma(), ins, 1e-6) {
                return Err(format!(
                    "n={n}: init_noise_sigma {} != {ins}",
                    s.init_noise_sigma()
                ));
            }
            if s.order() as u64 != case["order"].as_u64().unwrap() {
                return Err(format!("order {} != {}", s.order(), case["order"]));
            }
            if let Some(sig) = want.get("sigmas") {
                let got = s.sigmas().ok_or("no sigmas")?;
                let want = f64s(sig);
                if got.len() != want.len() {
                    return Err(format!(
                        "n={n}: {} sigmas, diffusers has {}",
                        got.len(),
                        want.len()
                    ));
                }
                for (g, w) in got.iter().zip(&want) {
                    if !close_rel(*g as f64, *w, 1e-6) {
                        return Err(format!("n={n}: sigmas {got:?} != {want:?}"));
                    }
                }
            }
        }
        Ok(())
    });
}

#[test]
fn img2img_truncation_matches_diffusers() {
    for_each_case("img2img", |case| {
        for want in case["img2img"].as_array().unwrap() {
            let n = want["num_inference_steps"].as_u64().unwrap() as usize;
            let strength = want["strength"].as_f64().unwrap();
            let mut s = scheduler_for(case);
            s.set_timesteps(n).unwrap();
            let (start, steps) = strength_start(n, strength, s.order());
            let wt = f64s(&want["timesteps"]);
            if !same_timesteps(&s.timesteps()[start..], &wt) {
                return Err(format!("{n}@{strength}: {:?} != {wt:?}", &s.timesteps()[start..]));
            }
            if steps as u64 != want["effective_steps"].as_u64().unwrap() {
                return Err(format!("{n}@{strength}: {steps} effective steps"));
            }
            if let Some(b) = want["begin_index"].as_u64() {
                if b as usize != start {
                    return Err(format!("{n}@{strength}: begin index {start} != {b}"));
                }
            }
        }
        Ok(())
    });
}

/// `|a - b|` relative to the reference's magnitude when it exceeds 1 (sigmas of a few thousand make
/// latents of that size).
/// NaN where diffusers has NaN counts as equal (UniPC bh1 at a zero final sigma produces it).
fn scaled_diff(a: &Tensor, want: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), w.len());
    let m = w
        .iter()
        .filter(|v| v.is_finite())
        .fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&w)
        .map(|(x, y)| {
            if (x.is_nan() && y.is_nan()) || x == y {
                0.0
            } else {
                (x - y).abs()
            }
        })
        .fold(0f32, |acc, d| {
            if d.is_nan() || acc.is_nan() {
                f32::NAN
            } else {
                acc.max(d)
            }
        })
        / m
}

/// Largest trajectory difference (relative to the reference's magnitude, see [`scaled_diff`]); the
/// worst case measured is 9.3e-7 (DPM-Solver++ 2M heun, float32 rounding of its coefficients).
const TRAJECTORY_TOL: f32 = 1e-6;

/// Replays one recorded trajectory; returns the largest difference seen.
fn replay(case: &Value, kind: &str, rows: &Tensor) -> Result<f32, String> {
    let traj = &case["trajectories"][kind];
    let row = |v: &Value| rows.get(v.as_u64().unwrap() as usize).unwrap();
    let mut s = scheduler_for(case);
    s.set_timesteps(6).unwrap();
    let ts = f64s(&traj["timesteps"]);
    let mut x = row(&traj["x_init"]);
    if kind == "i2i" {
        let start = s.timesteps().len() - ts.len();
        s.set_begin_index(start);
        let noisy = s
            .add_noise(&row(&traj["clean"]), &row(&traj["noise"]), ts[0])
            .map_err(|e| e.to_string())?;
        let d = scaled_diff(&noisy, &x);
        if d > TRAJECTORY_TOL {
            return Err(format!("{kind}: initial add_noise differs by {d}"));
        }
    } else if (s.init_noise_sigma() - 1.0).abs() > 0.0 {
        // x_init already holds randn · init_noise_sigma; nothing to redo.
    }
    let mut worst = 0f32;
    let mut rng: Generator = TorchCpuGenerator::new(5).into();
    for (i, (&t, st)) in ts.iter().zip(traj["steps"].as_array().unwrap()).enumerate() {
        let xin = s.scale_model_input(&x, t).map_err(|e| e.to_string())?;
        let d = scaled_diff(&xin, &row(&st["scaled"]));
        worst = worst.max(d);
        if d > TRAJECTORY_TOL {
            return Err(format!("{kind} step {i} (t={t}): scaled input differs by {d}"));
        }
        x = s
            .step(&row(&st["model_output"]), t, &x, &mut rng)
            .map_err(|e| format!("{kind} step {i}: {e}"))?;
        let want = row(&st["prev"]);
        let d = scaled_diff(&x, &want);
        worst = worst.max(d);
        if d.is_nan() || d > TRAJECTORY_TOL {
            return Err(format!("{kind} step {i} (t={t}): prev sample differs by {d}"));
        }
        // Continue from diffusers' sample so one early ulp does not snowball.
        x = want;
        if let Some(an) = st.get("add_noise_next") {
            let got = s
                .add_noise(&row(&traj["clean"]), &row(&traj["noise"]), ts[i + 1])
                .map_err(|e| e.to_string())?;
            let d = scaled_diff(&got, &row(an));
            worst = worst.max(d);
            if d > TRAJECTORY_TOL {
                return Err(format!(
                    "{kind} step {i}: add_noise at the next timestep differs by {d}"
                ));
            }
        }
    }
    Ok(worst)
}

#[test]
fn trajectories_match_diffusers() {
    for_each_case("trajectories", |case| {
        let (shape, data) = common::read_npy(&suite().join("cases").join(case["arrays"].as_str().unwrap()));
        let rows = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
        for kind in ["t2i", "i2i"] {
            replay(case, kind, &rows)?;
        }
        Ok(())
    });
}

#[test]
fn class_keys_match_diffusers_signatures() {
    let want = json(suite().join("class_keys.json"));
    for (class, entry) in want.as_object().unwrap() {
        let ours = class_keys(class).unwrap_or_else(|| panic!("{class} unknown"));
        let theirs = entry["keys"].as_object().unwrap();
        let our_names: Vec<&str> = ours.iter().map(|(k, _)| *k).collect();
        let mut their_names: Vec<&str> = theirs.keys().map(String::as_str).collect();
        their_names.sort();
        assert_eq!(our_names, their_names, "{class} keys");
        for (k, v) in &ours {
            let t = &theirs[*k];
            let same = v == t || (v.as_f64().is_some() && v.as_f64() == t.as_f64());
            assert!(same, "{class}.{k}: default {v} != diffusers' {t}");
        }
    }
}

#[test]
fn from_config_semantics() {
    let sd15 = base_config("checkpoints/sd15-tiny");
    // Keys the checkpoint's file has carry over; keys it lacks take the new class's defaults.
    let dpm = select(&sd15, Some("dpm++2m_karras"), None).unwrap();
    assert_eq!(dpm.class_name, "DPMSolverMultistepScheduler");
    assert!(dpm.use_karras_sigmas);
    assert_eq!(dpm.beta_schedule, "scaled_linear");
    assert_eq!(dpm.timestep_spacing, "leading");
    assert_eq!(dpm.steps_offset, 1);
    assert_eq!(dpm.solver_order, 2);
    assert!(dpm.lower_order_final);
    // User overrides win over the alias's.
    let sde = select(
        &sd15,
        Some("DPM++ 2M SDE Karras"),
        Some(&serde_json::json!({"use_karras_sigmas": false})),
    )
    .unwrap();
    assert_eq!(sde.algorithm_type, "sde-dpmsolver++");
    assert!(!sde.use_karras_sigmas);
    // Overrides alone keep the checkpoint's class.
    let pndm = select(
        &sd15,
        None,
        Some(&serde_json::json!({"timestep_spacing": "trailing"})),
    )
    .unwrap();
    assert_eq!(pndm.class_name, "PNDMScheduler");
    assert_eq!(pndm.timestep_spacing, "trailing");
    // Going from DDIM (which takes clip_sample) keeps the file's value; PNDM's file lacks it → DDIM default.
    let sd2 = base_config("checkpoints/sd2-tiny");
    assert!(!select(&sd2, Some("ddpm"), None).unwrap().clip_sample);
    assert!(select(&sd15, Some("ddim"), None).unwrap().clip_sample);
}

#[test]
fn unknown_names_and_keys_are_argument_errors_listing_the_valid_ones() {
    let sd15 = base_config("checkpoints/sd15-tiny");
    let e = select(&sd15, Some("FancyScheduler"), None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("DPMSolverMultistepScheduler") && m.contains("euler_a") && m.contains("dpm++2m_karras"),
        "{m}"
    );
    let e = select(
        &sd15,
        Some("euler"),
        Some(&serde_json::json!({"use_karras": true})),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert!(e.to_string().contains("use_karras_sigmas"), "{e}");
    let e = select(
        &sd15,
        Some("euler"),
        Some(&serde_json::json!({"use_karras_sigmas": "yes"})),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = select(
        &sd15,
        Some("dpm++2m"),
        Some(&serde_json::json!({"solver_order": 7})),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = select(&sd15, None, Some(&serde_json::json!([1, 2]))).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    // The checkpoint's own unknown keys are ignored, as diffusers does.
    let text =
        r#"{"_class_name": "EulerDiscreteScheduler", "some_future_key": 3, "lambda_min_clipped": -Infinity}"#;
    assert!(SchedulerConfig::from_json(text, "test").is_ok());
}

#[test]
fn singlestep_and_deis_names_and_option_checks() {
    let sd15 = base_config("checkpoints/sd15-tiny");
    let c = select(&sd15, Some("DPM++ 2S Karras"), None).unwrap();
    assert_eq!(c.class_name, "DPMSolverSinglestepScheduler");
    assert!(c.use_karras_sigmas && !c.lower_order_final);
    let c = select(&sd15, Some("dpmpp_3s"), None).unwrap();
    assert_eq!(
        (c.class_name.as_str(), c.solver_order),
        ("DPMSolverSinglestepScheduler", 3)
    );
    assert_eq!(select(&sd15, Some("deis"), None).unwrap().solver_type, "logrho");
    // diffusers refuses DPM-Solver (not ++) ending on sigma 0, and has no singlestep sde-dpmsolver.
    for bad in [
        serde_json::json!({"algorithm_type": "dpmsolver"}),
        serde_json::json!({"algorithm_type": "sde-dpmsolver"}),
        serde_json::json!({"solver_order": 4}),
        serde_json::json!({"timestep_spacing": "trailing"}),
    ] {
        let e = select(&sd15, Some("dpm++2s"), Some(&bad)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e:?}");
    }
    let ok = serde_json::json!({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"});
    assert!(select(&sd15, Some("dpm++2s"), Some(&ok)).is_ok());
    // DEIS takes the DPM-Solver / UniPC names for its own, as diffusers' __init__ does.
    let c = select(
        &sd15,
        Some("deis"),
        Some(&serde_json::json!({"algorithm_type": "dpmsolver++", "solver_type": "bh2"})),
    )
    .unwrap();
    let mut s = build(&c).unwrap();
    s.set_timesteps(4).unwrap();
    assert_eq!(s.timesteps(), &[801.0, 601.0, 401.0, 201.0]);
    let e = select(
        &sd15,
        Some("deis"),
        Some(&serde_json::json!({"algorithm_type": "sde-dpmsolver++"})),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}

fn task_of(name: &str) -> Task {
    Task::from_name(name).unwrap()
}

#[test]
fn end_to_end_runs_match_diffusers() {
    let cases = json(suite().join("e2e.json"));
    let mut pipes: std::collections::HashMap<String, Pipeline> = Default::default();
    let mut failures = Vec::new();
    for case in cases.as_array().unwrap() {
        let task = case["task"].as_str().unwrap();
        let checkpoint = case["checkpoint"].as_str().unwrap();
        let pipe = pipes.entry(format!("{checkpoint} {task}")).or_insert_with(|| {
            let ckpt = common::data_dir().join(checkpoint);
            Pipeline::from_pretrained(
                ckpt.to_str().unwrap(),
                task_of(task),
                &common::cases::load_options(),
                None,
            )
            .unwrap()
        });
        let img = |k: &str| {
            case[k]
                .as_str()
                .map(|f| Image::load(&common::data_dir().join(f)).unwrap())
        };
        let params = RunParams {
            prompt: case["prompt"].as_str().unwrap().into(),
            negative_prompt: case["negative_prompt"].as_str().map(String::from),
            num_inference_steps: case["num_inference_steps"].as_u64().map(|v| v as usize),
            guidance_scale: case["guidance_scale"].as_f64(),
            strength: case["strength"].as_f64(),
            width: case["width"].as_u64().map(|v| v as usize),
            height: case["height"].as_u64().map(|v| v as usize),
            seed: case["seed"].as_u64().unwrap(),
            image: img("image"),
            mask: img("mask_image"),
            scheduler: case["scheduler"].as_str().map(String::from),
            scheduler_config: Some(case["scheduler_config"].clone()),
            ..Default::default()
        };
        let mut trace = autopipeline::Trace::default();
        let out = pipe
            .run_traced(&params, None, Some(&mut trace))
            .unwrap_or_else(|e| panic!("{}: {e}", case["id"]));
        let want_ts = f64s(&case["unet_timesteps"]);
        if !same_timesteps(&trace.unet_timesteps, &want_ts) {
            failures.push(format!(
                "{}: unet timesteps {:?} != {want_ts:?}",
                case["id"], trace.unet_timesteps
            ));
            continue;
        }
        let (shape, data) = common::read_npy(&suite().join(case["output"].as_str().unwrap()));
        let want = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
        let got = trace
            .image
            .expect("traced image")
            .squeeze(0)
            .unwrap()
            .permute((1, 2, 0))
            .unwrap();
        let d = common::cases::max_abs(&got, &want);
        eprintln!("{}: max image diff {d:.2e}", case["id"]);
        if d > 1e-4 {
            failures.push(format!("{}: image differs by {d}", case["id"]));
        }
        drop(out);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn c_api_switches_schedulers_and_names_bad_ones() {
    use autopipeline::ffi::*;
    use std::ffi::{CStr, CString};
    use std::ptr::{null, null_mut};
    let ckpt = CString::new(common::data_dir().join("checkpoints/sd15-tiny").to_str().unwrap()).unwrap();
    let mut pipe = null_mut();
    assert_eq!(
        unsafe { ap_from_pretrained(ckpt.as_ptr(), AP_TASK_TEXT2IMAGE, null(), &mut pipe) },
        AP_OK
    );
    let run = |name: Option<&CStr>, cfg: Option<&CStr>| {
        let mut p = ap_run_params_default();
        p.prompt = c"a cat".as_ptr();
        p.num_inference_steps = 2;
        p.width = 32;
        p.height = 32;
        p.scheduler = name.map_or(null(), CStr::as_ptr);
        p.scheduler_config_json = cfg.map_or(null(), CStr::as_ptr);
        let mut out = null_mut();
        let status = unsafe { ap_run(pipe, &p, &mut out) };
        if status == AP_OK {
            unsafe { ap_images_free(out) };
        }
        let msg = unsafe { CStr::from_ptr(ap_last_error()) }
            .to_string_lossy()
            .into_owned();
        (status, msg)
    };
    assert_eq!(run(Some(c"dpm++2m_sde_karras"), None).0, AP_OK);
    assert_eq!(
        run(
            Some(c"HeunDiscreteScheduler"),
            Some(c"{\"use_karras_sigmas\": true}")
        )
        .0,
        AP_OK
    );
    assert_eq!(run(None, Some(c"{\"timestep_spacing\": \"trailing\"}")).0, AP_OK);
    let (status, msg) = run(Some(c"warp_drive"), None);
    assert_eq!(status, AP_ERR_INVALID_ARGUMENT);
    assert!(
        msg.contains("euler_a") && msg.contains("UniPCMultistepScheduler"),
        "{msg}"
    );
    let (status, msg) = run(Some(c"euler"), Some(c"{\"karras\": 1}"));
    assert_eq!(status, AP_ERR_INVALID_ARGUMENT);
    assert!(msg.contains("use_karras_sigmas"), "{msg}");
    assert_eq!(run(Some(c"euler"), Some(c"not json")).0, AP_ERR_INVALID_ARGUMENT);
    unsafe { ap_pipeline_free(pipe) };
}

/// DEIS with `solver_order` above 3 keeps a longer history but runs the third-order update, as diffusers
/// does (it accepts the config); 0 is refused.
#[test]
fn deis_orders_above_three_run_as_three() {
    let sd15 = base_config("checkpoints/sd15-tiny");
    let run = |order: usize| -> Vec<f32> {
        let cfg = select(
            &sd15,
            Some("deis"),
            Some(&serde_json::json!({"solver_order": order})),
        )
        .unwrap();
        let mut s = build(&cfg).unwrap();
        s.set_timesteps(6).unwrap();
        let mut rng: Generator = TorchCpuGenerator::new(1).into();
        let dev = Device::Cpu;
        let mut x = Tensor::from_vec(rng.randn(16).unwrap(), (1, 4, 2, 2), &dev).unwrap();
        for (i, &t) in s.timesteps().to_vec().iter().enumerate() {
            let eps = (x.clone() * (0.1 * i as f64 + 0.5)).unwrap();
            x = s.step(&eps, t, &x, &mut rng).unwrap();
        }
        x.flatten_all().unwrap().to_vec1().unwrap()
    };
    assert_eq!(run(4), run(3));
    assert_ne!(run(3), run(2));
    assert!(select(&sd15, Some("deis"), Some(&serde_json::json!({"solver_order": 0}))).is_err());
}
