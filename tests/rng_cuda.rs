//! `torch.Generator("cuda")` on the host against torch's own draws on an H100 (tests/data/rng/cuda, made
//! by scripts/cuda/device_check.py + vendor_rng.py), and pipelines with `rng = cuda` against diffusers run
//! with a CUDA generator.
//!
//! Philox counters, offsets, the launch layout and the uniforms are integer or exactly rounded float
//! arithmetic and must match bit for bit. The normals cannot on the host: cuRAND's Box-Muller takes
//! sin/cos from the GPU's `sin.approx`/`cos.approx` (max absolute error 2^-20.9 per PTX ISA) and `logf`
//! (1 ulp), for which the host substitutes correctly rounded functions. With `r = sqrt(-2 ln u) ≤ 6.77`
//! (u ≥ 2^-33), that bounds a normal's difference by 6.77 · 2^-20.9 ≈ 3.5e-6 plus an ulp or two of the
//! result: 4e-6.

mod common;

use autopipeline::rng::{philox, RngKind, TorchCudaGenerator};
use autopipeline::{Pipeline, RunParams, Task};
use common::{data_dir, read_npy};
use serde_json::Value;

/// The bound derived in the module docs.
const NORMAL_TOL: f32 = 4e-6;

fn meta() -> Value {
    let path = data_dir().join("rng/cuda/meta.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(name: &str) -> Vec<f32> {
    read_npy(&data_dir().join("rng/cuda").join(name)).1
}

/// Replays device_check's sequence of draws on a generator with `max_blocks`, comparing each with torch;
/// returns the worst normal difference.
fn replay(seed: u64, max_blocks: u32) -> f32 {
    let m = meta();
    let mut g = TorchCudaGenerator::new(seed, max_blocks);
    let mut worst = 0f32;
    for (i, n) in m["sizes"].as_array().unwrap().iter().enumerate() {
        let ours = g.randn(n.as_u64().unwrap() as usize);
        let step = m["subsample"][i.to_string()].as_u64().unwrap_or(1) as usize;
        let torch = load(&format!("seed{seed}_randn{i}.npy"));
        let ours: Vec<f32> = ours.into_iter().step_by(step).collect();
        assert_eq!(ours.len(), torch.len(), "seed {seed} draw {i}: length");
        for (a, b) in ours.iter().zip(&torch) {
            worst = worst.max((a - b).abs());
        }
    }
    let rand = g.rand(m["rand"].as_u64().unwrap() as usize);
    let torch = load(&format!("seed{seed}_rand.npy"));
    if max_blocks == philox::DEFAULT_MAX_BLOCKS {
        let ours: Vec<u32> = rand.iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = torch.iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            ours, want,
            "seed {seed}: torch.rand after the normals, bit for bit"
        );
        assert_eq!(
            g.offset(),
            m["offsets_after"][seed.to_string()].as_u64().unwrap(),
            "seed {seed}: offset"
        );
    }
    worst
}

#[test]
fn cuda_generator_matches_torch_on_an_h100() {
    let m = meta();
    assert_eq!(
        m["max_blocks"].as_u64().unwrap(),
        u64::from(philox::DEFAULT_MAX_BLOCKS)
    );
    for seed in m["seeds"].as_array().unwrap() {
        let seed = seed.as_u64().unwrap();
        let worst = replay(seed, philox::DEFAULT_MAX_BLOCKS);
        assert!(
            worst <= NORMAL_TOL,
            "seed {seed}: normals differ from torch by up to {worst}"
        );
    }
}

#[test]
fn layout_depends_on_the_launch_limit() {
    // An A100's limit (108 SMs × 2048 threads / 256 = 864 blocks) lays the 300000-element draw out
    // differently: the replay must then disagree with the H100's numbers by O(1), not by float noise.
    assert!(replay(0, 864) > 0.5);
    assert_eq!(
        RngKind::parse(Some("cuda:108")).unwrap(),
        RngKind::Cuda {
            max_blocks: Some(864)
        }
    );
    assert_eq!(
        RngKind::parse(Some("cuda:128:1536")).unwrap(),
        RngKind::Cuda {
            max_blocks: Some(768)
        }
    );
    assert!(RngKind::parse(Some("gpu")).is_err());
    assert!(RngKind::parse(Some("cuda:0")).is_err());
}

