//! FLUX.1 parity with diffusers 0.42.1 (`FluxPipeline`, `FluxImg2ImgPipeline`, `FluxInpaintPipeline`) on
//! the tiny checkpoints `scripts/references/make_flux.py` made: every generator draw, the T5 and CLIP
//! embeddings, the schedule (sigmas shifted by `mu`), the first transformer call (packed), the latents
//! after each step (packed), the image, and diffusers' warnings.

mod common;

use autopipeline::models::flux::pack_latents;
use autopipeline::{Error, Trace};
use candle_core::Tensor;
use common::cases::{inputs, params, pipeline};
use common::recorded::{check, check_image, load_edited, set_config};
use serde_json::Value;

fn check_flux_case(id: &str) {
    let case = inputs(id);
    assert_eq!(case["status"], "ok", "{id} is an error case");
    let pipe = pipeline(&case);
    let mut trace = Trace::default();
    let out = pipe
        .run_traced(&params(&case), None, Some(&mut trace))
        .unwrap_or_else(|e| panic!("{id}: {e}"));

    // Generator draws (unpacked, as drawn): bit-exact.
    let draws = case["randn_tensor_draws"].as_array().unwrap();
    assert_eq!(trace.noise.len(), draws.len(), "{id}: number of generator draws");
    for (i, d) in draws.iter().enumerate() {
        check(id, &format!("draw {i}"), &trace.noise[i], d, 0.0, 0.0);
    }

    // T5 sequence and CLIP pooled embeddings, and the negative ones under true CFG.
    let emb = &case["embeddings"];
    for (name, got) in [
        ("prompt_embeds", &trace.prompt_embeds),
        ("pooled_prompt_embeds", &trace.pooled_prompt_embeds),
        ("negative_prompt_embeds", &trace.negative_prompt_embeds),
        (
            "negative_pooled_prompt_embeds",
            &trace.negative_pooled_prompt_embeds,
        ),
    ] {
        match emb.get(name) {
            Some(e) => {
                let got = got.as_ref().unwrap_or_else(|| panic!("{id}: no {name}"));
                check(id, name, got, e, 1e-5, 0.0);
            }
            None => assert!(got.is_none(), "{id}: diffusers made no {name}"),
        }
    }

    // The schedule: the transformer sees t / 1000 of each timestep, twice per step under true CFG.
    let want_t: Vec<f64> = case["schedule"]["scheduler_timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let calls: Vec<f64> = case["transformer_timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let per_step = if case
        .get("transformer_output_step0_uncond")
        .is_some_and(|v| !v.is_null())
    {
        2
    } else {
        1
    };
    assert_eq!(
        calls.len(),
        trace.unet_timesteps.len() * per_step,
        "{id}: transformer calls"
    );
    let start = want_t.len() - trace.unet_timesteps.len();
    for (i, (&got, &want)) in trace.unet_timesteps.iter().zip(&want_t[start..]).enumerate() {
        assert_eq!(got as f32, want as f32, "{id}: timestep {i}");
        assert_eq!(
            ((want as f32) / 1000.0) as f64,
            calls[i * per_step],
            "{id}: t/1000 at step {i}"
        );
    }

    // The first transformer call, packed as diffusers passes it.
    let step0 = &case["transformer_input_step0"];
    // Right after a VAE encode, diffusers disagrees with itself by `torch_layout_spread` (its pipeline
    // encodes a channels-last view, which torch convolves with other rounding than a contiguous tensor;
    // ~4e-4 at 512² on this random VAE, see make_flux.py): no comparison there is tighter than that.
    let spread = case["torch_layout_spread"].as_f64().unwrap_or(0.0) as f32;
    let input = pack_latents(trace.unet_input_step0.as_ref().unwrap()).unwrap();
    check(
        id,
        "transformer input at step 0",
        &input,
        &step0["hidden_states"],
        1e-5,
        spread,
    );
    let output = pack_latents(trace.unet_output_step0.as_ref().unwrap()).unwrap();
    check(
        id,
        "transformer output at step 0",
        &output,
        &case["transformer_output_step0"],
        1e-4,
        0.0,
    );

    // Latents after every step (packed), stacked as recorded.
    let packed: Vec<Tensor> = trace.latents.iter().map(|l| pack_latents(l).unwrap()).collect();
    check(
        id,
        "latents per step",
        &Tensor::stack(&packed, 0).unwrap(),
        &case["latents_per_step"],
        1e-4,
        0.0,
    );

    check_image(id, &case, &trace, &out);

    // diffusers' warnings (size rounding, T5 truncation) come back as run warnings.
    for w in case["warnings"].as_array().into_iter().flatten() {
        let w = w.as_str().unwrap();
        let key = if w.contains("divisible by") {
            w.split(". Dimensions").next().unwrap().to_string()
        } else if w.contains("max_sequence_length") {
            "because `max_sequence_length` is set to".to_string()
        } else {
            continue;
        };
        assert!(
            out.warnings.iter().any(|o| o.contains(&key)),
            "{id}: diffusers warned {w:?}; we said {:?}",
            out.warnings
        );
    }
}

macro_rules! flux_cases {
    ($($name:ident => $id:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_flux_case($id);
            }
        )*
    };
}

