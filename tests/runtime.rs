//! The game-engine runtime from Rust: background jobs (poll, wait, cancel, take, drop while running),
//! per-run hooks (previews, log sink, cancel flag), parallel runs on one set of models.

mod common;

use autopipeline::pipeline::{LogLevel, LogSink, PreviewMode, RunControl};
use autopipeline::runtime::{self, Job, JobState};
use autopipeline::{Error, Family, LoadOptions, Pipeline, RunParams, Task};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn ckpt() -> String {
    common::data_dir()
        .join("checkpoints/sd15-tiny")
        .to_str()
        .unwrap()
        .to_string()
}

/// One pipeline for the whole file: loading takes longer than the runs.
fn pipe() -> &'static Pipeline {
    static PIPE: OnceLock<Pipeline> = OnceLock::new();
    PIPE.get_or_init(|| {
        Pipeline::from_pretrained(&ckpt(), Task::Text2Image, &LoadOptions::default(), None).unwrap()
    })
}

fn params(steps: usize) -> RunParams {
    RunParams {
        prompt: "A painting of a squirrel eating a burger".into(),
        negative_prompt: Some("blurry".into()),
        num_inference_steps: Some(steps),
        width: Some(64),
        height: Some(64),
        seed: 42,
        ..Default::default()
    }
}

/// Polls like a game loop (no blocking call) until the job finishes; bounded.
fn poll_until_finished<T>(job: &Job<T>) -> runtime::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = job.poll();
        if s.state.is_finished() {
            return s;
        }
        assert!(Instant::now() < deadline, "job did not finish: {s:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until the job reports at least `step` steps; bounded.
fn wait_for_step<T>(job: &Job<T>, step: usize) -> runtime::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = job.poll();
        if s.step >= step || s.state.is_finished() {
            return s;
        }
        assert!(Instant::now() < deadline, "job never reached step {step}: {s:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn async_run_equals_the_synchronous_run_bit_for_bit() {
    let p = pipe();
    let sync = p.run(&params(4), None).unwrap();
    let job = runtime::run_async(p, params(4), RunControl::new()).unwrap();
    let status = poll_until_finished(&job);
    assert_eq!(status.state, JobState::Done);
    assert_eq!(
        (status.step, status.total),
        (5, 5),
        "PNDM runs 5 UNet steps for 4"
    );
    assert!(status.elapsed > Duration::ZERO);
    // Elapsed time is frozen once finished.
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(job.poll().elapsed, status.elapsed);
    let out = job.take().expect("finished").unwrap();
    assert!(job.take().is_none(), "a result is handed out once");
    assert_eq!(out.images.len(), 1);
    assert_eq!(out.images[0].data, sync.images[0].data);
}

#[test]
fn cancel_takes_effect_within_one_step_and_the_pipeline_stays_usable() {
    let p = pipe();
    let job = runtime::run_async(p, params(40), RunControl::new()).unwrap();
    let at_cancel = wait_for_step(&job, 2);
    job.cancel();
    let end = poll_until_finished(&job);
    assert_eq!(end.state, JobState::Cancelled, "{end:?}");
    assert!(
        end.step <= at_cancel.step + 1,
        "ran on after cancel: {at_cancel:?} → {end:?}"
    );
    assert!(matches!(job.take(), Some(Err(Error::Cancelled))));

    // Cancel from the progress callback (return false) and through a shared flag.
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = Arc::clone(&flag);
    let control = RunControl::new()
        .with_cancel_flag(flag)
        .with_progress(move |step, _| {
            if step == 3 {
                f2.store(true, Ordering::Release);
            }
            true
        });
    let job = runtime::run_async(p, params(40), control).unwrap();
    let end = poll_until_finished(&job);
    assert_eq!((end.state, end.step), (JobState::Cancelled, 3));
    let mut c = RunControl::new().with_progress(|step, _| step < 2);
    assert!(matches!(p.run_with(&params(40), &mut c), Err(Error::Cancelled)));

    // A failed run (invalid size) also leaves the pipeline usable.
    let bad = RunParams {
        width: Some(60),
        ..params(4)
    };
    let job = runtime::run_async(p, bad, RunControl::new()).unwrap();
    assert!(job.wait(Some(Duration::from_secs(60))));
    assert_eq!(job.poll().state, JobState::Failed);
    assert!(matches!(job.take(), Some(Err(Error::InvalidArgument(_)))));

    let again = p.run(&params(4), None).unwrap();
    let fresh = p.run(&params(4), None).unwrap();
    assert_eq!(again.images[0].data, fresh.images[0].data);
}

#[test]
fn wait_times_out_then_succeeds() {
    let p = pipe();
    let job = runtime::run_async(p, params(40), RunControl::new()).unwrap();
    let t = Instant::now();
    assert!(
        !job.wait(Some(Duration::from_millis(1))),
        "40 steps cannot finish in 1 ms"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "wait overslept: {:?}",
        t.elapsed()
    );
    assert!(!job.wait(Some(Duration::ZERO)));
    job.cancel();
    assert!(job.wait(None));
    assert!(job.poll().state.is_finished());
}

#[test]
fn dropping_a_running_job_is_quick_and_its_worker_lets_go_of_the_models() {
    // A pipeline of its own, so the reference count below is not disturbed by other tests.
    let p = Pipeline::from_pretrained(&ckpt(), Task::Text2Image, &LoadOptions::default(), None).unwrap();
    let models = Arc::clone(p.components());
    let baseline = Arc::strong_count(&models);
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&calls);
    let control = RunControl::new().with_progress(move |_, _| {
        c2.fetch_add(1, Ordering::SeqCst);
        true
    });
    let job = runtime::run_async(&p, params(200), control).unwrap();
    wait_for_step(&job, 1);
    drop(p); // the pipeline goes first: the job holds the models itself
    let t = Instant::now();
    drop(job);
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "drop blocked for {:?}",
        t.elapsed()
    );
    // The worker stops after the step in progress and releases its clone of the pipeline.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Arc::strong_count(&models) > baseline - 1 {
        assert!(Instant::now() < deadline, "the worker still holds the models");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(calls.load(Ordering::SeqCst) < 200);
}

