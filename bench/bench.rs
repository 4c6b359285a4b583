//! Benchmark of autopipeline against diffusers/PyTorch on the SD 1.5 architecture (CPU, float32).
//! Not a test: `bench/run.sh` drives it (see bench/README.md).
//!
//! ```text
//! cargo run --release --example bench -- measure --model DIR [--threads N] [--quick] [--json OUT]
//! cargo run --release --example bench -- report OURS.json DIFFUSERS.json
//! ```
//! `measure` times, in one process and in this order: loading from local safetensors, the text
//! encoder (prompt + negative prompt, as `encode_prompt` with CFG), one UNet step with a CFG batch of 2
//! at 256² and 512², a VAE decode at 512², a whole text2img at 256² with 4 steps, and the memory a
//! `from_pipe` adds. Peak resident memory is read per phase from `/proc/self/status` (`VmHWM`, reset
//! before each phase through `/proc/self/clear_refs`). `bench/bench_diffusers.py` measures the same on
//! the diffusers side; `report` prints both side by side with ratios (ours / diffusers; lower is
//! better), ending with `unet_step_ratio_512=<x>`.

use autopipeline::rng::TorchCpuGenerator;
use autopipeline::{LoadOptions, Pipeline, RunParams, Task};
use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};
use std::time::Instant;

const PROMPT: &str = "a photograph of an astronaut riding a horse on mars, detailed, 8k";
const NEGATIVE: &str = "blurry, low quality";

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn status_kb(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

fn rss_mb() -> f64 {
    status_kb("VmRSS") / 1024.0
}

fn peak_mb() -> f64 {
    status_kb("VmHWM") / 1024.0
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0), so the next read gives this phase's peak.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU seconds this process has used (all threads, user + system), from `/proc/self/stat`.
fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// Wall seconds of the first call (the warm-up, when there is one: it reads the weights a lazy load
/// left on disk), the median wall seconds of `runs` calls after `warmup` calls, and the mean CPU
/// seconds per timed call (on a busy machine the CPU time is the steadier of the two).
fn timed(warmup: usize, runs: usize, mut f: impl FnMut() -> Res<()>) -> Res<Timing> {
    let mut first = None;
    for _ in 0..warmup {
        let t = Instant::now();
        f()?;
        first.get_or_insert(t.elapsed().as_secs_f64());
    }
    let mut times = Vec::with_capacity(runs);
    let cpu = cpu_s();
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Timing {
        first,
        wall: median(times),
        cpu: (cpu_s() - cpu) / runs as f64,
    })
}

struct Timing {
    first: Option<f64>,
    wall: f64,
    cpu: f64,
}

impl From<(f64, f64)> for Timing {
    fn from((wall, cpu): (f64, f64)) -> Self {
        Self {
            first: None,
            wall,
            cpu,
        }
    }
}

fn put(res: &mut Map<String, Value>, key: &str, t: impl Into<Timing>) {
    let t = t.into();
    res.insert(format!("{key}_s"), json!(t.wall));
    res.insert(format!("{key}_cpu_s"), json!(t.cpu));
    if let Some(first) = t.first {
        res.insert(format!("first_{key}_s"), json!(first));
    }
}

fn randn(rng: &mut TorchCpuGenerator, shape: &[usize]) -> Res<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(rng.randn(n), shape, &Device::Cpu)?)
}

struct Args {
    model: String,
    threads: usize,
    quick: bool,
    json: Option<String>,
    only: Option<String>,
}

