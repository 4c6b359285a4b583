//! The flow-matching schedulers and custom schedules (`set_timesteps(timesteps=, sigmas=, mu=)`) against
//! diffusers 0.42.1 (`tests/data/schedulers_flow`, written by `scripts/references/make_flow_schedulers.py`):
//! schedules, trajectories with fixed fake model outputs (the step generator seeded), `scale_noise`, and
//! diffusers' own error messages. Also checks the scheduler alias list documented in the C header.

mod common;

use autopipeline::rng::{Generator, TorchCpuGenerator};
use autopipeline::schedulers::{
    build, calculate_shift, class_keys, retrieve_timesteps, select, Scheduler, SchedulerConfig,
    TimestepRequest, ALIASES,
};
use autopipeline::Error;
use candle_core::{Device, Tensor};
use serde_json::Value;

/// Largest accepted difference, relative to the reference (to its largest magnitude for latents).
const TOL: f64 = 1e-6;

fn data(name: &str) -> Value {
    let path = common::data_dir().join("schedulers_flow").join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn config(class: &str, cfg: &Value) -> SchedulerConfig {
    let mut cfg = cfg.clone();
    cfg["_class_name"] = Value::String(class.into());
    SchedulerConfig::from_json(&cfg.to_string(), "test").unwrap_or_else(|e| panic!("{class} {cfg}: {e}"))
}

fn scheduler(case: &Value) -> Box<dyn Scheduler> {
    build(&config(case["class"].as_str().unwrap(), &case["config"])).unwrap()
}

/// A recorded request's lists, owned, so that a [`TimestepRequest`] can borrow them.
struct Owned {
    n: Option<usize>,
    timesteps: Option<Vec<f64>>,
    sigmas: Option<Vec<f64>>,
    mu: Option<f64>,
}

impl Owned {
    fn of(r: &Value) -> Self {
        let list = |k: &str| (!r[k].is_null()).then(|| f64s(&r[k]));
        Self {
            n: r["num_inference_steps"].as_u64().map(|v| v as usize),
            timesteps: list("timesteps"),
            sigmas: list("sigmas"),
            mu: r["mu"].as_f64(),
        }
    }

    fn req(&self) -> TimestepRequest<'_> {
        TimestepRequest {
            num_inference_steps: self.n,
            timesteps: self.timesteps.as_deref(),
            sigmas: self.sigmas.as_deref(),
            mu: self.mu,
            strength: None,
        }
    }
}

fn rel(got: f64, want: f64) -> f64 {
    if got == want {
        0.0
    } else {
        (got - want).abs() / want.abs().max(f64::MIN_POSITIVE)
    }
}

/// Largest element difference relative to the reference's largest magnitude (at least 1).
fn latent_diff(got: &Tensor, want: &[f64]) -> f64 {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0f64, f64::max)
        / scale
}

fn latent(v: &Value) -> Tensor {
    let vals: Vec<f32> = f64s(v).into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(vals, (1, 4, 2, 2), &Device::Cpu).unwrap()
}

fn all_cases() -> Vec<Value> {
    let mut cases = data("flow.json")["cases"].as_array().unwrap().clone();
    cases.extend(data("custom.json")["cases"].as_array().unwrap().iter().cloned());
    cases
}

/// Compares one schedule list; returns the largest relative difference.
fn compare_list(what: &str, got: &[f64], want: &[f64]) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, diffusers has {}: {got:?} vs {want:?}",
            got.len(),
            want.len()
        ));
    }
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| rel(*g, *w))
        .fold(0f64, f64::max);
    if worst > TOL {
        return Err(format!(
            "{what} differ by {worst:e} relative: {got:?} vs {want:?}"
        ));
    }
    Ok(worst)
}

