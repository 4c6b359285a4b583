//! Weights read on first use (`components::weights`): a lazily loaded pipeline gives the images a
//! preloaded one gives, every pipeline and thread sharing the models sees each weight read, the memory
//! check counts what is still unread, and a weight file that changes under a lazy pipeline fails the
//! run with an I/O error naming the file instead of crashing.

mod common;

use autopipeline::{Error, LoadOptions, Pipeline, RunParams, Task};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn checkpoint() -> PathBuf {
    common::data_dir().join("checkpoints/sd15-tiny")
}

fn load(dir: &Path, preload: bool) -> Pipeline {
    let opts = LoadOptions {
        preload,
        ..Default::default()
    };
    Pipeline::from_pretrained(dir.to_str().unwrap(), Task::Text2Image, &opts, None).unwrap()
}

fn params() -> RunParams {
    RunParams {
        prompt: "a lighthouse on a cliff at dusk".into(),
        negative_prompt: Some("blurry".into()),
        num_inference_steps: Some(2),
        width: Some(64),
        height: Some(64),
        seed: 11,
        ..Default::default()
    }
}

/// Bytes of float data in the component's safetensors files (from their headers).
fn stored_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for component in ["text_encoder", "unet", "vae"] {
        for entry in std::fs::read_dir(dir.join(component)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                let bytes = std::fs::read(&path).unwrap();
                let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                total += (bytes.len() - 8 - n) as u64;
            }
        }
    }
    total
}

#[test]
fn a_lazy_load_reads_weights_on_first_use_and_matches_a_preloaded_one() {
    let dir = checkpoint();
    let lazy = load(&dir, false);
    let pending = lazy.components().pending_weight_bytes();
    // Nearly all of a checkpoint is convolution and linear weights; what is left (norms, biases,
    // embeddings) is read during the load. Pending bytes add the read buffer of the largest weight.
    let stored = stored_bytes(&dir);
    assert!(
        pending > stored * 3 / 4 && pending <= 2 * stored,
        "pending {pending} of {stored} stored bytes"
    );
    let derived = lazy.from_pipe(Task::Image2Image, &Default::default()).unwrap();
    let want = lazy.run(&params(), None).unwrap().images;
    // text2img never runs the VAE encoder, so its weights stay on disk (as unused mapped pages do).
    let unread = lazy.components().pending_weight_bytes();
    assert!(
        unread > 0 && unread < pending / 2,
        "{unread} of {pending} bytes still unread"
    );
    // from_pipe shares the models: what one pipeline read, the other has, and img2img reads the rest.
    assert_eq!(derived.components().pending_weight_bytes(), unread);
    let image = want[0].clone();
    let i2i = RunParams {
        image: Some(image),
        ..params()
    };
    derived.run(&i2i, None).unwrap();
    assert_eq!(lazy.components().pending_weight_bytes(), 0);

    let preloaded = load(&dir, true);
    assert_eq!(preloaded.components().pending_weight_bytes(), 0);
    let got = preloaded.run(&params(), None).unwrap().images;
    assert_eq!(
        got, want,
        "a preloaded pipeline gives other pixels than a lazy one"
    );
}

#[test]
fn concurrent_first_runs_on_a_lazy_pipeline_agree() {
    let want = load(&checkpoint(), true).run(&params(), None).unwrap().images;
    let lazy = Arc::new(load(&checkpoint(), false));
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let p = lazy.clone();
            std::thread::spawn(move || p.run(&params(), None).unwrap().images)
        })
        .collect();
    for run in runs {
        assert_eq!(run.join().unwrap(), want);
    }
}

