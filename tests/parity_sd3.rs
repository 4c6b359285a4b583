//! Stable Diffusion 3 / 3.5 parity with diffusers 0.42.1 (`StableDiffusion3Pipeline`,
//! `…Img2ImgPipeline`, `…InpaintPipeline`) on the tiny checkpoints `scripts/references/make_sd3.py`
//! made (SD3-like, SD3.5-like with q/k norms and MMDiT-X dual attention, and one saved without T5):
//! every generator draw, the joint CLIP + T5 embeddings, the schedule, the first transformer call (CFG
//! batch), the first skip-layer call, the latents after each step, the image and diffusers' warnings.

mod common;

use autopipeline::{Error, Trace};
use common::cases::{inputs, params, pipeline};
use common::recorded::{check, check_image, load_edited, set_config};

fn check_sd3_case(id: &str) {
    let case = inputs(id);
    assert_eq!(case["status"], "ok", "{id} is an error case");
    let pipe = pipeline(&case);
    assert_eq!(
        pipe.class_name(),
        case["resolved_class"].as_str().unwrap(),
        "{id}"
    );
    let mut trace = Trace::default();
    let out = pipe
        .run_traced(&params(&case), None, Some(&mut trace))
        .unwrap_or_else(|e| panic!("{id}: {e}"));

    let draws = case["randn_tensor_draws"].as_array().unwrap();
    assert_eq!(trace.noise.len(), draws.len(), "{id}: number of generator draws");
    for (i, d) in draws.iter().enumerate() {
        check(id, &format!("draw {i}"), &trace.noise[i], d, 0.0, 0.0);
    }
    // No embedding comparison is tighter than twice torch's own float32 error against float64 (both
    // float32 implementations are that far from the exact values; `make_sd3.py` measures it).
    let f32_error = 2.0 * case["embeddings_torch_f32_error"].as_f64().unwrap_or(0.0) as f32;
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
            Some(e) => check(
                id,
                name,
                got.as_ref().unwrap_or_else(|| panic!("{id}: no {name}")),
                e,
                1e-5,
                f32_error,
            ),
            None => assert!(got.is_none(), "{id}: diffusers made no {name}"),
        }
    }

    // The timesteps of the main calls (skip-layer calls come on top, on the steps recorded).
    let want: Vec<f64> = case["scheduler_timesteps_after_run"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let start = want.len() - trace.unet_timesteps.len();
    for (i, (&got, &w)) in trace.unet_timesteps.iter().zip(&want[start..]).enumerate() {
        assert_eq!(got as f32, w as f32, "{id}: timestep {i}");
    }
    let skip_steps = case["skip_layer_steps"].as_array().map_or(0, Vec::len);
    let calls = case["transformer_timesteps"].as_array().unwrap().len();
    assert_eq!(
        calls,
        trace.unet_timesteps.len() + skip_steps,
        "{id}: transformer calls"
    );

    let spread = case["torch_layout_spread"].as_f64().unwrap_or(0.0) as f32;
    check(
        id,
        "transformer input at step 0",
        trace.unet_input_step0.as_ref().unwrap(),
        &case["transformer_input_step0"]["hidden_states"],
        1e-5,
        spread,
    );
    check(
        id,
        "transformer output at step 0",
        trace.unet_output_step0.as_ref().unwrap(),
        &case["transformer_output_step0"],
        1e-4,
        0.0,
    );
    let latents = candle_core::Tensor::stack(&trace.latents, 0).unwrap();
    check(
        id,
        "latents per step",
        &latents,
        &case["latents_per_step"],
        1e-4,
        0.0,
    );

    check_image(id, &case, &trace, &out);
    for w in case["warnings"].as_array().into_iter().flatten() {
        let w = w.as_str().unwrap();
        if w.contains("max_sequence_length") {
            assert!(
                out.warnings
                    .iter()
                    .any(|o| o.contains("because `max_sequence_length` is set to")),
                "{id}: diffusers warned {w:?}; we said {:?}",
                out.warnings
            );
        }
    }
}

macro_rules! sd3_cases {
    ($($name:ident => $id:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_sd3_case($id);
            }
        )*
    };
}

sd3_cases! {
    t2i_cfg => "sd3-t2i",
    t2i_no_cfg_defaults => "sd3-t2i-defaults-nocfg",
    t2i_three_prompts => "sd3-t2i-prompts-123",
    t2i_clip_skip => "sd3-t2i-clip-skip",
    t2i_skip_layer_guidance => "sd3-t2i-slg",
    sd35_t2i => "sd35-t2i",
    sd35_t2i_skip_layer_guidance => "sd35-t2i-slg",
    no_t5_t2i => "sd3-no-t5-t2i",
    img2img => "sd3-i2i",
    img2img_from_pipe => "sd3-i2i-frompipe",
    inpaint => "sd3-inpaint",
    inpaint_padding_mask_crop => "sd3-inpaint-crop",
    sd35_inpaint_from_pipe => "sd35-inpaint-frompipe",
}

