//! The example CLI (`examples/c/generate.c`), compiled with the system C compiler against the C header
//! and run on every recorded diffusers case: the way hidden cases are checked.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn lib_dir() -> PathBuf {
    common::cdylib_dir()
}

fn build_cli(work: &std::path::Path) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let exe = work.join("generate");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join("examples/c/generate.c"))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lautopipeline", "-o"])
        .arg(&exe)
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(status.success(), "compiling examples/c/generate.c failed");
    exe
}

/// The CLI flags that reproduce a recorded case.
fn flags(case: &serde_json::Value) -> Vec<String> {
    let data = common::data_dir();
    let mut f = vec![
        "--model".to_string(),
        data.join(case["checkpoint"].as_str().unwrap())
            .display()
            .to_string(),
        "--task".into(),
        case["task"].as_str().unwrap().into(),
        "--prompt".into(),
        case["prompt"].as_str().unwrap().into(),
        "--seed".into(),
        case["seed"].to_string(),
    ];
    for (key, flag) in [
        ("negative_prompt", "--negative-prompt"),
        ("prompt_2", "--prompt-2"),
        ("negative_prompt_2", "--negative-prompt-2"),
        ("prompt_3", "--prompt-3"),
        ("negative_prompt_3", "--negative-prompt-3"),
    ] {
        if let Some(s) = case[key].as_str() {
            f.extend([flag.to_string(), s.to_string()]);
        }
    }
    // Absent values are the pipeline's defaults (the family's, e.g. 4 steps and guidance 8.5 for LCM).
    for (key, flag) in [
        ("num_inference_steps", "--steps"),
        ("guidance_scale", "--guidance"),
        ("strength", "--strength"),
        ("width", "--width"),
        ("height", "--height"),
        ("max_sequence_length", "--max-sequence-length"),
        ("true_cfg_scale", "--true-cfg"),
        ("padding_mask_crop", "--padding-mask-crop"),
        ("clip_skip", "--clip-skip"),
        ("skip_layer_guidance_scale", "--slg-scale"),
        ("skip_layer_guidance_start", "--slg-start"),
        ("skip_layer_guidance_stop", "--slg-stop"),
    ] {
        if !case[key].is_null() {
            f.extend([flag.to_string(), case[key].to_string()]);
        }
    }
    for (key, flag) in [("image", "--image"), ("mask_image", "--mask")] {
        if let Some(s) = case[key].as_str() {
            f.extend([flag.to_string(), data.join(s).display().to_string()]);
        }
    }
    if let Some(s) = case["scheduler"].as_str() {
        f.extend(["--scheduler".to_string(), s.to_string()]);
    }
    for (key, flag) in [
        ("timesteps", "--timesteps"),
        ("sigmas", "--sigmas"),
        ("skip_guidance_layers", "--skip-layers"),
    ] {
        if let Some(list) = case[key].as_array() {
            let values: Vec<String> = list.iter().map(|v| v.to_string()).collect();
            f.extend([flag.to_string(), values.join(",")]);
        }
    }
    if case["load"]["route"] == "from_pipe" {
        f.push("--from-pipe".into());
    }
    f
}

