//! The CLIP tokenizer on arbitrary text, with every tiny checkpoint's tokenizer (both the legacy
//! vocab.json + merges.txt layout and the tokenizer.json layout): encoding never panics or hangs,
//! always yields exactly `max_length` ids, and never an id the text encoder could not embed.
#![no_main]

use autopipeline::text::clip_tokenizer::ClipTokenizer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const FOLDERS: [&str; 4] = [
    "sd15-tiny/tokenizer",
    "sd2-tiny/tokenizer",
    "sdxl-tiny/tokenizer",
    "sdxl-tiny/tokenizer_2",
];

fn tokenizers() -> &'static [ClipTokenizer] {
    static TOKENIZERS: OnceLock<Vec<ClipTokenizer>> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/checkpoints");
        FOLDERS
            .iter()
            .map(|f| ClipTokenizer::from_dir(&root.join(f)).expect("fixture tokenizer loads"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for tok in tokenizers() {
        let enc = tok.encode(&text);
        assert_eq!(enc.ids.len(), tok.max_length());
        let max = tok.max_id();
        assert!(enc.ids.iter().all(|&id| id <= max));
        let unpadded = tok.encode_unpadded(&text);
        assert!(unpadded.len() >= 2);
    }
});