fn parse(args: &[String]) -> Res<Args> {
    let mut a = Args {
        model: String::new(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        quick: false,
        json: None,
        only: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = value()?,
            "--threads" => a.threads = value()?.parse()?,
            "--quick" => a.quick = true,
            "--json" => a.json = Some(value()?),
            "--only" => a.only = Some(value()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if a.model.is_empty() {
        return Err("--model DIR is required".into());
    }
    Ok(a)
}

fn measure(a: Args) -> Res<()> {
    // candle's CPU kernels and rayon both read RAYON_NUM_THREADS; set it before any pool starts.
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    let want = |name: &str| a.only.as_deref().is_none_or(|o| o.split(',').any(|x| x == name));
    let (runs, big_runs) = if a.quick { (1, 1) } else { (3, 2) };
    let mut res = Map::new();
    res.insert("impl".into(), json!("autopipeline"));
    res.insert("threads".into(), json!(a.threads));
    let mut peaks = Vec::new();
    let mut phase_peak = |res: &mut Map<String, Value>, key: &str| {
        let p = peak_mb();
        peaks.push(p);
        res.insert(key.into(), json!(p));
    };

    reset_peak();
    let (t, cpu) = (Instant::now(), cpu_s());
    let pipe = Pipeline::from_pretrained(&a.model, Task::Text2Image, &LoadOptions::default(), None)?;
    put(&mut res, "load", (t.elapsed().as_secs_f64(), cpu_s() - cpu));
    phase_peak(&mut res, "load_peak_mb");
    res.insert("rss_after_load_mb".into(), json!(rss_mb()));
    let c = pipe.components().clone();
    let enc = &c.text_encoder;

    // What diffusers' encode_prompt does under CFG: prompt and negative prompt, one forward each.
    let encode = || -> Res<Tensor> {
        let mut outs = Vec::new();
        for text in [NEGATIVE, PROMPT] {
            let ids = Tensor::new(enc.tokenizer.encode(text).ids, &Device::Cpu)?.unsqueeze(0)?;
            outs.push(enc.model.forward(&ids)?.last_hidden_state);
        }
        Ok(Tensor::cat(&outs, 0)?)
    };
    reset_peak();
    if want("text") {
        put(&mut res, "text_encoder", timed(1, runs, || encode().map(drop))?);
        phase_peak(&mut res, "text_encoder_peak_mb");
    }
    let context = encode()?;

    let mut rng = TorchCpuGenerator::new(0);
    for (side, n) in [(256usize, runs), (512, big_runs)] {
        let lat = side / 8;
        let x = randn(&mut rng, &[2, 4, lat, lat])?;
        if !want(&format!("unet{side}")) {
            continue;
        }
        reset_peak();
        let s = timed(1, n, || {
            Ok(c.unet()?.forward(&x, 500.0, &context, None).map(drop)?)
        })?;
        put(&mut res, &format!("unet_step_{side}"), s);
        phase_peak(&mut res, &format!("unet_step_{side}_peak_mb"));
    }

    let z = randn(&mut rng, &[1, 4, 64, 64])?;
    if want("vae") {
        reset_peak();
        let s = timed(1, big_runs, || Ok(c.vae.decode(&z).map(drop)?))?;
        put(&mut res, "vae_decode_512", s);
        phase_peak(&mut res, "vae_decode_512_peak_mb");
    }

    if want("t2i") {
        let params = RunParams {
            prompt: PROMPT.into(),
            negative_prompt: Some(NEGATIVE.into()),
            width: Some(256),
            height: Some(256),
            num_inference_steps: Some(4),
            seed: 1,
            ..Default::default()
        };
        reset_peak();
        let s = timed(0, runs, || Ok(pipe.run(&params, None).map(drop)?))?;
        put(&mut res, "t2i_256x4", s);
        phase_peak(&mut res, "t2i_256x4_peak_mb");
    }

    let before = rss_mb();
    reset_peak();
    let i2i = pipe.from_pipe(Task::Image2Image, &Map::new())?;
    res.insert("from_pipe_added_mb".into(), json!(rss_mb() - before));
    phase_peak(&mut res, "from_pipe_peak_mb");
    drop(i2i);
    res.insert(
        "peak_rss_mb".into(),
        json!(peaks.iter().copied().fold(0.0, f64::max)),
    );
    cold_start(&mut res);

    // The load that reads every weight up front (no slow first calls); diffusers has no such mode.
    drop(pipe);
    let opts = LoadOptions {
        preload: true,
        ..Default::default()
    };
    let (t, cpu) = (Instant::now(), cpu_s());
    let pipe = Pipeline::from_pretrained(&a.model, Task::Text2Image, &opts, None)?;
    put(
        &mut res,
        "load_preload",
        (t.elapsed().as_secs_f64(), cpu_s() - cpu),
    );
    drop(pipe);

    let text = serde_json::to_string_pretty(&Value::Object(res))?;
    if let Some(path) = &a.json {
        std::fs::write(path, format!("{text}\n"))?;
    }
    println!("{text}");
    Ok(())
}

/// Rows of the report: key, label, unit.
const ROWS: &[(&str, &str, &str)] = &[
    ("load_s", "load (local safetensors)", "s"),
    ("first_text_encoder_s", "  first text encoder call", "s"),
    ("first_unet_step_256_s", "  first UNet call (256²)", "s"),
    ("first_vae_decode_512_s", "  first VAE decode (512²)", "s"),
    ("cold_start_s", "load + first call of each model", "s"),
    ("load_preload_s", "load with preload (reads all)", "s"),
    ("text_encoder_s", "text encoder (prompt + negative)", "s"),
    ("unet_step_256_s", "UNet step 256² (CFG batch 2)", "s"),
    ("unet_step_512_s", "UNet step 512² (CFG batch 2)", "s"),
    ("vae_decode_512_s", "VAE decode 512²", "s"),
    ("t2i_256x4_s", "text2img 256², 4 steps", "s"),
    ("unet_step_256_cpu_s", "  CPU time: UNet step 256²", "s"),
    ("unet_step_512_cpu_s", "  CPU time: UNet step 512²", "s"),
    ("vae_decode_512_cpu_s", "  CPU time: VAE decode 512²", "s"),
    ("t2i_256x4_cpu_s", "  CPU time: text2img 256²", "s"),
    ("load_peak_mb", "peak RSS: load", "MiB"),
    ("unet_step_512_peak_mb", "peak RSS: UNet step 512²", "MiB"),
    ("vae_decode_512_peak_mb", "peak RSS: VAE decode 512²", "MiB"),
    ("t2i_256x4_peak_mb", "peak RSS: text2img 256²", "MiB"),
    ("peak_rss_mb", "peak RSS: whole run", "MiB"),
    ("rss_after_load_mb", "RSS after load", "MiB"),
    ("from_pipe_added_mb", "from_pipe added RSS", "MiB"),
];

/// `cold_start_s`: the load plus the first call of each model, which is where a lazy load (ours by
/// default, diffusers' memory-mapped weights) reads the weights; comparable whatever each side defers.
fn cold_start(res: &mut Map<String, Value>) {
    let keys = [
        "load_s",
        "first_text_encoder_s",
        "first_unet_step_256_s",
        "first_vae_decode_512_s",
    ];
    let parts: Option<Vec<f64>> = keys.iter().map(|k| res.get(*k).and_then(Value::as_f64)).collect();
    if let Some(parts) = parts {
        res.insert("cold_start_s".into(), json!(parts.iter().sum::<f64>()));
    }
}

fn report(ours: &str, theirs: &str) -> Res<()> {
    let read = |p: &str| -> Res<Map<String, Value>> {
        match serde_json::from_str(&std::fs::read_to_string(p)?)? {
            Value::Object(m) => Ok(m),
            _ => Err(format!("{p}: not a JSON object").into()),
        }
    };
    let (a, b) = (read(ours)?, read(theirs)?);
    let num = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_f64);
    println!(
        "threads: ours {} / diffusers {} (torch {}, diffusers {})",
        a.get("threads").unwrap_or(&Value::Null),
        b.get("threads").unwrap_or(&Value::Null),
        b.get("torch").and_then(Value::as_str).unwrap_or("?"),
        b.get("diffusers").and_then(Value::as_str).unwrap_or("?"),
    );
    println!(
        "{:<36} {:>12} {:>12} {:>8}",
        "metric", "ours", "diffusers", "ratio"
    );
    let fmt = |v: Option<f64>, unit: &str| match v {
        Some(v) if unit == "s" => format!("{v:.3} s"),
        Some(v) => format!("{v:.0} {unit}"),
        None => "-".into(),
    };
    for (key, label, unit) in ROWS {
        let (x, y) = (num(&a, key), num(&b, key));
        let ratio = match (x, y) {
            // Memory deltas near zero make ratios meaningless.
            (Some(x), Some(y)) if y.abs() > 1.0 || *unit == "s" => format!("{:.2}", x / y),
            _ => "-".into(),
        };
        println!("{label:<36} {:>12} {:>12} {ratio:>8}", fmt(x, unit), fmt(y, unit));
    }
    match (num(&a, "unet_step_512_s"), num(&b, "unet_step_512_s")) {
        (Some(x), Some(y)) => println!("unet_step_ratio_512={:.3}", x / y),
        _ => println!("unet_step_ratio_512=nan"),
    }
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("measure") => measure(parse(&args[1..])?),
        Some("report") if args.len() == 3 => report(&args[1], &args[2]),
        _ => Err(
            "usage: bench measure --model DIR [--threads N] [--quick] [--json OUT] [--only \
                  text,unet256,unet512,vae,t2i] | bench report OURS.json DIFFUSERS.json"
                .into(),
        ),
    }
}