#[test]
fn cli_reproduces_every_recorded_case() {
    let work = std::env::temp_dir().join(format!("ap-cli-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let exe = build_cli(&work);
    let mut ids: Vec<String> = std::fs::read_dir(common::data_dir().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    ids.sort();
    let mut checked = 0;
    for id in &ids {
        let case = common::cases::inputs(id);
        // The CLI's flags are fixed; from_pipe config overrides (other than the no-op safety checker)
        // have no flag, so those cases are covered by the Rust-API parity tests instead.
        let kwargs = case["load"]["kwargs"].as_object().cloned().unwrap_or_default();
        // `text_encoder_3=None` for a checkpoint saved without T5 only repeats its model_index.json's
        // [null, null] (diffusers needs the keyword to load it; we read the index).
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                common::data_dir()
                    .join(case["checkpoint"].as_str().unwrap())
                    .join("model_index.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let repeats_index =
            |k: &str, v: &serde_json::Value| v.is_null() && index[k] == serde_json::json!([null, null]);
        if kwargs
            .iter()
            .any(|(k, v)| k != "requires_safety_checker" && !repeats_index(k, v))
        {
            continue;
        }
        let out = work.join(format!("{id}.png"));
        let mut args = flags(&case);
        args.extend(["--out".to_string(), out.display().to_string()]);
        let run = Command::new(&exe).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        if case["status"] == "error" {
            // diffusers failed on these; the CLI must fail cleanly (exit 1 with a message, no signal).
            assert_eq!(
                run.status.code(),
                Some(1),
                "{id}: expected a clean failure, got {:?}\n{stderr}",
                run.status
            );
            assert!(stderr.contains("error:"), "{id}: no error message\n{stderr}");
            continue;
        }
        assert!(run.status.success(), "{id}: generate failed\n{stderr}");
        let ours = autopipeline::Image::load(&out).unwrap();
        if case["output"]["png"].is_null() {
            // Large outputs are recorded as every `stride`-th value of the float image: our 8-bit pixels
            // there are within 1/255 of diffusers' float (0.5/255 of it rounding).
            let stride = case["output"]["sampled"]["stride"].as_u64().unwrap() as usize;
            let want = common::cases::npy(id, "output.npy").to_vec1::<f32>().unwrap();
            let rgb: Vec<u8> = ours
                .data
                .chunks_exact(ours.channels as usize)
                .flat_map(|px| px[..3].to_vec())
                .collect();
            let picked: Vec<u8> = rgb.into_iter().step_by(stride).collect();
            assert_eq!(picked.len(), want.len(), "{id}: sampled size");
            let worst = picked
                .iter()
                .zip(&want)
                .map(|(&a, &b)| (a as f32 / 255.0 - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1.5 / 255.0, "{id}: differs from diffusers by {worst}");
            checked += 1;
            continue;
        }
        let want =
            autopipeline::Image::load(&common::data_dir().join("cases").join(id).join("output.png")).unwrap();
        assert_eq!((ours.width, ours.height), (want.width, want.height), "{id}: size");
        let worst = ours
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 1,
            "{id}: PNG differs from diffusers by up to {worst}/255"
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} cases ran");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn cli_rejects_bad_flags_without_a_signal() {
    let work = std::env::temp_dir().join(format!("ap-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let exe = build_cli(&work);
    for args in [
        vec!["--prompt", "x"],
        vec![
            "--model", "m", "--prompt", "x", "--out", "o.png", "--steps", "abc",
        ],
        vec![
            "--model", "m", "--prompt", "x", "--out", "o.png", "--task", "paint",
        ],
        vec!["--model", "/nonexistent/model", "--prompt", "x", "--out", "o.png"],
        vec!["--bogus"],
    ] {
        let run = Command::new(&exe).args(&args).output().unwrap();
        assert_eq!(run.status.code(), Some(1), "{args:?}: {:?}", run.status);
    }
    // Malformed comma lists are refused by the CLI itself.
    for (flag, list) in [
        ("--timesteps", "999,,1"),
        ("--timesteps", "999,500,"),
        ("--sigmas", "1.0;0.5"),
        ("--sigmas", "nan"),
    ] {
        let run = Command::new(&exe)
            .args(["--model", "m", "--prompt", "x", "--out", "o.png", flag, list])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{flag} {list}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value for {flag}")),
            "{flag} {list}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// `--timesteps` / `--sigmas` reach `ap_run_params`: the library reads every value of each list (an
/// infinite one comes back as its error, naming the position).
#[test]
fn cli_passes_custom_timesteps_and_sigmas() {
    let work = std::env::temp_dir().join(format!("ap-cli-lists-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let exe = build_cli(&work);
    let model = common::data_dir().join("checkpoints/sd15-tiny");
    for (flag, list, position) in [
        ("--timesteps", "999,500,inf", "timesteps[2]"),
        ("--sigmas", "1,-inf", "sigmas[1]"),
    ] {
        let run = Command::new(&exe)
            .arg("--model")
            .arg(&model)
            .args([
                "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64", flag, list,
            ])
            .arg("--out")
            .arg(work.join("o.png"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{flag} {list}: {stderr}");
        assert!(stderr.contains(position), "{flag} {list}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// Checkpoints whose own `scheduler_config.json` names each scheduler class we port (as saved by diffusers
/// after `pipe.scheduler = Cls.from_config(...)`), on SD 1.5 (three tasks) and SDXL (text2img, inpaint),
/// through the CLI against diffusers' images (tests/data/hidden_schedulers/make.py): ≤ 1/255.
#[test]
fn checkpoints_naming_each_scheduler_run_through_the_cli() {
    let data = common::data_dir();
    let root = data.join("hidden_schedulers");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("meta.json")).unwrap()).unwrap();
    let work = std::env::temp_dir().join(format!("ap-cli-hidden-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let exe = build_cli(&work);
    let s = |k: &str| meta[k].as_str().unwrap().to_string();
    let n = |k: &str| meta[k].to_string();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (ckpt, tasks) in meta["runs"].as_object().unwrap() {
        for class in meta["classes"].as_array().unwrap() {
            let class = class.as_str().unwrap();
            // The checkpoint as its owner saved it: everything shared but the scheduler config.
            let model = work.join(format!("{ckpt}-{class}"));
            common::copy_dir(&data.join("checkpoints").join(ckpt), &model);
            std::fs::copy(
                root.join(ckpt).join(format!("{class}.json")),
                model.join("scheduler/scheduler_config.json"),
            )
            .unwrap();
            let index_path = model.join("model_index.json");
            let mut index: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
            index["scheduler"] = serde_json::json!(["diffusers", class]);
            std::fs::write(&index_path, index.to_string()).unwrap();
            for task in tasks.as_array().unwrap() {
                let task = task.as_str().unwrap();
                let out = work.join(format!("{ckpt}-{class}-{task}.png"));
                let mut args = vec![
                    "--model".to_string(),
                    model.display().to_string(),
                    "--task".into(),
                    task.into(),
                    "--prompt".into(),
                    s("prompt"),
                    "--negative-prompt".into(),
                    s("negative_prompt"),
                    "--seed".into(),
                    n("seed"),
                    "--steps".into(),
                    n("steps"),
                    "--guidance".into(),
                    n("guidance"),
                    "--out".into(),
                    out.display().to_string(),
                ];
                if task == "text2img" {
                    args.extend(["--width", "64", "--height", "64"].map(String::from));
                } else {
                    args.extend(["--image".into(), data.join(s("image")).display().to_string()]);
                    args.extend(["--strength".into(), n("strength")]);
                }
                if task == "inpaint" {
                    args.extend(["--mask".into(), data.join(s("mask")).display().to_string()]);
                }
                let run = Command::new(&exe).args(&args).output().unwrap();
                if !run.status.success() {
                    failures.push(format!(
                        "{ckpt} {class} {task}: {}",
                        String::from_utf8_lossy(&run.stderr)
                    ));
                    continue;
                }
                let ours = autopipeline::Image::load(&out).unwrap();
                let want =
                    autopipeline::Image::load(&root.join(ckpt).join(format!("{class}-{task}.png"))).unwrap();
                let worst = ours
                    .data
                    .iter()
                    .zip(&want.data)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                if (ours.width, ours.height) != (want.width, want.height) || worst > 1 {
                    failures.push(format!(
                        "{ckpt} {class} {task}: differs from diffusers by {worst}/255"
                    ));
                }
                checked += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, 75);
    let _ = std::fs::remove_dir_all(&work);
}
