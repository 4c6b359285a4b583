//! Each model component against what diffusers/transformers computed on the same inputs
//! (`tests/data/components/models`).

mod common;

use autopipeline::models::clip::{ClipTextConfig, ClipTextModel};
use autopipeline::models::unet::{AddedCond, UNet2DConditionModel, UNetConfig};
use autopipeline::models::vae::{AutoencoderKL, VaeConfig};
use autopipeline::weights::load::read_config;
use autopipeline::weights::Weights;
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

const CHECKPOINTS: &[&str] = &[
    "sd15-tiny",
    "sd15-inpaint-tiny",
    "sd2-tiny",
    "sdxl-tiny",
    "sdxl-inpaint-tiny",
];

fn ckpt(name: &str) -> PathBuf {
    common::data_dir().join("checkpoints").join(name)
}

fn npy(ckpt: &str, file: &str) -> Tensor {
    let (shape, data) = common::read_npy(&common::data_dir().join("components/models").join(ckpt).join(file));
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Max |a-b| relative to max |b|: model outputs vary in scale, the tolerance should not.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0);
    diff / scale
}

fn weights(dir: &std::path::Path, base: &str) -> Vec<PathBuf> {
    vec![dir.join(format!("{base}.safetensors"))]
}

#[test]
fn unet_matches_diffusers() {
    for name in CHECKPOINTS {
        let dir = ckpt(name).join("unet");
        let cfg: UNetConfig = read_config(&dir.join("config.json")).unwrap();
        let vb = Weights::open(
            &weights(&dir, "diffusion_pytorch_model"),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let unet = UNet2DConditionModel::new(vb, cfg).unwrap();
        let sample = npy(name, "unet_sample.npy");
        let context = npy(name, "unet_encoder_hidden_states.npy");
        let added = if name.starts_with("sdxl") {
            Some(AddedCond {
                text_embeds: npy(name, "unet_text_embeds.npy"),
                time_ids: npy(name, "unet_time_ids.npy"),
            })
        } else {
            None
        };
        for t in [999, 500, 1] {
            let out = unet.forward(&sample, t as f64, &context, added.as_ref()).unwrap();
            let want = npy(name, &format!("unet_output_t{t}.npy"));
            let err = rel_err(&out, &want);
            assert!(err < 1e-5, "{name} unet t={t}: relative error {err}");
        }
    }
}

#[test]
fn vae_matches_diffusers() {
    for name in CHECKPOINTS {
        let dir = ckpt(name).join("vae");
        let cfg: VaeConfig = read_config(&dir.join("config.json")).unwrap();
        let vb = Weights::open(
            &weights(&dir, "diffusion_pytorch_model"),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let vae = AutoencoderKL::new(vb, cfg).unwrap();
        let decoded = vae.decode(&npy(name, "vae_decode_input.npy")).unwrap();
        let err = rel_err(&decoded, &npy(name, "vae_decode_output.npy"));
        assert!(err < 1e-5, "{name} vae decode: relative error {err}");
        let dist = vae.encode(&npy(name, "vae_encode_input.npy")).unwrap();
        let err = rel_err(&dist.mean, &npy(name, "vae_encode_mean.npy"));
        assert!(err < 1e-5, "{name} vae encode mean: relative error {err}");
        let err = rel_err(&dist.std, &npy(name, "vae_encode_std.npy"));
        assert!(err < 1e-5, "{name} vae encode std: relative error {err}");
    }
}

#[test]
fn text_encoders_match_transformers() {
    for name in CHECKPOINTS {
        let encoders: &[&str] = if name.starts_with("sdxl") {
            &["text_encoder", "text_encoder_2"]
        } else {
            &["text_encoder"]
        };
        for enc in encoders {
            let dir = ckpt(name).join(enc);
            let cfg: ClipTextConfig = read_config(&dir.join("config.json")).unwrap();
            let vb = Weights::open(&weights(&dir, "model"), DType::F32, &Device::Cpu).unwrap();
            let with_proj = *enc == "text_encoder_2";
            let model = ClipTextModel::new(vb, cfg, with_proj).unwrap();
            let ids = npy(name, &format!("{enc}_input_ids.npy"))
                .to_dtype(DType::U32)
                .unwrap();
            let out = model.forward(&ids).unwrap();
            let last = npy(name, &format!("{enc}_last_hidden_state.npy"));
            assert!(
                rel_err(&out.last_hidden_state, &last) < 1e-5,
                "{name}/{enc} last_hidden_state"
            );
            let pen = npy(name, &format!("{enc}_penultimate_hidden_state.npy"));
            let n = out.hidden_states.len();
            assert!(
                rel_err(&out.hidden_states[n - 2], &pen) < 1e-5,
                "{name}/{enc} penultimate hidden state"
            );
            let pooled_file = if with_proj {
                format!("{enc}_text_embeds.npy")
            } else {
                format!("{enc}_pooler_output.npy")
            };
            assert!(
                rel_err(&out.pooled, &npy(name, &pooled_file)) < 1e-5,
                "{name}/{enc} pooled"
            );
        }
    }
}
