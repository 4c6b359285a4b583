//! Our CUDA kernels (src/kernels/cuda) against candle's own ops computed in f32 on the same GPU, on
//! random inputs over the shapes the SD / SDXL UNets and VAEs use and the edges of each kernel's tiling
//! (partial tiles, heads not a multiple of 16, bands of one row). Built only with `--features cuda` and
//! run where a GPU is present (scripts/cuda/lent_gpu.sh); without one each test says so and passes.
//!
//! Tolerances: each kernel rounds its output once, so f16 results are within a few f16 ulps of the f32
//! reference (relative 2^-11 each, plus the f16 rounding of attention probabilities and of the inputs to
//! f32-accumulated matmuls); a wrong index or a missed tile gives errors of the size of the values.
#![cfg(feature = "cuda")]

mod common;

use autopipeline::kernels::cuda;
use autopipeline::layers::bounded::{ConvAdd, ConvShape};
use candle_core::{DType, Device, Tensor, D};
use common::cases::max_abs;

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("no CUDA device ({e}): skipped");
            None
        }
    }
}

fn randn(dev: &Device, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Largest |a − b| over max(1, max |b|), in f32.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (f32_of(a), f32_of(b));
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    max_abs(&a, &b) / scale.to_scalar::<f32>().unwrap().max(1.0)
}

fn tol(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 2e-5,
        DType::F16 => 4e-3,
        _ => 3e-2,
    }
}