#[test]
fn set_timesteps_matches_diffusers() {
    let mut worst = (0f64, 0f64);
    let mut failures = Vec::new();
    for case in all_cases() {
        for want in case["set_timesteps"].as_array().unwrap() {
            let name = format!("{} {}", case["name"], want["request"]);
            let owned = Owned::of(&want["request"]);
            let mut s = scheduler(&case);
            if let Err(e) = s.set_timesteps_with(&owned.req()) {
                failures.push(format!("{name}: {e}"));
                continue;
            }
            assert_eq!(s.order() as u64, case["order"].as_u64().unwrap(), "{name} order");
            match compare_list("timesteps", s.timesteps(), &f64s(&want["timesteps"])) {
                Ok(d) => {
                    // Report what exceeds the 9-digit rounding of the reference file.
                    if d > 1e-8 {
                        eprintln!("{name}: timesteps within {d:e}");
                    }
                    worst.0 = worst.0.max(d)
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
            if let Some(sig) = want.get("sigmas") {
                let got: Vec<f64> = s.sigmas().expect("sigmas").iter().map(|&v| v as f64).collect();
                match compare_list("sigmas", &got, &f64s(sig)) {
                    Ok(d) => {
                        if d > 1e-8 {
                            eprintln!("{name}: sigmas within {d:e}");
                        }
                        worst.1 = worst.1.max(d)
                    }
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
        }
    }
    eprintln!(
        "set_timesteps: worst relative difference timesteps {:e}, sigmas {:e}",
        worst.0, worst.1
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn trajectories_match_diffusers() {
    let mut worst = 0f64;
    let mut failures = Vec::new();
    for case in all_cases() {
        let traj = &case["trajectory"];
        let name = case["name"].to_string();
        let owned = Owned::of(&traj["request"]);
        let mut s = scheduler(&case);
        s.set_timesteps_with(&owned.req()).unwrap();
        let steps = traj["steps"].as_array().unwrap();
        // diffusers' timesteps are float32 (or integer) values; serde_json may parse their 17-digit
        // decimal one float64 ulp off, which rounding to float32 undoes.
        let want_ts: Vec<f64> = steps
            .iter()
            .map(|st| st["t"].as_f64().unwrap() as f32 as f64)
            .collect();
        if let Err(e) = compare_list("timesteps", s.timesteps(), &want_ts) {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        // Step with our own timesteps (what our loop would pass), equal to diffusers' within TOL.
        let ts = s.timesteps().to_vec();
        let mut rng: Generator = TorchCpuGenerator::new(5).into();
        let mut x = latent(&traj["x_init"]);
        let mut case_worst = 0f64;
        for (i, st) in steps.iter().enumerate() {
            let t = ts[i];
            let xin = s.scale_model_input(&x, t).unwrap();
            if let Some(scaled) = st.get("scaled") {
                case_worst = case_worst.max(latent_diff(&xin, &f64s(scaled)));
            }
            x = s.step(&latent(&st["model_output"]), t, &x, &mut rng).unwrap();
            let d = latent_diff(&x, &f64s(&st["prev"]));
            case_worst = case_worst.max(d);
            // Continue from diffusers' sample so that one early ulp does not snowball.
            x = latent(&st["prev"]);
        }
        worst = worst.max(case_worst);
        if case_worst > TOL {
            failures.push(format!("{name}: trajectory differs by {case_worst:e}"));
        }
    }
    eprintln!("trajectories: worst relative difference {worst:e}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn scale_noise_matches_diffusers() {
    let mut worst = 0f64;
    for case in data("flow.json")["cases"].as_array().unwrap() {
        let sn = &case["scale_noise"];
        let owned = Owned::of(&sn["request"]);
        let (clean, noise) = (latent(&sn["clean"]), latent(&sn["noise"]));
        let mut s = scheduler(case);
        s.set_timesteps_with(&owned.req()).unwrap();
        let begin = sn["begin_index"].as_u64().unwrap() as usize;
        s.set_begin_index(begin);
        let t = sn["timestep"].as_f64().unwrap() as f32 as f64;
        assert_eq!(s.timesteps()[begin], t, "{}", case["name"]);
        let d = latent_diff(&s.add_noise(&clean, &noise, t).unwrap(), &f64s(&sn["result"]));
        assert!(
            d <= TOL,
            "{}: scale_noise with a begin index differs by {d:e}",
            case["name"]
        );
        worst = worst.max(d);
        let mut fresh = scheduler(case);
        fresh.set_timesteps_with(&owned.req()).unwrap();
        let t = sn["lookup_timestep"].as_f64().unwrap() as f32 as f64;
        let d = latent_diff(
            &fresh.add_noise(&clean, &noise, t).unwrap(),
            &f64s(&sn["lookup_result"]),
        );
        assert!(
            d <= TOL,
            "{}: scale_noise by timestep differs by {d:e}",
            case["name"]
        );
        worst = worst.max(d);
    }
    eprintln!("scale_noise: worst relative difference {worst:e}");
}

#[test]
fn calculate_shift_matches_the_flux_pipeline() {
    for (n, want) in data("flow.json")["calculate_shift"].as_object().unwrap() {
        let got = calculate_shift(n.parse().unwrap(), 256, 4096, 0.5, 1.15);
        assert_eq!(got, want.as_f64().unwrap(), "calculate_shift({n})");
    }
    let flux = config(
        "FlowMatchEulerDiscreteScheduler",
        &serde_json::json!({"use_dynamic_shifting": true, "base_shift": null}),
    );
    assert_eq!(flux.flow_mu(1024), calculate_shift(1024, 256, 4096, 0.5, 1.15));
}

#[test]
fn flow_class_keys_match_diffusers_signatures() {
    for (class, theirs) in data("flow.json")["class_keys"].as_object().unwrap() {
        let ours = class_keys(class).unwrap_or_else(|| panic!("{class} unknown"));
        let theirs = theirs.as_object().unwrap();
        let mut their_names: Vec<&str> = theirs.keys().map(String::as_str).collect();
        their_names.sort();
        assert_eq!(
            ours.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            their_names,
            "{class} keys"
        );
        for (k, v) in &ours {
            let t = &theirs[*k];
            assert!(
                v == t || (v.as_f64().is_some() && v.as_f64() == t.as_f64()),
                "{class}.{k}: {v} != {t}"
            );
        }
    }
}

/// diffusers' `ValueError` text, without the exception type.
fn message(e: &Value) -> &str {
    let e = e.as_str().unwrap();
    e.strip_prefix("ValueError: ").unwrap_or(e)
}

#[test]
fn refused_requests_carry_diffusers_messages() {
    let errors = data("errors.json");
    for e in errors["set_timesteps"].as_array().unwrap() {
        let owned = Owned::of(&e["request"]);
        let mut s = build(&config(e["class"].as_str().unwrap(), &e["config"])).unwrap();
        match s.set_timesteps_with(&owned.req()) {
            Err(Error::InvalidArgument(m)) => assert_eq!(m, message(&e["error"]), "{}", e["name"]),
            other => panic!("{}: expected InvalidArgument, got {other:?}", e["name"]),
        }
    }
    for e in errors["retrieve_timesteps"].as_array().unwrap() {
        let owned = Owned::of(&e["request"]);
        let mut s = build(&config(e["class"].as_str().unwrap(), &serde_json::json!({}))).unwrap();
        let r = retrieve_timesteps(
            s.as_mut(),
            None,
            owned.timesteps.as_deref(),
            owned.sigmas.as_deref(),
            None,
        );
        match r {
            Err(Error::InvalidArgument(m)) => assert_eq!(m, message(&e["error"]), "{}", e["class"]),
            other => panic!("{}: expected InvalidArgument, got {other:?}", e["class"]),
        }
    }
    for c in errors["retrieve_counts"].as_array().unwrap() {
        let owned = Owned::of(&c["request"]);
        let mut s = build(&config(c["class"].as_str().unwrap(), &c["config"])).unwrap();
        let n = retrieve_timesteps(
            s.as_mut(),
            owned.n,
            owned.timesteps.as_deref(),
            owned.sigmas.as_deref(),
            owned.mu,
        )
        .unwrap();
        assert_eq!(
            n as u64,
            c["num_inference_steps"].as_u64().unwrap(),
            "{}",
            c["class"]
        );
    }
    // `mu` where the class's set_timesteps has no such keyword (Python's TypeError).
    let mut s = build(&config("PNDMScheduler", &serde_json::json!({}))).unwrap();
    let e = retrieve_timesteps(s.as_mut(), Some(4), None, None, Some(0.5)).unwrap_err();
    assert!(e.to_string().contains("unexpected keyword argument 'mu'"), "{e}");
}

#[test]
fn set_timesteps_n_still_works_for_every_class() {
    for class in autopipeline::schedulers::SUPPORTED {
        let mut s = build(&config(class, &serde_json::json!({}))).unwrap();
        s.set_timesteps(4).unwrap_or_else(|e| panic!("{class}: {e}"));
        assert!(s.num_timesteps() >= 4, "{class}");
        assert_eq!(s.num_timesteps(), s.timesteps().len());
    }
}

#[test]
fn flow_and_diffusion_schedulers_do_not_mix() {
    let sd15 = SchedulerConfig::from_json(
        &std::fs::read_to_string(
            common::data_dir().join("checkpoints/sd15-tiny/scheduler/scheduler_config.json"),
        )
        .unwrap(),
        "test",
    )
    .unwrap();
    for name in ["flow_euler", "FlowMatchHeunDiscreteScheduler"] {
        let e = select(&sd15, Some(name), None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert!(e.to_string().contains("flow-matching"), "{e}");
    }
    let flux = config(
        "FlowMatchEulerDiscreteScheduler",
        &serde_json::json!({"shift": 3.0, "use_dynamic_shifting": true}),
    );
    let e = select(&flux, Some("euler"), None).unwrap_err();
    assert!(e.to_string().contains("FlowMatchHeunDiscreteScheduler"), "{e}");
    // Between flow classes, keys carry over as from_config does (Heun takes only shift).
    let heun = select(&flux, Some("flow_heun"), None).unwrap();
    assert_eq!(
        (heun.class_name.as_str(), heun.shift),
        ("FlowMatchHeunDiscreteScheduler", 3.0)
    );
    let euler = select(
        &flux,
        None,
        Some(&serde_json::json!({"stochastic_sampling": true})),
    )
    .unwrap();
    assert!(euler.stochastic_sampling && euler.use_dynamic_shifting);
    let e = select(
        &flux,
        None,
        Some(&serde_json::json!({"time_shift_type": "cubic"})),
    )
    .unwrap_err();
    assert!(e.to_string().contains("time_shift_type"), "{e}");
}

/// The aliases `ap_run_params.scheduler` documents (include/autopipeline.h, generated from src/ffi/types.rs)
/// are exactly the table's: a quoted name ending in "…" stands for every alias with that prefix.
#[test]
fn header_documents_every_scheduler_alias() {
    let header = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/autopipeline.h"),
    )
    .unwrap();
    let field = header.find("const char *scheduler;").expect("scheduler field");
    let doc_start = header[..field].rfind("/**").expect("doc comment");
    let doc = &header[doc_start..field];
    let list = &doc[doc.find("an alias:").expect("alias list")..doc.find("Built from").expect("end of list")];
    let quoted: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
    let mut documented: Vec<&str> = Vec::new();
    for q in &quoted {
        match q.strip_suffix('…') {
            Some(prefix) => documented.extend(ALIASES.iter().map(|a| a.0).filter(|a| a.starts_with(prefix))),
            None => documented.push(q),
        }
    }
    documented.sort_unstable();
    documented.dedup();
    let mut table: Vec<&str> = ALIASES.iter().map(|a| a.0).collect();
    table.sort_unstable();
    assert_eq!(
        documented, table,
        "include/autopipeline.h's scheduler alias list differs from schedulers::ALIASES"
    );
}
