//! Cancel latency: how long a run takes to return after its cancel flag is set in the middle of a
//! denoising step (what `ap_job_cancel` / `ap_job_free` wait for). Not a test; bench/README.md has the
//! numbers.
//!
//! ```text
//! cargo run --release --example cancel_latency -- --model DIR [--size 512] [--trials 5]
//! ```
//! It first times one denoising step at `--size` (text2img, CFG, the checkpoint's scheduler), then per
//! trial starts a 4-step run, sets the cancel flag at a fraction of a step into the second step
//! (0.1, 0.3, 0.5, 0.7, 0.9, …) and measures the time until the run returns `Cancelled`. Without
//! cancellation points inside the model call, a cancel would wait for the rest of the step: the
//! `(1 − fraction) × step` column.

use autopipeline::pipeline::RunControl;
use autopipeline::{Error, LoadOptions, Pipeline, RunParams, Task};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn params(size: usize, steps: usize) -> RunParams {
    RunParams {
        prompt: "a photograph of an astronaut riding a horse on mars".into(),
        width: Some(size),
        height: Some(size),
        num_inference_steps: Some(steps),
        ..Default::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = arg(&args, "--model").ok_or("--model DIR is required")?;
    let size: usize = arg(&args, "--size").map_or(Ok(512), |s| s.parse())?;
    let trials: usize = arg(&args, "--trials").map_or(Ok(5), |s| s.parse())?;
    let opts = LoadOptions {
        preload: true,
        ..Default::default()
    };
    let pipe = Arc::new(Pipeline::from_pretrained(&model, Task::Text2Image, &opts, None)?);

    // One step's time: the interval between the first and the second step's ends.
    let marks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let m = Arc::clone(&marks);
    let mut control = RunControl::new().with_progress(move |step, _| {
        m.lock().unwrap().push((step, Instant::now()));
        true
    });
    pipe.run_with(&params(size, 2), &mut control)?;
    let marks = marks.lock().unwrap().clone();
    let step = marks[1].1 - marks[0].1;
    println!(
        "model {model}, {size}x{size}, CFG batch 2: one denoising step takes {:.2} s",
        step.as_secs_f64()
    );

    let mut latencies = Vec::new();
    println!("trial  cancel at  latency   (1 - fraction) x step");
    for trial in 0..trials {
        let fraction = [0.1, 0.3, 0.5, 0.7, 0.9][trial % 5];
        let flag = Arc::new(AtomicBool::new(false));
        let (began_tx, began_rx) = mpsc::channel();
        let (pipe2, flag2) = (Arc::clone(&pipe), Arc::clone(&flag));
        let worker = std::thread::spawn(move || {
            let mut control = RunControl::new()
                .with_cancel_flag(flag2)
                .with_progress(move |step, _| {
                    // The first step's end is the second step's start.
                    if step == 1 {
                        let _ = began_tx.send(Instant::now());
                    }
                    true
                });
            pipe2.run_with(&params(size, 4), &mut control)
        });
        let Ok(began) = began_rx.recv() else {
            let out = worker.join().map_err(|_| "the run panicked")?;
            return Err(format!(
                "trial {trial}: the run ended before its first step: {:?}",
                out.map(|_| ())
            )
            .into());
        };
        let at = began + step.mul_f64(fraction);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let cancelled = Instant::now();
        flag.store(true, Ordering::Release);
        let out = worker.join().map_err(|_| "the run panicked")?;
        let latency = cancelled.elapsed();
        if !matches!(out, Err(Error::Cancelled)) {
            return Err(format!(
                "trial {trial}: the run did not end cancelled: {:?}",
                out.map(|_| ())
            )
            .into());
        }
        println!(
            "{trial:>5}  {fraction:>9.1}  {:>6.3} s  {:>8.2} s",
            latency.as_secs_f64(),
            step.mul_f64(1.0 - fraction).as_secs_f64()
        );
        latencies.push(latency);
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let max = latencies.last().copied().unwrap_or(Duration::ZERO);
    println!(
        "cancel latency: median {:.3} s, max {:.3} s, over {trials} trials (step {:.2} s; a cancel checked only \
         between steps waits {:.2} s on average at these points)",
        median.as_secs_f64(),
        max.as_secs_f64(),
        step.as_secs_f64(),
        step.as_secs_f64() * 0.5
    );
    Ok(())
}