fn f32_of(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

#[test]
fn kernel_settings() {
    assert_eq!(cuda::kernels_for(""), cuda::KERNELS);
    assert_eq!(cuda::kernels_for("1"), cuda::kernels_for(""));
    assert_eq!(cuda::kernels_for("all"), cuda::KERNELS);
    assert!(cuda::kernels_for("0").is_empty());
    assert_eq!(cuda::kernels_for(" norm , attention,nope"), ["norm", "attention"]);
}

/// A convolution path under test: our columns, or cuDNN in `cudnn` builds.
type ConvPath = fn(&Tensor, &Tensor, ConvShape, ConvAdd<'_>, usize) -> candle_core::Result<Tensor>;

// One test per path, so that scripts/cuda/lent_gpu.sh, which runs each test in its own process, can
// tell which path failed.
#[test]
fn convolution_columns_match_candle() {
    convolution_matches_candle("columns", cuda::conv2d_columns);
}

#[cfg(feature = "cudnn")]
#[test]
fn convolution_cudnn_matches_candle() {
    convolution_matches_candle("cudnn", |x, w, s, a, _| cuda::conv2d_cudnn(x, w, s, a));
}

fn convolution_matches_candle(name: &str, conv: ConvPath) {
    let Some(dev) = gpu() else { return };
    // (b, c_in, c_out, h, w, kernel, stride, padding, up, band bytes): the specialised 3×3 (×1, ×2
    // upsampling) and 1×1 columns, the generic ones (2×2, ×3), pointwise without columns, bands.
    let cases = [
        (2, 4, 320, 16, 16, 3, 1, 1, 1, usize::MAX),
        (2, 320, 320, 19, 13, 3, 1, 1, 1, usize::MAX),
        (2, 64, 32, 9, 7, 3, 2, 1, 1, usize::MAX),
        (1, 16, 16, 11, 6, 3, 2, 0, 1, usize::MAX),
        (2, 64, 64, 8, 8, 3, 1, 1, 2, usize::MAX),
        (2, 40, 24, 7, 9, 1, 1, 0, 1, usize::MAX),
        (2, 24, 16, 9, 7, 1, 2, 0, 1, usize::MAX),
        (1, 8, 8, 7, 7, 2, 1, 0, 1, usize::MAX),
        (1, 8, 8, 5, 4, 3, 1, 1, 3, usize::MAX),
        (2, 32, 48, 10, 12, 3, 1, 1, 1, 1),
        (1, 32, 16, 6, 9, 3, 1, 1, 2, 4000),
    ];
    let cpu = |t: &Tensor| f32_of(t).to_device(&Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for &(b, ci, co, h, w, k, s, p, up, band) in &cases {
            let x = randn(&dev, &[b, ci, h, w], dtype);
            let wt = (randn(&dev, &[co, ci, k, k], dtype) * (1.0 / ((ci * k * k) as f64).sqrt())).unwrap();
            let bias = randn(&dev, &[co], dtype);
            let chan = randn(&dev, &[b, co], dtype);
            let shape = ConvShape {
                kernel: k,
                stride: s,
                padding: p,
                up,
            };
            // On the CPU: candle's CUDA convolution is cuDNN's in `cudnn` builds, which may run f32
            // through TF32.
            let reference = cpu(&x)
                .upsample_nearest2d(h * up, w * up)
                .unwrap()
                .conv2d(&cpu(&wt), p, s, 1, 1)
                .unwrap()
                .to_device(&dev)
                .unwrap();
            let res = randn(&dev, reference.dims(), dtype);
            let with_adds = reference
                .broadcast_add(&f32_of(&bias).reshape((1, co, 1, 1)).unwrap())
                .unwrap()
                .broadcast_add(&f32_of(&chan).reshape((b, co, 1, 1)).unwrap())
                .unwrap()
                .add(&f32_of(&res))
                .unwrap();
            let add = ConvAdd {
                bias: Some(&bias),
                channel: Some(&chan),
                residual: Some(&res),
            };
            let plain = conv(&x, &wt, shape, ConvAdd::default(), band).unwrap();
            let fused = conv(&x, &wt, shape, add, band).unwrap();
            let case = format!("{name} {dtype:?} {:?}", (b, ci, co, h, w, k, s, p, up, band));
            let (e1, e2) = (rel_err(&plain, &reference), rel_err(&fused, &with_adds));
            assert!(e1 <= tol(dtype) && e2 <= tol(dtype), "{case}: {e1} / {e2}");
        }
    }
}

#[test]
fn adds_match_candle() {
    let Some(dev) = gpu() else { return };
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let y = randn(&dev, &[2, 77, 640], dtype);
        let bias = randn(&dev, &[640], dtype);
        let res = randn(&dev, &[2, 77, 640], dtype);
        let want = f32_of(&y).broadcast_add(&f32_of(&bias)).unwrap();
        assert!(rel_err(&cuda::add_last(&y, &bias, None).unwrap(), &want) <= tol(dtype));
        let want_r = (&want + f32_of(&res)).unwrap();
        assert!(rel_err(&cuda::add_last(&y, &bias, Some(&res)).unwrap(), &want_r) <= tol(dtype));

        let y = randn(&dev, &[2, 96, 5, 7], dtype);
        let c = randn(&dev, &[96], dtype);
        let cb = randn(&dev, &[2, 96], dtype);
        let res = randn(&dev, &[2, 96, 5, 7], dtype);
        let want = f32_of(&y)
            .broadcast_add(&f32_of(&c).reshape((1, 96, 1, 1)).unwrap())
            .unwrap();
        assert!(rel_err(&cuda::add_channel(&y, &c, None).unwrap(), &want) <= tol(dtype));
        let want = f32_of(&y)
            .broadcast_add(&f32_of(&cb).reshape((2, 96, 1, 1)).unwrap())
            .unwrap();
        let want = (want + f32_of(&res)).unwrap();
        assert!(rel_err(&cuda::add_channel(&y, &cb, Some(&res)).unwrap(), &want) <= tol(dtype));
    }
}

#[test]
fn geglu_matches_candle() {
    let Some(dev) = gpu() else { return };
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let h = randn(&dev, &[2, 33, 2 * 160], dtype);
        let bias = randn(&dev, &[2 * 160], dtype);
        let hb = f32_of(&h).broadcast_add(&f32_of(&bias)).unwrap();
        let want = (hb.narrow(D::Minus1, 0, 160).unwrap()
            * hb.narrow(D::Minus1, 160, 160).unwrap().gelu_erf().unwrap())
        .unwrap();
        let got = cuda::geglu(&h, Some(&bias)).unwrap();
        assert!(rel_err(&got, &want) <= tol(dtype), "{dtype:?}");
        let h32 = f32_of(&h);
        let want = (h32.narrow(D::Minus1, 0, 160).unwrap()
            * h32.narrow(D::Minus1, 160, 160).unwrap().gelu_erf().unwrap())
        .unwrap();
        assert!(
            rel_err(&cuda::geglu(&h, None).unwrap(), &want) <= tol(dtype),
            "{dtype:?} no bias"
        );
    }
}

