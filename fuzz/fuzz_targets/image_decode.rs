//! Image decoding (PNG/JPEG input images and masks) on arbitrary bytes: an error or an image whose
//! buffer matches its size, never a panic or an unbounded allocation.
#![no_main]

use autopipeline::Image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = Image::decode(data, "fuzz input") {
        assert_eq!(img.data.len(), (img.width * img.height * img.channels) as usize);
        img.validate().unwrap();
    }
});