#[test]
fn load_async_gives_a_pipeline_and_cancels_between_components() {
    let job = runtime::load_async(&ckpt(), Task::Text2Image, LoadOptions::default(), None).unwrap();
    let end = poll_until_finished(&job);
    assert_eq!(end.state, JobState::Done, "{end:?}");
    assert_eq!((end.step, end.total), (3, 3), "text encoder, UNet, VAE");
    let loaded = job.take().unwrap().unwrap();
    let a = loaded.run(&params(2), None).unwrap();
    let b = pipe().run(&params(2), None).unwrap();
    assert_eq!(a.images[0].data, b.images[0].data);

    // Cancel after the first component: the load stops there.
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = Arc::clone(&seen);
    let progress = Box::new(move |done: usize, _total: usize| {
        s2.store(done, Ordering::SeqCst);
        done < 1
    });
    let job = runtime::load_async(&ckpt(), Task::Text2Image, LoadOptions::default(), Some(progress)).unwrap();
    let end = poll_until_finished(&job);
    assert_eq!(end.state, JobState::Cancelled);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert!(matches!(job.take(), Some(Err(Error::Cancelled))));

    // Cancelled before it starts: no component is loaded.
    let job = runtime::load_async(&ckpt(), Task::Text2Image, LoadOptions::default(), None).unwrap();
    job.cancel();
    assert!(job.wait(Some(Duration::from_secs(60))));
    assert_eq!(job.poll().state, JobState::Cancelled);
    assert!(job.poll().step <= 1);

    // A missing checkpoint fails the job, not the caller.
    let job = runtime::load_async(
        "/nonexistent/ckpt",
        Task::Text2Image,
        LoadOptions::default(),
        None,
    )
    .unwrap();
    assert!(job.wait(Some(Duration::from_secs(60))));
    assert_eq!(job.poll().state, JobState::Failed);
    assert!(matches!(job.take(), Some(Err(Error::NotFound(_)))));
}