flux_cases! {
    dev_t2i => "flux-dev-t2i",
    schnell_t2i => "flux-schnell-t2i",
    dev_t2i_true_cfg => "flux-dev-t2i-truecfg",
    dev_t2i_short_max_sequence_length => "flux-dev-t2i-maxseq-short",
    dev_t2i_size_not_a_multiple => "flux-dev-t2i-oddsize",
    dev_t2i_default_size => "flux-dev-t2i-default-size",
    dev_img2img => "flux-dev-i2i",
    dev_img2img_from_pipe => "flux-dev-i2i-frompipe",
    dev_inpaint => "flux-dev-inpaint",
    dev_inpaint_padding_mask_crop => "flux-dev-inpaint-crop",
    dev_inpaint_padding_mask_crop_rect => "flux-dev-inpaint-crop-rect",
    schnell_img2img => "flux-schnell-i2i",
}

/// The AutoPipeline classes diffusers resolved for these checkpoints are the ones we report.
#[test]
fn resolves_the_flux_pipeline_classes() {
    for id in [
        "flux-dev-t2i",
        "flux-dev-i2i",
        "flux-dev-inpaint",
        "flux-schnell-t2i",
    ] {
        let case = inputs(id);
        let pipe = pipeline(&case);
        assert_eq!(
            pipe.class_name(),
            case["resolved_class"].as_str().unwrap(),
            "{id}"
        );
    }
}

/// FLUX refuses what diffusers' FLUX pipelines refuse, as the caller's argument.
#[test]
fn refuses_bad_flux_arguments() {
    let case: Value = inputs("flux-dev-t2i");
    let pipe = pipeline(&case);
    let base = params(&case);
    let run = |p: autopipeline::RunParams| pipe.run(&p, None).err();
    let mut p = base.clone();
    p.max_sequence_length = Some(600);
    let e = run(p).expect("refused");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(
        e.to_string().contains("cannot be greater than 512 but is 600"),
        "{e}"
    );
    let mut p = base.clone();
    p.timesteps = Some(vec![900.0, 500.0]);
    assert!(matches!(run(p), Some(Error::InvalidArgument(_))));
    let mut p = base.clone();
    p.scheduler = Some("EulerDiscreteScheduler".into());
    assert!(matches!(run(p), Some(Error::InvalidArgument(_))));
}

/// Broken FLUX checkpoints fail to load with an error naming what is wrong, never a panic.
#[test]
fn broken_flux_checkpoints_are_refused_clearly() {
    let msg = |r: autopipeline::Result<autopipeline::Pipeline>| match r {
        Ok(_) => panic!("loaded a broken checkpoint"),
        Err(e) => (e.to_string(), e),
    };
    // A transformer config that is not FLUX-shaped.
    let (m, e) = msg(load_edited("flux-dev-tiny", "axes", |d| {
        set_config(d, "transformer", "axes_dims_rope", serde_json::json!([4, 6, 8]))
    }));
    assert!(
        matches!(e, Error::InvalidModel(_)) && m.contains("axes_dims_rope"),
        "{m}"
    );
    let (m, _) = msg(load_edited("flux-dev-tiny", "patch", |d| {
        set_config(d, "transformer", "patch_size", serde_json::json!(2))
    }));
    assert!(m.contains("patch_size"), "{m}");
    // FLUX Fill-style extra input channels: another pipeline.
    let (m, e) = msg(load_edited("flux-dev-tiny", "fill", |d| {
        set_config(d, "transformer", "in_channels", serde_json::json!(384))
    }));
    assert!(matches!(e, Error::InvalidModel(_) | Error::Unsupported(_)), "{m}");
    // Encoders that do not fit the transformer.
    let (m, _) = msg(load_edited("flux-dev-tiny", "joint", |d| {
        set_config(d, "transformer", "joint_attention_dim", serde_json::json!(48))
    }));
    assert!(
        m.contains("joint_attention_dim") || m.contains("context_embedder"),
        "{m}"
    );
    // No T5 folder.
    let (m, _) = msg(load_edited("flux-dev-tiny", "no-t5", |d| {
        std::fs::remove_dir_all(d.join("text_encoder_2")).unwrap()
    }));
    assert!(m.contains("text_encoder_2"), "{m}");
    // A tokenizer.json that does not parse.
    let (m, e) = msg(load_edited("flux-dev-tiny", "bad-tok", |d| {
        std::fs::write(d.join("tokenizer_2/tokenizer.json"), "{ not json").unwrap()
    }));
    assert!(
        matches!(e, Error::InvalidModel(_)) && m.contains("tokenizer.json"),
        "{m}"
    );
}

/// A mask of another size than the image is resized to it, as diffusers' mask processor does (no
/// error there either).
#[test]
fn inpaint_mask_of_another_size_is_resized() {
    let case = inputs("flux-dev-inpaint");
    let pipe = pipeline(&case);
    let mut p = params(&case);
    p.num_inference_steps = Some(1);
    p.mask = Some(autopipeline::Image::load(&common::data_dir().join("images/mask_rect_48x64.png")).unwrap());
    let out = pipe.run(&p, None).unwrap();
    assert_eq!((out.images[0].width, out.images[0].height), (64, 64));
}
