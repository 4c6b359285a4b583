//! SDXL end to end against diffusers' recorded runs: every public sdxl case.

mod common;

use autopipeline::Error;
use common::cases::{check_error_case, check_ok_case};

macro_rules! ok_cases {
    ($($name:ident => $id:literal),* $(,)?) => {
        $( #[test] fn $name() { check_ok_case($id); } )*
    };
}

ok_cases! {
    sdxl_t2i_cfg_neg_prompt2 => "sdxl-t2i-cfg-neg-prompt2",
    sdxl_t2i_cfg_zeroneg => "sdxl-t2i-cfg-zeroneg",
    sdxl_t2i_default_size => "sdxl-t2i-default-size",
    sdxl_t2i_nocfg => "sdxl-t2i-nocfg",
    sdxl_i2i_cfg_neg => "sdxl-i2i-cfg-neg",
    sdxl_i2i_frompipe => "sdxl-i2i-frompipe",
    sdxl_i2i_nocfg => "sdxl-i2i-nocfg",
    sdxl_inpaint4ch_cfg => "sdxl-inpaint4ch-cfg",
    sdxl_inpaint4ch_frompipe => "sdxl-inpaint4ch-frompipe",
    sdxlinp_inpaint_cfg => "sdxlinp-inpaint-cfg",
    sdxlinp_inpaint_nocfg_strength => "sdxlinp-inpaint-nocfg-strength",
}

#[test]
fn nine_channel_sdxl_unet_text2img_is_refused_clearly() {
    let err = check_error_case("sdxlinp-t2i");
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
}

#[test]
fn aesthetics_override_that_breaks_time_ids_gives_diffusers_error() {
    let err = check_error_case("sdxl-i2i-frompipe-aesthetics");
    let case = common::cases::inputs("sdxl-i2i-frompipe-aesthetics");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(err.to_string(), case["error"]["message"].as_str().unwrap());
}