#[test]
fn previews_come_every_n_steps_in_both_modes() {
    let p = pipe();
    type Seen = Vec<(usize, usize, u32, u32, u32)>; // step, total, width, height, count
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s2 = Arc::clone(&seen);
    let mut control = RunControl::new().with_preview(2, PreviewMode::Latent, move |step, total, images| {
        let i = &images[0];
        assert_eq!(i.data.len(), (i.width * i.height * 4) as usize);
        assert!(i.data.chunks(4).all(|px| px[3] == 255));
        s2.lock()
            .unwrap()
            .push((step, total, i.width, i.height, images.len() as u32));
    });
    let out = p.run_with(&params(4), &mut control).unwrap();
    let side = 64 / p.components().vae_scale_factor() as u32; // latent resolution
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(2, 5, side, side, 1), (4, 5, side, side, 1)]
    );
    // Previews do not change the result.
    assert_eq!(
        out.images[0].data,
        p.run(&params(4), None).unwrap().images[0].data
    );

    // A VAE preview at the last step is the final image.
    let last: Arc<Mutex<Option<autopipeline::Image>>> = Arc::default();
    let l2 = Arc::clone(&last);
    let mut control = RunControl::new().with_preview(5, PreviewMode::Vae, move |_, _, images| {
        *l2.lock().unwrap() = Some(images[0].clone());
    });
    let out = p.run_with(&params(4), &mut control).unwrap();
    let preview = last.lock().unwrap().take().expect("a preview at step 5");
    assert_eq!((preview.width, preview.height), (64, 64));
    assert_eq!(preview.data, out.images[0].data);
}

#[test]
fn latent_preview_uses_the_family_factors() {
    // One latent pixel with channel k = 1: the preview colour is row k of the factor table.
    use autopipeline::pipeline::control::{latent_rgb_factors, latent_rgb_preview};
    for family in Family::ALL {
        if matches!(family, Family::Flux | Family::StableDiffusion3) {
            // No fitted factors for the 16-channel VAEs yet: latent previews are refused (the run turns
            // them off with a warning), VAE previews work.
            assert!(latent_rgb_factors(family).is_none());
            let t =
                candle_core::Tensor::zeros((1, 16, 1, 1), candle_core::DType::F32, &candle_core::Device::Cpu)
                    .unwrap();
            let e = latent_rgb_preview(&t, family).unwrap_err().to_string();
            assert!(e.contains("VAE preview mode"), "{e}");
            continue;
        }
        let f = latent_rgb_factors(family).expect("every UNet family has preview factors");
        assert_eq!(f.len(), 4);
        for k in 0..4 {
            let mut v = [0f32; 4];
            v[k] = 1.0;
            let t =
                candle_core::Tensor::from_vec(v.to_vec(), (1, 4, 1, 1), &candle_core::Device::Cpu).unwrap();
            let img = &latent_rgb_preview(&t, family).unwrap()[0];
            for (c, factor) in f[k].iter().enumerate() {
                let want = (((factor + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
                assert_eq!(img.data[c], want, "{family:?} channel {k} colour {c}");
            }
        }
    }
    assert_ne!(
        latent_rgb_factors(Family::StableDiffusion),
        latent_rgb_factors(Family::StableDiffusionXl)
    );
}

#[test]
fn warnings_and_outcomes_go_to_the_run_log_sink() {
    let p = pipe();
    let lines: Arc<Mutex<Vec<(LogLevel, String)>>> = Arc::default();
    let l2 = Arc::clone(&lines);
    let sink = LogSink::new(LogLevel::Info, move |level, msg| {
        l2.lock().unwrap().push((level, msg.to_string()))
    });
    let long = RunParams {
        prompt: "a very long prompt about a squirrel ".repeat(20),
        ..params(1)
    };
    let mut control = RunControl::new().with_log(sink.clone());
    let out = p.run_with(&long, &mut control).unwrap();
    assert!(!out.warnings.is_empty());
    {
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), out.warnings.len(), "{lines:?}");
        assert!(lines.iter().all(|(l, _)| *l == LogLevel::Warn));
        assert!(lines[0].1.contains("truncated"), "{lines:?}");
    }
    // Below the sink's level: the Debug timing line is not delivered.
    lines.lock().unwrap().clear();
    let mut control = RunControl::new().with_log(sink.clone());
    p.run_with(&params(1), &mut control).unwrap();
    assert!(lines.lock().unwrap().is_empty());
    // Failures are logged at Error, cancels at Info.
    let mut control = RunControl::new().with_log(sink.clone());
    let _ = p.run_with(
        &RunParams {
            width: Some(60),
            ..params(1)
        },
        &mut control,
    );
    let mut control = RunControl::new().with_log(sink).with_progress(|_, _| false);
    let _ = p.run_with(&params(2), &mut control);
    let lines = lines.lock().unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0].0, LogLevel::Error);
    assert!(lines[0].1.contains("divisible by 8"), "{lines:?}");
    assert_eq!(lines[1].0, LogLevel::Info);
    assert!(lines[1].1.contains("cancelled"), "{lines:?}");
}