#[test]
fn group_norm_matches_candle() {
    let Some(dev) = gpu() else { return };
    // (b, c, h, w, groups): partial chunks, several chunks per group, a large common offset.
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for &(b, c, h, w, g, offset) in &[
            (2, 64, 9, 7, 32, 0.0),
            (2, 320, 64, 64, 32, 0.0),
            (1, 128, 40, 40, 32, 30.0),
        ] {
            let x = (randn(&dev, &[b, c, h, w], dtype) + offset)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let weight = randn(&dev, &[c], dtype);
            let bias = randn(&dev, &[c], dtype);
            let gn = candle_nn::GroupNorm::new(f32_of(&weight), f32_of(&bias), c, g, 1e-5).unwrap();
            let want = candle_core::Module::forward(&gn, &f32_of(&x)).unwrap();
            for silu in [false, true] {
                let got = cuda::group_norm(&x, g, 1e-5, &weight, &bias, silu).unwrap();
                let want = if silu { want.silu().unwrap() } else { want.clone() };
                let e = rel_err(&got, &want);
                assert!(
                    e <= tol(dtype).max(1e-4),
                    "{dtype:?} {:?} silu {silu}: {e}",
                    (b, c, h, w, g, offset)
                );
            }
        }
    }
}

/// softmax(q·kᵀ/√d)·v per head in f32 with candle's ops.
fn attention_f32(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
    let (b, lq, inner) = q.dims3().unwrap();
    let lk = k.dim(1).unwrap();
    let d = inner / heads;
    let split = |t: &Tensor, l: usize| {
        f32_of(t)
            .reshape((b, l, heads, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (split(q, lq), split(k, lk), split(v, lk));
    let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((b, lq, inner))
        .unwrap()
}

#[test]
fn attention_matches_candle() {
    let Some(dev) = gpu() else { return };
    // (b, lq, lk, heads, head size): SD 1.5 (40, 80, 160) and SDXL (64) heads, cross attention over 77
    // tokens, partial query and key tiles, heads not a multiple of 16, one key, one and two key tiles
    // (the double buffer's first and last iterations), many tiles.
    let cases = [
        (2, 256, 256, 8, 40),
        (2, 300, 77, 8, 80),
        (1, 100, 130, 4, 160),
        (2, 1024, 1024, 10, 64),
        (2, 64, 77, 20, 64),
        (1, 70, 1, 2, 8),
        (1, 65, 200, 3, 72),
        (1, 64, 64, 2, 64),
        (1, 64, 128, 2, 64),
        (1, 16, 4096, 2, 40),
    ];
    for dtype in [DType::F16, DType::BF16] {
        for &(b, lq, lk, heads, d) in &cases {
            let q = randn(&dev, &[b, lq, heads * d], dtype);
            let k = randn(&dev, &[b, lk, heads * d], dtype);
            let v = randn(&dev, &[b, lk, heads * d], dtype);
            let got = cuda::attention(&q, &k, &v, heads)
                .unwrap()
                .expect("an H100 has the shared memory");
            let want = attention_f32(&q, &k, &v, heads);
            let e = rel_err(&got, &want);
            assert!(e <= tol(dtype), "{dtype:?} {:?}: {e}", (b, lq, lk, heads, d));
        }
        // A contiguous view starting 3 values into its buffer: copied to an aligned start first.
        let (b, l, heads, d) = (1, 70, 2, 40);
        let n = b * l * heads * d;
        let shifted = |t: Tensor| {
            t.flatten_all()
                .unwrap()
                .narrow(0, 3, n)
                .unwrap()
                .reshape((b, l, heads * d))
                .unwrap()
        };
        let q = shifted(randn(&dev, &[n + 3], dtype));
        let k = shifted(randn(&dev, &[n + 3], dtype));
        let v = shifted(randn(&dev, &[n + 3], dtype));
        assert_eq!(q.layout().start_offset(), 3);
        let got = cuda::attention(&q, &k, &v, heads).unwrap().unwrap();
        let e = rel_err(&got, &attention_f32(&q, &k, &v, heads));
        assert!(e <= tol(dtype), "{dtype:?} offset 3: {e}");

        // Column views of one fused projection's output, as the transformer blocks pass them (read in
        // place, rows 3·inner or 2·inner apart), and views whose row stride is not a multiple of 8
        // (copied first).
        let (b, l, lk, heads, d) = (2, 300, 77, 8, 40);
        let inner = heads * d;
        let cols = |t: &Tensor, i: usize| t.narrow(2, i * inner, inner).unwrap();
        let qkv = randn(&dev, &[b, l, 3 * inner], dtype);
        let (q, k, v) = (cols(&qkv, 0), cols(&qkv, 1), cols(&qkv, 2));
        let got = cuda::attention(&q, &k, &v, heads).unwrap().unwrap();
        let e = rel_err(&got, &attention_f32(&q, &k, &v, heads));
        assert!(e <= tol(dtype), "{dtype:?} fused qkv: {e}");
        let kv = randn(&dev, &[b, lk, 2 * inner], dtype);
        let (k, v) = (cols(&kv, 0), cols(&kv, 1));
        let got = cuda::attention(&q, &k, &v, heads).unwrap().unwrap();
        let e = rel_err(&got, &attention_f32(&q, &k, &v, heads));
        assert!(e <= tol(dtype), "{dtype:?} fused kv: {e}");
        let odd = randn(&dev, &[b, lk, inner + 4], dtype);
        let k = odd.narrow(2, 4, inner).unwrap();
        let got = cuda::attention(&q, &k, &v, heads).unwrap().unwrap();
        let e = rel_err(&got, &attention_f32(&q, &k, &v, heads));
        assert!(e <= tol(dtype), "{dtype:?} row stride {}: {e}", inner + 4);
    }
}

/// `tests/data` of the checkout the test runs in (scripts/cuda/lent_gpu.sh runs this binary from the
/// repository root of a copy elsewhere), else of the one it was built in.
fn test_data() -> std::path::PathBuf {
    let here = std::path::Path::new("tests/data");
    if here.is_dir() {
        here.to_path_buf()
    } else {
        common::data_dir()
    }
}

/// The GPU set up as the library sets up its own devices (src/pipeline/mod.rs): no per-buffer events,
/// none of which a capture could wait on.
fn gpu_for_graphs() -> Option<(Device, candle_core::CudaDevice)> {
    let dev = gpu()?;
    let Device::Cuda(cuda) = &dev else {
        unreachable!("gpu() returns a CUDA device")
    };
    // SAFETY: these tests create no second stream on the context.
    unsafe { cuda.disable_event_tracking() };
    let cuda = cuda.clone();
    Some((dev, cuda))
}

/// A UNet step replayed as a CUDA graph gives what the eager step gives, for new samples and timesteps
/// written into the captured buffers (a value baked in at capture would repeat the first step's), and
/// a replay's output is not overwritten by the next. SD 1.5- and SDXL-shaped tiny UNets (the latter
/// with its added conditioning), f16.
#[test]
fn graph_replay_matches_eager() {
    use autopipeline::kernels::cuda::graph;
    use autopipeline::models::unet::{AddedCond, UNet2DConditionModel, UNetConfig};
    use autopipeline::weights::load::read_config;
    use autopipeline::weights::Weights;
    let Some((dev, cuda_dev)) = gpu_for_graphs() else {
        return;
    };
    for name in ["sd15-tiny", "sdxl-tiny"] {
        let data = test_data();
        let dir = data.join("checkpoints").join(name).join("unet");
        let cfg: UNetConfig = read_config(&dir.join("config.json")).unwrap();
        let files = [dir.join("diffusion_pytorch_model.safetensors")];
        let unet = UNet2DConditionModel::new(Weights::open(&files, DType::F16, &dev).unwrap(), cfg).unwrap();
        let npy = |file: &str| {
            let (shape, values) = common::read_npy(&data.join("components/models").join(name).join(file));
            Tensor::from_vec(values, shape, &dev).unwrap()
        };
        let sample = npy("unet_sample.npy");
        let context = npy("unet_encoder_hidden_states.npy");
        let added = name.starts_with("sdxl").then(|| AddedCond {
            text_embeds: npy("unet_text_embeds.npy"),
            time_ids: npy("unet_time_ids.npy"),
        });
        let batch = sample.dim(0).unwrap();
        let inputs: Vec<(Tensor, Tensor)> = [(1.0, 999.0), (0.5, 500.0), (-0.7, 1.0)]
            .iter()
            .map(|&(scale, t)| {
                let ts = Tensor::full(t as f32, batch, &dev).unwrap();
                ((&sample * scale).unwrap(), ts)
            })
            .collect();
        let forward = |x: &Tensor, ts: &Tensor| unet.forward_t(x, ts, &context, added.as_ref());
        let eager: Vec<Tensor> = inputs.iter().map(|(x, ts)| forward(x, ts).unwrap()).collect();
        let like = graph::with_host_caches(&cuda_dev, || forward(&inputs[0].0, &inputs[0].1)).unwrap();
        let mut replay = graph::capture(&[&inputs[0].0, &inputs[0].1], &like, |v| forward(&v[0], &v[1]))
            .unwrap_or_else(|e| panic!("{name}: capture failed: {e}"));
        let replayed: Vec<Tensor> = inputs
            .iter()
            .map(|(x, ts)| replay.run(&[x, ts]).unwrap())
            .collect();
        for (i, (g, e)) in replayed.iter().zip(&eager).enumerate() {
            let err = rel_err(g, e);
            assert!(err <= 1e-3, "{name} step {i}: replay differs from eager by {err}");
        }
        // The steps differ from each other, so a replay stuck on the first step's inputs would fail.
        for i in 1..eager.len() {
            assert!(
                rel_err(&eager[i], &eager[0]) > 1e-2,
                "{name}: steps 0 and {i} alike"
            );
        }
    }
}

/// A capture that fails (here: a synchronisation while capturing, which the driver refuses and which
/// invalidates the capture) returns an error and leaves the stream out of capture mode with no stale
/// error pending: eager work and a new capture then succeed, as the denoising loop's fallback needs.
#[test]
fn failed_graph_capture_leaves_the_device_usable() {
    use autopipeline::kernels::cuda::graph;
    let Some((dev, _)) = gpu_for_graphs() else { return };
    let x = randn(&dev, &[4, 8], DType::F32);
    let like = (&x * 2.0).unwrap();
    let failed = graph::capture(&[&x], &like, |v| {
        let y = (&v[0] * 2.0)?;
        v[0].device().synchronize()?;
        Ok(y)
    });
    assert!(failed.is_err(), "a synchronisation inside a capture was accepted");
    let want: Vec<Vec<f32>> = (x.to_device(&Device::Cpu).unwrap() * 3.0)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(
        (&x * 3.0).unwrap().to_vec2::<f32>().unwrap(),
        want,
        "eager work after a failed capture"
    );
    let mut replay = graph::capture(&[&x], &like, |v| &v[0] * 2.0).expect("a capture after a failed one");
    let y = randn(&dev, &[4, 8], DType::F32);
    let got = replay.run(&[&y]).unwrap().to_vec2::<f32>().unwrap();
    let want: Vec<Vec<f32>> = (y.to_device(&Device::Cpu).unwrap() * 2.0)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(got, want, "replay of a capture made after a failed one");
}