/// diffusers' images made with `generator=torch.Generator("cuda").manual_seed(seed)` (on the GPU, f32),
/// against ours with `rng = cuda` on the CPU: within 2/255, the GPU-vs-CPU tolerance of the device check.
#[test]
fn pipelines_with_a_cuda_generator_match_diffusers() {
    let m = meta();
    for (case_id, seed) in m["diffusers_images"].as_object().unwrap() {
        let case = common::cases::inputs(case_id);
        let task = match case["task"].as_str().unwrap() {
            "text2img" => Task::Text2Image,
            "img2img" => Task::Image2Image,
            _ => Task::Inpaint,
        };
        let ckpt = data_dir().join(case["checkpoint"].as_str().unwrap());
        let pipe =
            Pipeline::from_pretrained(ckpt.to_str().unwrap(), task, &Default::default(), None).unwrap();
        let params = RunParams {
            seed: seed.as_u64().unwrap(),
            rng: RngKind::Cuda { max_blocks: None },
            ..common::cases::params(&case)
        };
        let img = pipe.run(&params, None).unwrap().images.remove(0);
        let want = load(&format!("{case_id}_seed{seed}.npy"));
        assert_eq!(img.data.len(), want.len(), "{case_id}: size");
        let worst = img
            .data
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f32 - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 2.0,
            "{case_id}: differs from diffusers by up to {worst}/255"
        );
        // And the generator matters: the CPU generator's image is a different one.
        let cpu = pipe
            .run(
                &RunParams {
                    rng: RngKind::Cpu,
                    ..params
                },
                None,
            )
            .unwrap()
            .images
            .remove(0);
        let far = cpu
            .data
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f32 - b).abs())
            .fold(0f32, f32::max);
        assert!(
            far > 20.0,
            "{case_id}: the CPU generator gave nearly the same image"
        );
    }
}

/// `ap_randn`, the C entry point to both generators: same draws as the Rust API, errors as statuses.
#[test]
fn ap_randn_hands_out_both_generators() {
    use autopipeline::ffi::{ap_randn, AP_ERR_INVALID_ARGUMENT, AP_ERR_UNSUPPORTED, AP_OK};
    use autopipeline::rng::TorchCpuGenerator;
    let sizes = [16usize, 7, 300];
    let mut out = vec![0f32; 323];
    for (rng, want) in [
        (c"cpu", {
            let mut g = TorchCpuGenerator::new(9);
            [g.randn(16), g.randn(7), g.randn(300)].concat()
        }),
        (c"cuda", {
            let mut g = TorchCudaGenerator::new(9, philox::DEFAULT_MAX_BLOCKS);
            [g.randn(16), g.randn(7), g.randn(300)].concat()
        }),
    ] {
        let status = unsafe {
            ap_randn(
                rng.as_ptr(),
                std::ptr::null(),
                9,
                sizes.as_ptr(),
                sizes.len(),
                out.as_mut_ptr(),
            )
        };
        assert_eq!(status, AP_OK);
        assert_eq!(out, want, "{rng:?}");
    }
    let null = std::ptr::null();
    let bad = unsafe { ap_randn(c"gpu".as_ptr(), null, 0, sizes.as_ptr(), 3, out.as_mut_ptr()) };
    assert_eq!(bad, AP_ERR_INVALID_ARGUMENT);
    let no_out = unsafe { ap_randn(null, null, 0, sizes.as_ptr(), 3, std::ptr::null_mut()) };
    assert_eq!(no_out, AP_ERR_INVALID_ARGUMENT);
    let nothing = unsafe { ap_randn(null, null, 0, std::ptr::null(), 0, std::ptr::null_mut()) };
    assert_eq!(nothing, AP_OK);
    if !cfg!(feature = "cuda") {
        let gpu = unsafe {
            ap_randn(
                c"cuda".as_ptr(),
                c"cuda".as_ptr(),
                0,
                sizes.as_ptr(),
                3,
                out.as_mut_ptr(),
            )
        };
        assert_eq!(gpu, AP_ERR_UNSUPPORTED);
    }
}