#[test]
fn concurrent_runs_on_one_pipeline_and_its_siblings_agree_with_serial_runs() {
    let p = pipe();
    let sibling = p.from_pipe(Task::Image2Image, &Default::default()).unwrap();
    let back = sibling.from_pipe(Task::Text2Image, &Default::default()).unwrap();
    assert!(back.shares_components_with(p));
    let steps = 8;
    let seeds = [1u64, 2, 3, 4];
    let serial: Vec<Vec<u8>> = seeds
        .iter()
        .map(|&seed| {
            p.run(
                &RunParams {
                    seed,
                    ..params(steps)
                },
                None,
            )
            .unwrap()
            .images[0]
                .data
                .clone()
        })
        .collect();

    // Two runs at once on two threads (the pipeline and a from_pipe sibling).
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            p.run(
                &RunParams {
                    seed: 1,
                    ..params(steps)
                },
                None,
            )
            .unwrap()
        });
        let b = s.spawn(|| {
            back.run(
                &RunParams {
                    seed: 2,
                    ..params(steps)
                },
                None,
            )
            .unwrap()
        });
        assert_eq!(a.join().unwrap().images[0].data, serial[0]);
        assert_eq!(b.join().unwrap().images[0].data, serial[1]);
    });

    // Four async jobs at once, on the pipeline and a from_pipe sibling: each equals its serial run.
    let jobs: Vec<_> = seeds
        .iter()
        .enumerate()
        .map(|(i, &seed)| {
            let target = if i % 2 == 0 { p } else { &back };
            runtime::run_async(
                target,
                RunParams {
                    seed,
                    ..params(steps)
                },
                RunControl::new(),
            )
            .unwrap()
        })
        .collect();
    for (job, want) in jobs.iter().zip(&serial) {
        assert!(job.wait(Some(Duration::from_secs(120))));
        assert_eq!(&job.take().unwrap().unwrap().images[0].data, want);
    }
}

/// CPU time (user + system) this process has used, in ms, from `/proc/self/stat` (Linux; 0 elsewhere).
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th of those.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) * 10.0
    // 100 ticks/s
}

