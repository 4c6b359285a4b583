//! Tokenizer *files* from strangers: arbitrary bytes as `tokenizer.json` (first byte even) or as
//! `vocab.json` + `merges.txt` split at the first NUL (first byte odd), with a fixed
//! `tokenizer_config.json`. Loading fails cleanly or yields a tokenizer that encodes a prompt with
//! special tokens to exactly `max_length` ids within its id range, without hanging.
#![no_main]

use autopipeline::text::clip_tokenizer::ClipTokenizer;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ap-fuzz-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("tokenizer_config.json"),
            r#"{"model_max_length": 77, "pad_token": "<|endoftext|>"}"#,
        )
        .unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let d = dir();
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        let _ = std::fs::remove_file(d.join(f));
    }
    if mode % 2 == 0 {
        std::fs::write(d.join("tokenizer.json"), rest).unwrap();
    } else {
        let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::fs::write(d.join("vocab.json"), &rest[..cut]).unwrap();
        std::fs::write(d.join("merges.txt"), rest.get(cut + 1..).unwrap_or(&[])).unwrap();
    }
    let Ok(tok) = ClipTokenizer::from_dir(d) else {
        return;
    };
    for text in ["a photo of a cat, 4k <|endoftext|> Ünï 🐱", "", "!!!   x"] {
        let enc = tok.encode(text);
        assert_eq!(enc.ids.len(), tok.max_length());
        let max = tok.max_id();
        assert!(enc.ids.iter().all(|&id| id <= max));
    }
});
