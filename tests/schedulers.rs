//! Schedulers against diffusers' `set_timesteps`, img2img truncation, a 5-step trajectory with fixed model
//! outputs, and `add_noise` (`tests/data/components/schedulers`).

mod common;

use autopipeline::rng::{Generator, TorchCpuGenerator};
use autopipeline::schedulers::{build, strength_start, SchedulerConfig};
use candle_core::{Device, Tensor};
use serde_json::Value;

fn npy(rel: &str) -> Tensor {
    let (shape, data) = common::read_npy(&common::data_dir().join(rel));
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn config_of(case: &Value) -> SchedulerConfig {
    let mut cfg = case["config"].clone();
    cfg["_class_name"] = case["class"].clone();
    SchedulerConfig::from_json(&cfg.to_string(), "test").unwrap()
}

fn cases() -> Vec<Value> {
    let dir = common::data_dir().join("components/schedulers");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|d| serde_json::from_str(&std::fs::read_to_string(d.join("scheduler.json")).unwrap()).unwrap())
        .collect()
}

fn as_f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn set_timesteps_matches_diffusers() {
    let all = cases();
    assert_eq!(all.len(), 4);
    for case in &all {
        let cfg = config_of(case);
        for (n, want) in case["set_timesteps"].as_object().unwrap() {
            let mut s = build(&cfg).unwrap();
            s.set_timesteps(n.parse().unwrap()).unwrap();
            assert_eq!(
                s.timesteps(),
                as_f64s(&want["timesteps"]).as_slice(),
                "{} n={n}",
                case["name"]
            );
            let ins = want["init_noise_sigma"].as_f64().unwrap();
            assert!(
                (s.init_noise_sigma() - ins).abs() < 1e-6 * ins,
                "{} init_noise_sigma",
                case["name"]
            );
            if let Some(sig) = want.get("sigmas") {
                // torch's vectorised linspace/cumprod round a few training sigmas one float32 ulp
                // differently; 1e-6 relative is two ulps, far below what would move an image.
                let got = s.sigmas().unwrap();
                let want = as_f64s(sig);
                assert_eq!(got.len(), want.len(), "{} n={n} sigma count", case["name"]);
                for (g, w) in got.iter().zip(&want) {
                    let tol = 1e-6 * w.abs();
                    assert!(
                        (*g as f64 - w).abs() <= tol,
                        "{} n={n} sigma {g} vs {w}",
                        case["name"]
                    );
                }
            }
        }
    }
}

#[test]
fn img2img_truncation_matches_diffusers() {
    for case in cases() {
        let cfg = config_of(&case);
        for (key, want) in case["img2img_timesteps"].as_object().unwrap() {
            let n = want["num_inference_steps"].as_u64().unwrap() as usize;
            let strength = want["strength"].as_f64().unwrap();
            let mut s = build(&cfg).unwrap();
            s.set_timesteps(n).unwrap();
            let (start, steps) = strength_start(n, strength, s.order());
            assert_eq!(
                &s.timesteps()[start..],
                as_f64s(&want["timesteps"]).as_slice(),
                "{} {key}",
                case["name"]
            );
            assert_eq!(
                steps as u64,
                want["effective_steps"].as_u64().unwrap(),
                "{} {key}",
                case["name"]
            );
        }
    }
}

#[test]
fn trajectory_matches_diffusers() {
    for case in cases() {
        let traj = &case["trajectory"];
        let mut s = build(&config_of(&case)).unwrap();
        s.set_timesteps(5).unwrap();
        let ts = as_f64s(&traj["timesteps"]);
        assert_eq!(s.timesteps(), ts.as_slice());
        let scaled = npy(traj["scaled_inputs"].as_str().unwrap());
        let outputs = npy(traj["model_outputs"].as_str().unwrap());
        let prevs = npy(traj["prev_samples"].as_str().unwrap());
        let mut x = npy(traj["x_init"].as_str().unwrap());
        let mut rng: Generator = TorchCpuGenerator::new(5).into();
        for (i, &t) in ts.iter().enumerate() {
            let xin = s.scale_model_input(&x, t).unwrap();
            let d = common::cases::max_abs(&xin, &scaled.get(i).unwrap());
            assert!(d < 1e-5, "{} step {i}: scaled input differs by {d}", case["name"]);
            x = s.step(&outputs.get(i).unwrap(), t, &x, &mut rng).unwrap();
            let d = common::cases::max_abs(&x, &prevs.get(i).unwrap());
            assert!(d < 1e-5, "{} step {i}: prev sample differs by {d}", case["name"]);
        }
    }
}

#[test]
fn add_noise_matches_diffusers() {
    for case in cases() {
        let an = &case["add_noise"];
        let mut s = build(&config_of(&case)).unwrap();
        s.set_timesteps(5).unwrap();
        let (start, _) = strength_start(5, 0.6, s.order());
        s.set_begin_index(start);
        let t = an["timestep"].as_f64().unwrap();
        assert_eq!(s.timesteps()[start], t);
        let got = s
            .add_noise(
                &npy(an["clean"].as_str().unwrap()),
                &npy(an["noise"].as_str().unwrap()),
                t,
            )
            .unwrap();
        let d = common::cases::max_abs(&got, &npy(an["result"].as_str().unwrap()));
        assert!(d < 1e-5, "{}: add_noise differs by {d}", case["name"]);
    }
}

#[test]
fn unknown_scheduler_is_refused_with_the_supported_list() {
    let cfg = SchedulerConfig::from_json(r#"{"_class_name": "FancyScheduler"}"#, "test").unwrap();
    let err = build(&cfg).err().expect("must fail").to_string();
    assert!(
        err.contains("FancyScheduler") && err.contains("PNDMScheduler"),
        "{err}"
    );
}
