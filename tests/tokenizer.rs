//! CLIP tokenizer against transformers 5.24 ids (`tests/data/tokenizers/clip-cases.json`, 160
//! prompts), for the full (49408) and tiny (1514) vocabularies, both pad tokens, and both folder
//! layouts (transformers 5 `tokenizer.json` and hub-style `vocab.json` + `merges.txt`).

mod common;

use std::path::{Path, PathBuf};

use autopipeline::text::clip_tokenizer::ClipTokenizer;
use serde_json::Value;

struct Case {
    text: String,
    ids_unpadded: Vec<u32>,
    ids_pad_endoftext: Vec<u32>,
    ids_pad_exclamation: Vec<u32>,
    tiny_ids_pad_endoftext: Vec<u32>,
    tiny_ids_pad_exclamation: Vec<u32>,
    truncated: bool,
}

fn tokenizers_dir() -> PathBuf {
    common::data_dir().join("tokenizers")
}

fn ids(case: &Value, key: &str) -> Vec<u32> {
    case[key]
        .as_array()
        .unwrap_or_else(|| panic!("case {} has no {key}", case["text"]))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn cases() -> Vec<Case> {
    let path = tokenizers_dir().join("clip-cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<Case> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            text: case["text"].as_str().unwrap().to_string(),
            ids_unpadded: ids(case, "ids_unpadded"),
            ids_pad_endoftext: ids(case, "ids_pad_endoftext"),
            ids_pad_exclamation: ids(case, "ids_pad_exclamation"),
            tiny_ids_pad_endoftext: ids(case, "tiny_ids_pad_endoftext"),
            tiny_ids_pad_exclamation: ids(case, "tiny_ids_pad_exclamation"),
            truncated: case["truncated"].as_bool().unwrap(),
        })
        .collect();
    assert_eq!(cases.len(), 160);
    cases
}

fn load(dir: &Path) -> ClipTokenizer {
    ClipTokenizer::from_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Asserts `actual(case) == expected(case)` for every case, listing every mismatch.
fn check_all(
    what: &str,
    cases: &[Case],
    actual: impl Fn(&Case) -> Vec<u32>,
    expected: impl Fn(&Case) -> &Vec<u32>,
) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let got = actual(case);
            let want = expected(case);
            (&got != want).then(|| format!("  {:?}\n    got  {got:?}\n    want {want:?}", case.text))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn full_vocab_pad_endoftext() {
    let cases = cases();
    let tok = load(&tokenizers_dir().join("clip-full"));
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (49406, 49407, 49407));
    assert_eq!(tok.max_length(), 77);
    assert_eq!(
        tok.encode_unpadded("a photo of a cat"),
        vec![49406, 320, 1125, 539, 320, 2368, 49407]
    );
    check_all(
        "full, pad <|endoftext|>",
        &cases,
        |c| tok.encode(&c.text).ids,
        |c| &c.ids_pad_endoftext,
    );
    check_all(
        "full, unpadded",
        &cases,
        |c| tok.encode_unpadded(&c.text),
        |c| &c.ids_unpadded,
    );
    for case in &cases {
        assert_eq!(
            tok.encode(&case.text).truncated,
            case.truncated,
            "truncated flag of {:?}",
            case.text
        );
    }
}

#[test]
fn full_vocab_pad_exclamation() {
    let cases = cases();
    let tok = load(&tokenizers_dir().join("clip-full"))
        .with_pad_token("!")
        .unwrap();
    assert_eq!(tok.pad_id(), 0);
    check_all(
        "full, pad !",
        &cases,
        |c| tok.encode(&c.text).ids,
        |c| &c.ids_pad_exclamation,
    );
}

#[test]
fn tiny_vocab_both_pads() {
    let cases = cases();
    let tok = load(&tokenizers_dir().join("clip-tiny"));
    assert_eq!(tok.vocab_size(), 1514);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (1512, 1513, 1513));
    check_all(
        "tiny, pad <|endoftext|>",
        &cases,
        |c| tok.encode(&c.text).ids,
        |c| &c.tiny_ids_pad_endoftext,
    );
    let tok = tok.with_pad_token("!").unwrap();
    assert_eq!(tok.pad_id(), 0);
    check_all(
        "tiny, pad !",
        &cases,
        |c| tok.encode(&c.text).ids,
        |c| &c.tiny_ids_pad_exclamation,
    );
}