/// Whether two runs at once actually overlap on this machine's CPU, or only contend: prints wall and
/// CPU time of one run alone, of two in a row, and of two at once (median of 3 by wall time). Run it
/// alone so no other test competes: `cargo test --test runtime -- --ignored --nocapture
/// measure_parallel_runs`; `RAYON_NUM_THREADS=1` shows the same with single-threaded kernels,
/// `AP_MEASURE_SIZE` sets the image side (default 64).
#[test]
#[ignore = "a measurement, not a check"]
fn measure_parallel_runs() {
    let p = pipe();
    let size: usize = std::env::var("AP_MEASURE_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let run = |seed| {
        let params = RunParams {
            seed,
            width: Some(size),
            height: Some(size),
            ..params(10)
        };
        p.run(&params, None).unwrap();
    };
    run(0); // warm-up
    let median = |f: &dyn Fn()| {
        let mut t: Vec<(f64, f64)> = (0..3)
            .map(|_| {
                let (t, c) = (Instant::now(), cpu_ms());
                f();
                (t.elapsed().as_secs_f64() * 1e3, cpu_ms() - c)
            })
            .collect();
        t.sort_by(|a, b| a.0.total_cmp(&b.0));
        t[1]
    };
    let one = median(&|| run(1));
    let serial = median(&|| {
        run(1);
        run(2);
    });
    let parallel = median(&|| {
        std::thread::scope(|s| {
            s.spawn(|| run(1));
            s.spawn(|| run(2));
        })
    });
    eprintln!(
        "{size}x{size}, 10 steps, {} CPUs, RAYON_NUM_THREADS={}: wall / CPU ms: one run {:.0} / {:.0}, two in a \
         row {:.0} / {:.0}, two at once {:.0} / {:.0}; at once ÷ in a row (wall) = {:.2} (0.5 = perfect overlap, \
         1.0 = no gain)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        one.0,
        one.1,
        serial.0,
        serial.1,
        parallel.0,
        parallel.1,
        parallel.0 / serial.0
    );
}

/// A soak: 8 threads each do a mix of synchronous runs, async runs and async runs cancelled mid-way,
/// on one pipeline and its from_pipe siblings at once. Every completed image must equal the serial
/// run for its seed; every cancel must end as `Cancelled`; the pipelines stay usable afterwards.
#[test]
fn eight_threads_mixing_runs_and_cancels_stay_exact() {
    let p = pipe();
    let i2i = p.from_pipe(Task::Image2Image, &Default::default()).unwrap();
    let sibling = i2i.from_pipe(Task::Text2Image, &Default::default()).unwrap();
    let steps = 6;
    let seeds = [11u64, 12, 13];
    let want: Vec<Vec<u8>> = seeds
        .iter()
        .map(|&seed| {
            p.run(
                &RunParams {
                    seed,
                    ..params(steps)
                },
                None,
            )
            .unwrap()
            .images[0]
                .data
                .clone()
        })
        .collect();
    let cancelled = AtomicUsize::new(0);
    let completed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8usize {
            let (want, cancelled, completed) = (&want, &cancelled, &completed);
            let target = if t % 2 == 0 { p } else { &sibling };
            s.spawn(move || {
                for round in 0..3usize {
                    let k = (t + round) % seeds.len();
                    let run = RunParams {
                        seed: seeds[k],
                        ..params(steps)
                    };
                    match (t + round) % 3 {
                        0 => {
                            assert_eq!(target.run(&run, None).unwrap().images[0].data, want[k]);
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        1 => {
                            let job = runtime::run_async(target, run, RunControl::new()).unwrap();
                            poll_until_finished(&job);
                            assert_eq!(job.take().unwrap().unwrap().images[0].data, want[k]);
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            let job = runtime::run_async(target, run, RunControl::new()).unwrap();
                            wait_for_step(&job, 1);
                            job.cancel();
                            let status = poll_until_finished(&job);
                            match job.take().unwrap() {
                                Err(Error::Cancelled) => {
                                    assert_eq!(status.state, JobState::Cancelled);
                                    cancelled.fetch_add(1, Ordering::Relaxed);
                                }
                                // The cancel can land after the last step: then the image is complete.
                                Ok(out) => assert_eq!(out.images[0].data, want[k]),
                                Err(e) => panic!("thread {t}: unexpected error {e}"),
                            }
                        }
                    }
                }
            });
        }
    });
    eprintln!(
        "8 threads × 3 rounds: {} completed exactly, {} cancelled",
        completed.load(Ordering::Relaxed),
        cancelled.load(Ordering::Relaxed)
    );
    assert!(completed.load(Ordering::Relaxed) >= 16);
    assert!(cancelled.load(Ordering::Relaxed) >= 1);
    // Still usable, still exact.
    assert_eq!(
        sibling
            .run(
                &RunParams {
                    seed: seeds[0],
                    ..params(steps)
                },
                None
            )
            .unwrap()
            .images[0]
            .data,
        want[0]
    );
}

