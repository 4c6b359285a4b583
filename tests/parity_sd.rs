//! SD 1.x / 2.x end to end against diffusers' recorded runs: every public sd15/sd2 case.

mod common;

use autopipeline::Error;
use common::cases::{check_error_case, check_ok_case};

macro_rules! ok_cases {
    ($($name:ident => $id:literal),* $(,)?) => {
        $( #[test] fn $name() { check_ok_case($id); } )*
    };
}

ok_cases! {
    sd15_t2i_cfg_neg => "sd15-t2i-cfg-neg",
    sd15_t2i_cfg_noneg_nonsquare => "sd15-t2i-cfg-noneg-nonsquare",
    sd15_t2i_default_size => "sd15-t2i-default-size",
    sd15_t2i_frompipe_of_i2i => "sd15-t2i-frompipe-of-i2i",
    sd15_t2i_longprompt => "sd15-t2i-longprompt",
    sd15_t2i_nocfg => "sd15-t2i-nocfg",
    sd2_t2i_cfg_neg => "sd2-t2i-cfg-neg",
    sd2_t2i_nocfg => "sd2-t2i-nocfg",
    sd15_i2i_cfg_neg => "sd15-i2i-cfg-neg",
    sd15_i2i_frompipe => "sd15-i2i-frompipe",
    sd15_i2i_nocfg => "sd15-i2i-nocfg",
    sd2_i2i_cfg => "sd2-i2i-cfg",
    sd15_inpaint4ch_cfg_soft => "sd15-inpaint4ch-cfg-soft",
    sd15_inpaint4ch_frompipe => "sd15-inpaint4ch-frompipe",
    sd15_inpaint4ch_nocfg => "sd15-inpaint4ch-nocfg",
    sd2_inpaint4ch => "sd2-inpaint4ch",
    sd15inp_inpaint_cfg => "sd15inp-inpaint-cfg",
    sd15inp_inpaint_frompipe => "sd15inp-inpaint-frompipe",
    sd15inp_inpaint_nocfg_strength => "sd15inp-inpaint-nocfg-strength",
}

#[test]
fn nine_channel_unet_text2img_is_refused_clearly() {
    let err = check_error_case("sd15inp-t2i");
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("9 input channels"), "{err}");
}

#[test]
fn nine_channel_unet_img2img_is_refused_clearly() {
    let err = check_error_case("sd15inp-i2i");
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("inpaint"), "{err}");
}

/// No diffusers fixture covers `padding_mask_crop`; check its contract instead: the output has the
/// original image's size, pixels outside the mask are the original's exactly, and pixels inside changed.
#[test]
fn padding_mask_crop_pastes_back_into_the_original() {
    let case = common::cases::inputs("sd15-inpaint4ch-nocfg");
    let pipe = common::cases::pipeline(&case);
    let mut params = common::cases::params(&case);
    params.padding_mask_crop = Some(4);
    let out = pipe.run(&params, None).unwrap();
    let img = &out.images[0];
    let orig = params.image.as_ref().unwrap();
    let mask = params.mask.as_ref().unwrap();
    assert_eq!((img.width, img.height), (orig.width, orig.height));
    let (mut outside, mut changed_inside) = (0, 0);
    for i in 0..(orig.width * orig.height) as usize {
        let m = mask.data[i * mask.channels as usize];
        let same = img.data[i * 3..i * 3 + 3] == orig.data[i * 3..i * 3 + 3];
        if m == 0 {
            assert!(same, "pixel {i} outside the mask changed");
            outside += 1;
        } else if m == 255 && !same {
            changed_inside += 1;
        }
    }
    assert!(
        outside > 0 && changed_inside > 0,
        "outside {outside}, changed inside {changed_inside}"
    );
}

/// An all-black mask has no region to crop. diffusers' `get_crop_region` then gives an inverted box for
/// a padding under half the side (PIL refuses the crop), an empty one at exactly half (division by
/// zero), and the whole image once the padding covers it. Ours: refused with a message below that
/// size, the whole image from there on.
#[test]
fn padding_mask_crop_with_an_empty_mask_follows_diffusers() {
    let case = common::cases::inputs("sd15-inpaint4ch-nocfg");
    let pipe = common::cases::pipeline(&case);
    let mut params = common::cases::params(&case);
    let mask = params.mask.as_mut().unwrap();
    mask.data.iter_mut().for_each(|v| *v = 0);
    for pad in [1, 32] {
        params.padding_mask_crop = Some(pad);
        let err = pipe.run(&params, None).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "pad {pad}: {err:?}");
    }
    params.padding_mask_crop = Some(100_000);
    let out = pipe.run(&params, None).unwrap();
    // Nothing to repaint: every pixel is pasted back from the original.
    assert_eq!(out.images[0].data, params.image.as_ref().unwrap().data);
}
