//! T5's tokenizer (FLUX's and SD3's `tokenizer_2` / `tokenizer_3`): the checkpoint's `tokenizer.json`
//! (a SentencePiece Unigram model) run by the `tokenizers` crate, with transformers' `T5TokenizerFast`
//! call as the FLUX pipelines make it: `padding="max_length", max_length=N, truncation=True`.

use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::{PaddingDirection, PostProcessor, Tokenizer, TruncationDirection};

/// A loaded T5 tokenizer.
#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    pad_id: u32,
    pad_token: String,
    /// `model_max_length` from `tokenizer_config.json` (512 for T5 v1.1).
    max_length: usize,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// One prompt's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct T5Encoding {
    /// Exactly `max_length` ids: the text's, cut to leave room for `</s>`, then `</s>`, then padding.
    pub ids: Vec<u32>,
    /// Ids the text has with `</s>` and without truncation.
    pub untruncated_len: usize,
    /// The text's ids cut off by the limit.
    pub removed: Vec<u32>,
}

impl T5Encoding {
    /// Whether the text lost tokens to the length limit.
    pub fn truncated(&self) -> bool {
        self.untruncated_len > self.ids.len()
    }
}

impl T5Tokenizer {
    /// Reads `tokenizer.json` (and `tokenizer_config.json` for the pad token and `model_max_length`,
    /// when present) from a tokenizer folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(Error::NotFound(format!(
                "{} has no tokenizer.json: T5 tokenizers are read from the fast-tokenizer file \
                 transformers' T5TokenizerFast saves (a SentencePiece spiece.model alone is not supported)",
                dir.display()
            )));
        }
        let text = crate::weights::load::read_text_file(&file)?;
        let inner = Tokenizer::from_bytes(text.as_bytes()).map_err(|e| {
            Error::InvalidModel(format!(
                "{} does not parse as a tokenizers file: {e}",
                file.display()
            ))
        })?;
        let config_file = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_file.is_file() {
            let text = crate::weights::load::read_text_file(&config_file)?;
            serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| {
                Error::InvalidModel(format!("{} is not valid JSON: {e}", config_file.display()))
            })?
        } else {
            serde_json::Value::Null
        };
        let pad_token = token_field(&config, "pad_token").unwrap_or_else(|| "<pad>".to_string());
        let pad_id = inner.token_to_id(&pad_token).ok_or_else(|| {
            Error::InvalidModel(format!(
                "the pad token {pad_token:?} ({}) is not in {}'s vocabulary",
                if config_file.is_file() {
                    config_file.display().to_string()
                } else {
                    "T5's default".to_string()
                },
                file.display()
            ))
        })?;
        // transformers stores "no limit" as a huge float; T5 checkpoints say 512.
        let max_length = config
            .get("model_max_length")
            .and_then(serde_json::Value::as_f64)
            .filter(|v| (1.0..1e9).contains(v))
            .map_or(512, |v| v as usize);
        Ok(Self {
            inner,
            pad_id,
            pad_token,
            max_length,
        })
    }

    /// The ids of `text` padded (or truncated) to exactly `max_length`, as transformers gives them for
    /// `padding="max_length", truncation=True, add_special_tokens=True`.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<T5Encoding> {
        let mut enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::InvalidArgument(format!("the T5 tokenizer cannot encode {text:?}: {e}")))?;
        // Room for what the post-processor adds (T5: `</s>`), as transformers' truncation leaves it.
        let added = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let untruncated_len = enc.len() + added;
        let mut removed = Vec::new();
        if untruncated_len > max_length {
            let keep = max_length.saturating_sub(added);
            removed = enc.get_ids()[keep.min(enc.len())..].to_vec();
            enc.truncate(keep, 0, TruncationDirection::Right);
        }
        let mut enc = self
            .inner
            .post_process(enc, None, true)
            .map_err(|e| Error::InvalidModel(format!("the T5 tokenizer's post-processor failed: {e}")))?;
        if enc.len() < max_length {
            enc.pad(
                max_length,
                self.pad_id,
                0,
                &self.pad_token,
                PaddingDirection::Right,
            );
        }
        let mut ids = enc.get_ids().to_vec();
        ids.truncate(max_length);
        Ok(T5Encoding {
            ids,
            untruncated_len,
            removed,
        })
    }

    /// The id of `token`, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest id the tokenizer can produce.
    pub fn max_id(&self) -> u32 {
        self.inner.get_vocab(true).values().copied().max().unwrap_or(0)
    }

    /// `model_max_length`.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The text of `ids` (special tokens skipped), for warnings about truncated prompts.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }
}

/// A special token in `tokenizer_config.json`: a string, or an `AddedToken` object's `content`.
fn token_field(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}