/// The full vocabulary through the legacy files only (`vocab.json` + `merges.txt`), in a temporary
/// copy of `clip-full` without its `tokenizer.json`.
#[test]
fn full_vocab_legacy_files() {
    let cases = cases();
    let src = tokenizers_dir().join("clip-full");
    let tmp = std::env::temp_dir().join(format!("autopipeline-clip-legacy-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for name in [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(src.join(name), tmp.join(name)).unwrap();
    }
    let result = std::panic::catch_unwind(|| {
        let tok = load(&tmp);
        assert_eq!(tok.vocab_size(), 49408);
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (49406, 49407, 49407));
        check_all(
            "full legacy, pad <|endoftext|>",
            &cases,
            |c| tok.encode(&c.text).ids,
            |c| &c.ids_pad_endoftext,
        );
        let tok = tok.with_pad_token("!").unwrap();
        check_all(
            "full legacy, pad !",
            &cases,
            |c| tok.encode(&c.text).ids,
            |c| &c.ids_pad_exclamation,
        );
    });
    std::fs::remove_dir_all(&tmp).ok();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Checkpoint tokenizer folders: sd15-tiny (legacy) and sdxl-tiny (transformers 5) give identical
/// ids; sd2-tiny (legacy) and sdxl-tiny `tokenizer_2` (transformers 5) take pad `!` from their files.
#[test]
fn checkpoint_layouts_load_identical_ids() {
    let cases = cases();
    let layouts = tokenizers_dir().join("layouts");
    let legacy = load(&layouts.join("legacy"));
    let tf5 = load(&layouts.join("tf5"));
    for tok in [&legacy, &tf5] {
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.max_length()),
            (1512, 1513, 1513, 77)
        );
        assert_eq!(tok.vocab_size(), 1514);
    }
    check_all(
        "legacy layout",
        &cases,
        |c| legacy.encode(&c.text).ids,
        |c| &c.tiny_ids_pad_endoftext,
    );
    check_all(
        "tf5 layout",
        &cases,
        |c| tf5.encode(&c.text).ids,
        |c| &c.tiny_ids_pad_endoftext,
    );
    for case in &cases {
        assert_eq!(
            legacy.encode_unpadded(&case.text),
            tf5.encode_unpadded(&case.text),
            "{:?}",
            case.text
        );
    }

    let legacy_bang = load(&layouts.join("legacy_pad_bang"));
    let tf5_bang = load(&layouts.join("tf5_pad_bang"));
    for tok in [&legacy_bang, &tf5_bang] {
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (1512, 1513, 0));
    }
    check_all(
        "legacy layout, pad !",
        &cases,
        |c| legacy_bang.encode(&c.text).ids,
        |c| &c.tiny_ids_pad_exclamation,
    );
    check_all(
        "tf5 layout, pad !",
        &cases,
        |c| tf5_bang.encode(&c.text).ids,
        |c| &c.tiny_ids_pad_exclamation,
    );
}