/// SD3 refuses what diffusers' SD3 pipelines refuse, as the caller's argument.
#[test]
fn refuses_bad_sd3_arguments() {
    let case = inputs("sd3-t2i");
    let pipe = pipeline(&case);
    let base = params(&case);
    let run = |p: autopipeline::RunParams| pipe.run(&p, None).expect_err("refused");
    let mut p = base.clone();
    p.width = Some(72);
    p.height = Some(60);
    let e = run(p);
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(
        e.to_string()
            .contains("have to be divisible by 16 but are 60 and 72"),
        "{e}"
    );
    let mut p = base.clone();
    p.max_sequence_length = Some(600);
    assert!(run(p)
        .to_string()
        .contains("cannot be greater than 512 but is 600"));
    let mut p = base.clone();
    p.skip_guidance_layers = Some(vec![7]);
    assert!(matches!(run(p), Error::InvalidArgument(_)));
    let mut p = base.clone();
    p.true_cfg_scale = Some(2.0);
    assert!(matches!(run(p), Error::InvalidArgument(_)));
}

/// Broken SD3 checkpoints fail to load with an error naming what is wrong, never a panic.
#[test]
fn broken_sd3_checkpoints_are_refused_clearly() {
    let msg = |r: autopipeline::Result<autopipeline::Pipeline>| match r {
        Ok(_) => panic!("loaded a broken checkpoint"),
        Err(e) => (e.to_string(), e),
    };
    // A transformer config that does not fit the model's own shapes.
    let (m, e) = msg(load_edited("sd3-tiny", "caption", |d| {
        set_config(d, "transformer", "caption_projection_dim", serde_json::json!(48))
    }));
    assert!(
        matches!(e, Error::InvalidModel(_)) && m.contains("caption_projection_dim"),
        "{m}"
    );
    let (m, _) = msg(load_edited("sd3-tiny", "dual", |d| {
        set_config(d, "transformer", "dual_attention_layers", serde_json::json!([5]))
    }));
    assert!(m.contains("dual_attention_layers"), "{m}");
    // The joint-attention width does not match T5's.
    let (m, e) = msg(load_edited("sd3-tiny", "joint", |d| {
        set_config(d, "transformer", "joint_attention_dim", serde_json::json!(48))
    }));
    assert!(matches!(e, Error::InvalidModel(_)), "{m}");
    assert!(
        m.contains("joint_attention_dim") || m.contains("context_embedder"),
        "{m}"
    );
    // Pooled projections that do not add up.
    let (m, _) = msg(load_edited("sd3-tiny", "pooled", |d| {
        set_config(d, "transformer", "pooled_projection_dim", serde_json::json!(40))
    }));
    // (The weights' shapes already disagree with such a config: the error names the tensor.)
    assert!(
        m.contains("pooled_projection_dim") || m.contains("text_embedder"),
        "{m}"
    );
    // model_index.json lists text_encoder_3 but its folder is gone.
    let (m, _) = msg(load_edited("sd3-tiny", "no-t5-folder", |d| {
        std::fs::remove_dir_all(d.join("text_encoder_3")).unwrap()
    }));
    assert!(m.contains("text_encoder_3"), "{m}");
}

/// `ap_pipeline_info`'s component list names each encoder's tokenizer class: CLIP's for the two CLIP
/// encoders, T5's for `text_encoder_3` (and FLUX's `text_encoder_2`).
#[test]
fn info_lists_each_encoder_with_its_tokenizer() {
    let class_of = |ckpt: &str, name: &str| {
        let dir = common::data_dir().join("checkpoints").join(ckpt);
        let p = autopipeline::Pipeline::from_pretrained(
            dir.to_str().unwrap(),
            autopipeline::Task::Text2Image,
            &Default::default(),
            None,
        )
        .unwrap();
        p.info()
            .components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.class.clone())
    };
    assert_eq!(
        class_of("sd3-tiny", "tokenizer_2").as_deref(),
        Some("CLIPTokenizer")
    );
    assert_eq!(
        class_of("sd3-tiny", "tokenizer_3").as_deref(),
        Some("T5TokenizerFast")
    );
    assert_eq!(
        class_of("sd3-tiny", "text_encoder_3").as_deref(),
        Some("T5EncoderModel")
    );
    assert_eq!(class_of("sd3-tiny-no-t5", "text_encoder_3"), None);
    assert_eq!(
        class_of("flux-dev-tiny", "tokenizer_2").as_deref(),
        Some("T5TokenizerFast")
    );
}