#[test]
fn a_weight_file_cut_short_after_a_lazy_load_fails_the_run_with_an_io_error() {
    let work = std::env::temp_dir().join(format!("autopipeline-weights-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (lazy_dir, preload_dir) = (work.join("lazy"), work.join("preload"));
    common::copy_dir(&checkpoint(), &lazy_dir);
    common::copy_dir(&checkpoint(), &preload_dir);
    let lazy = load(&lazy_dir, false);
    let preloaded = load(&preload_dir, true);

    // Keep the header, drop the tensors: every deferred UNet weight now lies past the end.
    for dir in [&lazy_dir, &preload_dir] {
        let path = dir.join("unet/diffusion_pytorch_model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        std::fs::write(&path, &bytes[..header]).unwrap();
    }
    match lazy.run(&params(), None) {
        Err(Error::Io(msg)) => {
            assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
            assert!(msg.contains("preload"), "{msg}");
        }
        other => panic!("expected an I/O error, got {:?}", other.map(|o| o.images.len())),
    }
    // A preloaded pipeline read everything while loading and no longer needs the files.
    preloaded.run(&params(), None).unwrap();
    let _ = std::fs::remove_dir_all(&work);
}

/// Runs started from a rayon pool's own threads (a Rust caller generating in `par_iter`) give the
/// images a preloaded pipeline gives. (While one of them packs a weight, its thread runs other rayon
/// jobs, which may be another run's first use of that same weight: waiting for the read there would
/// wait on itself. The tiny checkpoint's weights pack in one task, so the unit test in
/// `components::weights` pins that case.)
#[test]
fn first_uses_inside_a_rayon_pool_do_not_deadlock() {
    use rayon::prelude::*;
    let want = load(&checkpoint(), true).run(&params(), None).unwrap().images;
    let lazy = load(&checkpoint(), false);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let runs: Vec<_> = pool.install(|| {
        (0..4)
            .into_par_iter()
            .map(|_| lazy.run(&params(), None).unwrap().images)
            .collect()
    });
    for images in runs {
        assert_eq!(images, want);
    }
}

/// Rewrites every float32 tensor of `dir`'s text encoder, UNet and VAE files through `rewrite`, which
/// gets the tensor's header entry and its bytes.
fn rewrite_f32_tensors(dir: &Path, rewrite: impl Fn(&mut serde_json::Value, &mut Vec<u8>)) {
    for file in [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        let path = dir.join(file);
        let mut tensors = common::read_safetensors(&path);
        for (_, info, bytes) in &mut tensors {
            if info["dtype"] == "F32" {
                rewrite(info, bytes);
            }
        }
        std::fs::write(&path, common::write_safetensors(&tensors)).unwrap();
    }
}

/// The float32 values of little-endian `bytes`.
fn floats(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
}

/// Rewrites every float32 tensor of `dir`'s models rounded to float16, stored as float16 (`half`) or
/// as float32 holding the rounded values.
fn round_to_f16(dir: &Path, store_half: bool) {
    rewrite_f32_tensors(dir, |info, bytes| {
        let halves: Vec<half::f16> = floats(bytes).map(half::f16::from_f32).collect();
        *bytes = if store_half {
            info["dtype"] = "F16".into();
            halves.iter().flat_map(|h| h.to_le_bytes()).collect()
        } else {
            halves.iter().flat_map(|h| h.to_f32().to_le_bytes()).collect()
        };
    });
}

/// Weights stored in half precision take the other first-use path (read, convert, then pack) and
/// need a read buffer: the same values stored as float32 (packed straight from the file) give the
/// same pixels, and only the half-precision checkpoint counts a buffer in its unread bytes.
#[test]
fn half_precision_files_are_read_converted_and_packed_on_first_use() {
    let work = std::env::temp_dir().join(format!("autopipeline-weights-f16-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (half_dir, single_dir) = (work.join("f16"), work.join("f32"));
    common::copy_dir(&checkpoint(), &half_dir);
    common::copy_dir(&checkpoint(), &single_dir);
    round_to_f16(&half_dir, true);
    round_to_f16(&single_dir, false);
    let (half, single) = (load(&half_dir, false), load(&single_dir, false));
    let (half_pending, single_pending) = (
        half.components().pending_weight_bytes(),
        single.components().pending_weight_bytes(),
    );
    assert!(
        half_pending > single_pending && half_pending <= 2 * single_pending,
        "unread: {half_pending} bytes stored as f16, {single_pending} as f32"
    );
    let got = half.run(&params(), None).unwrap().images;
    let want = single.run(&params(), None).unwrap().images;
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&work);
}

/// Rewrites every float32 tensor of `dir`'s models as `round` gives it, still stored as float32.
fn round_values(dir: &Path, round: fn(f32) -> f32) {
    rewrite_f32_tensors(dir, |_, bytes| {
        *bytes = floats(bytes).flat_map(|v| round(v).to_le_bytes()).collect();
    });
}

/// Half precision on the CPU holds half-precision values and computes in float32 with the float32
/// kernels, keeping the packed weights in half precision: each model gives bit for bit what the float32
/// pipeline gives on the same values stored as float32, and half the bytes wait to be read.
#[test]
fn half_precision_on_the_cpu_holds_half_values_computed_in_f32() {
    use candle_core::{DType, Device, Tensor};
    type Round = fn(f32) -> f32;
    let rounds: [(&str, DType, Round); 2] = [
        ("f16", DType::F16, |v| half::f16::from_f32(v).to_f32()),
        ("bf16", DType::BF16, |v| half::bf16::from_f32(v).to_f32()),
    ];
    let dir = checkpoint();
    let single = load(&dir, false);
    let single_pending = single.components().pending_weight_bytes();
    for (name, dtype, round) in rounds {
        let work =
            std::env::temp_dir().join(format!("autopipeline-weights-cpu-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        common::copy_dir(&dir, &work);
        round_values(&work, round);
        let opts = LoadOptions {
            dtype: Some(name.into()),
            ..Default::default()
        };
        let half = Pipeline::from_pretrained(dir.to_str().unwrap(), Task::Text2Image, &opts, None).unwrap();
        let rounded = load(&work, false);
        let half_pending = half.components().pending_weight_bytes();
        assert!(
            half_pending > 0 && (half_pending as f64) < 0.75 * single_pending as f64,
            "{name}: unread {half_pending} bytes kept in half precision, {single_pending} as f32"
        );

        let (h, r) = (half.components(), rounded.components());
        assert_eq!(h.dtype, dtype, "the pipeline's dtype (noise is drawn in it)");
        let same = |a: &Tensor, b: &Tensor, what: &str| {
            assert_eq!(a.dtype(), DType::F32, "{name}: {what} computes in f32");
            let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
            assert_eq!(
                a.to_vec1::<f32>().unwrap(),
                b.to_vec1::<f32>().unwrap(),
                "{name}: {what}"
            );
        };
        let ids = Tensor::new(h.text_encoder.tokenizer.encode("a lighthouse").ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let (ctx_h, ctx_r) = (
            h.text_encoder.model.forward(&ids).unwrap().last_hidden_state,
            r.text_encoder.model.forward(&ids).unwrap().last_hidden_state,
        );
        same(&ctx_h, &ctx_r, "text encoder");
        let x = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &Device::Cpu).unwrap();
        let (eps_h, eps_r) = (
            h.unet().unwrap().forward(&x, 500.0, &ctx_h, None).unwrap(),
            r.unet().unwrap().forward(&x, 500.0, &ctx_r, None).unwrap(),
        );
        same(&eps_h, &eps_r, "UNet");
        same(
            &h.vae.decode(&x).unwrap(),
            &r.vae.decode(&x).unwrap(),
            "VAE decoder",
        );
        let _ = std::fs::remove_dir_all(&work);
    }
}
