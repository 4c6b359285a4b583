//! VAE tiling and slicing (`RunParams::vae_tiling` / `vae_slicing`, diffusers' `enable_vae_tiling()` /
//! `enable_vae_slicing()`): tiled encode/decode against diffusers' at sizes that need several tiles
//! (`tests/data/vae_tiling/make.py`), tiling a no-op where one tile covers the input, slicing bit for
//! bit equal to a batched pass, and both options through a whole run.

mod common;

use autopipeline::models::vae::{AutoencoderKL, DecodeOptions, VaeConfig};
use autopipeline::weights::load::read_config;
use autopipeline::weights::Weights;
use autopipeline::{Pipeline, RunParams, Task};
use candle_core::{DType, Device, Tensor};

fn vae() -> AutoencoderKL {
    let dir = common::data_dir().join("checkpoints/sd15-tiny/vae");
    let cfg: VaeConfig = read_config(&dir.join("config.json")).unwrap();
    let vb = Weights::open(
        &[dir.join("diffusion_pytorch_model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    AutoencoderKL::new(vb, cfg).unwrap()
}

fn npy(file: &str) -> Tensor {
    let (shape, data) = common::read_npy(&common::data_dir().join("vae_tiling").join(file));
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut g = autopipeline::rng::TorchCpuGenerator::new(seed);
    Tensor::from_vec(g.randn(shape.iter().product()), shape, &Device::Cpu).unwrap()
}

const TILING: DecodeOptions = DecodeOptions {
    tiling: true,
    slicing: false,
};
const SLICING: DecodeOptions = DecodeOptions {
    tiling: false,
    slicing: true,
};

#[test]
fn tiled_decode_matches_diffusers() {
    // 56×44 latents with 32-latent tiles every 24: 3 × 2 tiles, blended over 16 pixels.
    let vae = vae();
    let z = npy("decode_input.npy");
    let want = npy("decode_tiled.npy");
    let got = vae.decode_with(&z, TILING).unwrap();
    let d = max_abs(&got, &want);
    assert!(d < 1e-5, "tiled decode differs from diffusers by {d}");
    // The seams are real: an untiled decode is far from the tiled one here.
    assert!(max_abs(&vae.decode(&z).unwrap(), &want) > 1e-2);
}

#[test]
fn tiled_encode_matches_diffusers() {
    let vae = vae();
    let dist = vae.encode_with(&npy("encode_input.npy"), TILING).unwrap();
    let d = max_abs(&dist.mean, &npy("encode_tiled_mean.npy"));
    assert!(d < 1e-5, "tiled encode mean differs from diffusers by {d}");
    let d = max_abs(&dist.std, &npy("encode_tiled_std.npy"));
    assert!(d < 1e-5, "tiled encode std differs from diffusers by {d}");
}

#[test]
fn tiling_changes_nothing_within_one_tile() {
    let vae = vae();
    // At most 32 latents (64 pixels) per side: one tile, so the plain path, bit for bit.
    for (h, w) in [(32, 32), (24, 32), (8, 16)] {
        let z = randn(&[1, 4, h, w], 3);
        assert_eq!(
            max_abs(&vae.decode_with(&z, TILING).unwrap(), &vae.decode(&z).unwrap()),
            0.0
        );
        let x = randn(&[1, 3, 2 * h, 2 * w], 4);
        let (a, b) = (vae.encode_with(&x, TILING).unwrap(), vae.encode(&x).unwrap());
        assert_eq!(max_abs(&a.mean, &b.mean), 0.0);
        assert_eq!(max_abs(&a.std, &b.std), 0.0);
    }
}

#[test]
fn slicing_is_bit_identical() {
    let vae = vae();
    let z = randn(&[3, 4, 20, 12], 5);
    let batched = vae.decode(&z).unwrap();
    assert_eq!(max_abs(&vae.decode_with(&z, SLICING).unwrap(), &batched), 0.0);
    for i in 0..3 {
        let one = vae.decode(&z.narrow(0, i, 1).unwrap()).unwrap();
        assert_eq!(max_abs(&one, &batched.narrow(0, i, 1).unwrap()), 0.0);
    }
    let x = randn(&[3, 3, 40, 24], 6);
    let (a, b) = (vae.encode_with(&x, SLICING).unwrap(), vae.encode(&x).unwrap());
    assert_eq!(max_abs(&a.mean, &b.mean), 0.0);
    assert_eq!(max_abs(&a.std, &b.std), 0.0);
    // Both together: each image tiled on its own.
    let z = randn(&[2, 4, 40, 36], 7);
    let both = vae
        .decode_with(
            &z,
            DecodeOptions {
                tiling: true,
                slicing: true,
            },
        )
        .unwrap();
    assert_eq!(max_abs(&both, &vae.decode_with(&z, TILING).unwrap()), 0.0);
}

#[test]
fn run_params_reach_the_vae() {
    let ckpt = common::data_dir().join("checkpoints/sd15-tiny");
    let pipe = Pipeline::from_pretrained(
        ckpt.to_str().unwrap(),
        Task::Text2Image,
        &common::cases::load_options(),
        None,
    )
    .unwrap();
    let base = RunParams {
        prompt: "a red house".into(),
        num_inference_steps: Some(2),
        num_images_per_prompt: 2,
        seed: 7,
        ..Default::default()
    };
    let run = |p: &RunParams| pipe.run(p, None).unwrap().images;
    // 64×64 px is one tile of this VAE: tiling and slicing leave the images untouched.
    let plain = run(&RunParams {
        width: Some(64),
        height: Some(64),
        ..base.clone()
    });
    let both = run(&RunParams {
        width: Some(64),
        height: Some(64),
        vae_tiling: true,
        vae_slicing: true,
        ..base.clone()
    });
    assert_eq!(plain, both);
    // 160×96 px needs several tiles: tiling changes the image (the seams are blended), slicing does not.
    let plain = run(&RunParams {
        width: Some(160),
        height: Some(96),
        ..base.clone()
    });
    let sliced = run(&RunParams {
        width: Some(160),
        height: Some(96),
        vae_slicing: true,
        ..base.clone()
    });
    assert_eq!(plain, sliced);
    let tiled = run(&RunParams {
        width: Some(160),
        height: Some(96),
        vae_tiling: true,
        ..base.clone()
    });
    assert_eq!((tiled[0].width, tiled[0].height), (160, 96));
    assert_ne!(plain, tiled);
}