/// Cancellation points inside model calls: with the run's cancel flag set, the UNet, the VAE, the
/// text encoders and the FLUX and SD3 transformers stop at their next block with `Cancelled` (so a
/// cancel does not wait for the end of a long step); with it clear they run to the end.
#[test]
fn models_stop_at_their_next_block_once_cancelled() {
    use autopipeline::layers::cancel;
    use autopipeline::pipeline::families::{Denoiser, ModelCond};
    use candle_core::{DType, Device, Tensor};
    let load = |name: &str| {
        let dir = common::data_dir().join("checkpoints").join(name);
        Pipeline::from_pretrained(dir.to_str().unwrap(), Task::Text2Image, &Default::default(), None).unwrap()
    };
    let dev = Device::Cpu;
    let outcome = |f: &dyn Fn() -> candle_core::Result<Tensor>, set: bool| {
        let _scope = cancel::scope(Arc::new(AtomicBool::new(set)));
        f().map_err(autopipeline::Error::from)
    };
    let expect = |what: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| {
        assert!(outcome(f, false).is_ok(), "{what}: fails without a cancel");
        let e = outcome(f, true).expect_err(what);
        assert!(matches!(e, autopipeline::Error::Cancelled), "{what}: {e}");
    };

    let sd = load("sd15-tiny");
    let c = sd.components();
    let t = Tensor::full(500f32, 1, &dev).unwrap();
    let ctx = Tensor::zeros((1, 77, 32), DType::F32, &dev).unwrap();
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
    let unet = c.unet().unwrap();
    expect("unet", &|| {
        Denoiser::forward(unet, &x, &t, &ModelCond::context(ctx.clone()))
    });
    expect("vae decode", &|| c.vae.decode_with(&x, Default::default()));
    let ids = Tensor::new(&[[0u32; 77]], &dev).unwrap();
    expect("clip", &|| {
        Ok(c.text_encoder.model.forward(&ids)?.last_hidden_state)
    });

    let flux = load("flux-dev-tiny");
    let c = flux.components();
    let x = Tensor::zeros((1, 16, 8, 8), DType::F32, &dev).unwrap();
    let cond = ModelCond {
        pooled: Some(Tensor::zeros((1, 32), DType::F32, &dev).unwrap()),
        guidance: Some(Tensor::full(3.5f32, 1, &dev).unwrap()),
        ..ModelCond::context(Tensor::zeros((1, 8, 32), DType::F32, &dev).unwrap())
    };
    let transformer = c.flux_transformer.as_ref().unwrap();
    expect("flux transformer", &|| {
        Denoiser::forward(transformer, &x, &t, &cond)
    });
    let t5 = &c.t5.as_ref().unwrap().model;
    let ids = Tensor::new(&[[1u32, 0, 0, 0]], &dev).unwrap();
    expect("t5", &|| t5.forward(&ids));

    let sd3 = load("sd3-tiny");
    let c = sd3.components();
    let cond = ModelCond {
        pooled: Some(Tensor::zeros((1, 48), DType::F32, &dev).unwrap()),
        ..ModelCond::context(Tensor::zeros((1, 8, 64), DType::F32, &dev).unwrap())
    };
    let transformer = c.sd3_transformer.as_ref().unwrap();
    expect("sd3 transformer", &|| {
        Denoiser::forward(transformer, &x, &t, &cond)
    });
}