#[test]
fn missing_files_are_reported_with_the_folder() {
    let err = ClipTokenizer::from_dir(&tokenizers_dir().join("does-not-exist")).unwrap_err();
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    let empty = std::env::temp_dir().join(format!("autopipeline-clip-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = ClipTokenizer::from_dir(&empty).unwrap_err().to_string();
    std::fs::remove_dir_all(&empty).ok();
    assert!(
        err.contains("neither tokenizer.json nor vocab.json + merges.txt"),
        "{err}"
    );
    assert!(err.contains("autopipeline-clip-empty"), "{err}");
}

/// Special tokens typed in a prompt, upper-case included. Expected ids come from transformers
/// 5.24.0 / tokenizers 0.23.3 `CLIPTokenizer.from_pretrained(folder[, pad_token="!"])(text)`:
/// `<|startoftext|>` is matched after normalization (so any case), `<|endoftext|>` only as typed,
/// except for a legacy folder where no special token is the plain string `<|endoftext|>`.
#[test]
fn special_tokens_in_prompts_follow_transformers() {
    let layouts = tokenizers_dir().join("layouts");
    let upper_eos_split = vec![1512, 27, 347, 524, 639, 69, 600, 1052, 91, 285, 1513];
    let upper_eos_token = vec![1512, 1513, 1513];
    let cases: [(ClipTokenizer, &Vec<u32>); 5] = [
        (load(&layouts.join("legacy")), &upper_eos_split),
        (load(&layouts.join("tf5")), &upper_eos_split),
        (load(&layouts.join("tf5_pad_bang")), &upper_eos_split),
        (load(&layouts.join("legacy_pad_bang")), &upper_eos_token),
        (
            load(&layouts.join("legacy")).with_pad_token("!").unwrap(),
            &upper_eos_token,
        ),
    ];
    for (i, (tok, upper_eos)) in cases.iter().enumerate() {
        assert_eq!(&tok.encode_unpadded("<|ENDOFTEXT|>"), *upper_eos, "case {i}");
        assert_eq!(
            tok.encode_unpadded("<|STARTOFTEXT|>"),
            vec![1512, 1512, 1513],
            "case {i}"
        );
        assert_eq!(
            tok.encode_unpadded("x<|endoftext|>y"),
            vec![1512, 343, 1513, 344, 1513],
            "case {i}"
        );
    }
    let full = load(&tokenizers_dir().join("clip-full"));
    assert_eq!(
        full.encode_unpadded("<|ENDOFTEXT|>"),
        vec![49406, 27, 347, 40786, 4160, 91, 285, 49407]
    );
    assert_eq!(full.encode_unpadded("Σ!"), vec![49406, 139, 481, 256, 49407]);
    let full = full.with_pad_token("!").unwrap();
    assert_eq!(full.encode_unpadded("Σ!"), vec![49406, 139, 481, 0, 49407]);
}

/// T5 (FLUX's `tokenizer_2`) through the `tokenizers` crate: the ids transformers' `T5TokenizerFast`
/// gives as `FluxPipeline` calls it (`padding="max_length", truncation=True`) at 512 and 16 tokens, on
/// empty, long (truncated), unicode, whitespace, punctuation and special-token strings
/// (`tests/data/tokenizers/t5-tiny-ids.json`, made by `scripts/references/make_flux.py`).
#[test]
fn t5_ids_match_transformers() {
    use autopipeline::text::t5_tokenizer::T5Tokenizer;
    let path = common::data_dir().join("tokenizers/t5-tiny-ids.json");
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tok = T5Tokenizer::from_dir(&common::data_dir().join(file["tokenizer"].as_str().unwrap())).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = file["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let untruncated = ids(&case["ids_untruncated"]);
        for n in [512usize, 16] {
            let want = ids(&case[format!("ids_max_length_{n}").as_str()]);
            let got = tok.encode(text, n).unwrap();
            assert_eq!(got.ids, want, "{text:?} at max_length {n}");
            assert_eq!(
                got.untruncated_len,
                untruncated.len(),
                "{text:?}: untruncated length"
            );
            assert_eq!(
                got.truncated(),
                untruncated.len() > n,
                "{text:?}: truncated at {n}"
            );
        }
    }
}

/// A T5 tokenizer folder without `tokenizer.json`, or with one that does not parse, is refused with a
/// message naming the file.
#[test]
fn t5_tokenizer_errors_name_the_file() {
    use autopipeline::text::t5_tokenizer::T5Tokenizer;
    let dir = std::env::temp_dir().join(format!("ap-t5-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = T5Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("has no tokenizer.json"), "{e}");
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let e = T5Tokenizer::from_dir(&dir).unwrap_err();
    assert!(matches!(e, autopipeline::Error::InvalidModel(_)), "{e}");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
