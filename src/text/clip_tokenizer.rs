//! CLIP byte-level BPE tokenizer, as used by every Stable Diffusion text encoder.
//!
//! It reproduces the ids of transformers 5 `CLIPTokenizer(...)(text, padding="max_length",
//! max_length=model_max_length, truncation=True)`. transformers runs the Hugging Face *tokenizers*
//! pipeline for that call, and so do we: the `tokenizers` crate does the added-token split, the
//! normalizer (NFC, `\s+` → one space, lowercase), the pre-tokenizer (the CLIP split regex, then
//! GPT-2's byte-level step), BPE with the `</w>` end-of-word suffix and the post-processor's
//! start/end tokens.
//!
//! Our own code is only what lives in transformers' Python rather than in `tokenizer.json`:
//!
//! * the **legacy layout** (`vocab.json` + `merges.txt`): the pipeline transformers' converter
//!   builds for `CLIPTokenizerFast` is built here in code from the crate's parts;
//! * the **special tokens** named by `tokenizer_config.json` / `special_tokens_map.json` (or
//!   [`ClipTokenizer::with_pad_token`]) and their added-token flags: each one that is not an added
//!   token yet is added as one, `normalized: false` if any special token with that content was
//!   given as a plain string, else its AddedToken dict's `normalized`. So, as in transformers, an
//!   upper-case `<|ENDOFTEXT|>` typed in a prompt is the end token for a legacy folder where no
//!   special token is the plain string `<|endoftext|>`, and split as text otherwise;
//! * `model_max_length` (default 77), and the fixed-length call: start token, at most
//!   `max_length - 2` prompt tokens, end token, pad ids.

use std::fmt;
use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, AddedVocabulary, PostProcessor, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// `model_max_length` when `tokenizer_config.json` does not give one (CLIP's context length).
const DEFAULT_MAX_LENGTH: usize = 77;
/// Largest `model_max_length` accepted (CLIP takes 77; long-prompt encoders a few hundred).
const MAX_MODEL_MAX_LENGTH: usize = 1 << 16;
/// transformers' default special tokens for `CLIPTokenizer`.
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
/// The pre-tokenizer split pattern transformers builds for CLIP (kept matches, dropped gaps).
const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The result of [`ClipTokenizer::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Exactly `max_length` ids: start token, the prompt's tokens, end token, then pad ids.
    pub ids: Vec<u32>,
    /// The prompt had more tokens than fit in `max_length` and was cut.
    pub truncated: bool,
}

/// A special token as written in `tokenizer_config.json` / `special_tokens_map.json`.
#[derive(Clone, Debug)]
struct SpecialSpec {
    content: String,
    /// Given as a plain string (transformers then adds it with `normalized: false`).
    plain: bool,
    /// The `normalized` flag of an `AddedToken` dict.
    normalized: Option<bool>,
}

/// A CLIP BPE tokenizer loaded from a checkpoint's tokenizer folder.
#[derive(Clone)]
pub struct ClipTokenizer {
    /// The crate's tokenizer: the folder's pipeline plus the special tokens.
    inner: Tokenizer,
    /// Added tokens the files list (`tokenizer.json` `added_tokens`, or a legacy config's
    /// `added_tokens_decoder`), in id order: the added vocabulary before the special tokens.
    base_added: Vec<AddedToken>,
    /// bos, eos, unk and pad as the files (or [`Self::with_pad_token`]) name them.
    specials: [SpecialSpec; 4],
    /// The folder has its own post-processor (`tokenizer.json`); otherwise one is made from the
    /// bos and eos special tokens.
    file_post_processor: bool,
    /// `tokenizer_config.json` path, for error messages.
    config_name: String,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

impl fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads a tokenizer folder in either layout: `tokenizer.json` (transformers 5, preferred when
    /// present) or `vocab.json` + `merges.txt` (hub-style legacy), each with the optional
    /// `tokenizer_config.json` and `special_tokens_map.json` that name the special tokens and
    /// `model_max_length`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::NotFound(format!(
                "tokenizer folder {} does not exist",
                dir.display()
            )));
        }
        let config = read_json_optional(&dir.join("tokenizer_config.json"))?;
        let special_map = read_json_optional(&dir.join("special_tokens_map.json"))?;
        let config_name = dir.join("tokenizer_config.json").display().to_string();
        let sources = [config.as_ref(), special_map.as_ref()];
        // Special tokens: tokenizer_config.json first, then special_tokens_map.json, then the
        // CLIPTokenizer defaults.
        let mut specials = Vec::with_capacity(4);
        for (key, default) in [
            ("bos_token", DEFAULT_BOS),
            ("eos_token", DEFAULT_EOS),
            ("unk_token", DEFAULT_EOS),
            ("pad_token", DEFAULT_EOS),
        ] {
            specials
                .push(special_spec(&sources, key, &config_name)?.unwrap_or_else(|| default_spec(default)));
        }
        let specials: [SpecialSpec; 4] = specials
            .try_into()
            .map_err(|_| Error::Internal("four special tokens expected".to_string()))?;

        let tokenizer_json = dir.join("tokenizer.json");
        let vocab_json = dir.join("vocab.json");
        let merges_txt = dir.join("merges.txt");
        let (inner, file_post_processor) = if tokenizer_json.is_file() {
            let text = read_text(&tokenizer_json)?;
            let inner = Tokenizer::from_bytes(text.as_bytes()).map_err(|e| {
                Error::InvalidModel(format!(
                    "{} does not parse as a tokenizers file: {e}",
                    tokenizer_json.display()
                ))
            })?;
            let has_post = inner.get_post_processor().is_some();
            (inner, has_post)
        } else if vocab_json.is_file() && merges_txt.is_file() {
            let added = legacy_added_tokens(config.as_ref(), &config_name)?;
            let mut inner = legacy_tokenizer(&vocab_json, &merges_txt, &specials[2].content)?;
            inner
                .add_tokens(added)
                .map_err(|e| Error::InvalidModel(format!("{config_name}: added_tokens_decoder: {e}")))?;
            (inner, false)
        } else {
            return Err(Error::NotFound(format!(
                "tokenizer folder {} has neither tokenizer.json nor vocab.json + merges.txt",
                dir.display()
            )));
        };
        let mut base_added: Vec<(u32, AddedToken)> = inner.get_added_tokens_decoder().into_iter().collect();
        base_added.sort_by_key(|(id, _)| *id);
        let mut tokenizer = ClipTokenizer {
            inner,
            base_added: base_added.into_iter().map(|(_, token)| token).collect(),
            specials,
            file_post_processor,
            config_name,
            bos_id: 0,
            eos_id: 0,
            pad_id: 0,
            max_length: 0,
        };
        tokenizer.max_length = max_length_from(config.as_ref(), &tokenizer.config_name)?;
        tokenizer.resolve_added_tokens()?;
        Ok(tokenizer)
    }

    /// Uses `token` as the pad token, like `CLIPTokenizer.from_pretrained(dir, pad_token=token)`:
    /// it becomes a special added token (`normalized: false`) if it is not one already, so it is
    /// also cut out of prompts as a whole token (with pad `!`, `"hi!!"` gives `hi`, `!`, `!`).
    /// As in transformers, the other special tokens' added-token flags are worked out again.
    pub fn with_pad_token(mut self, token: &str) -> Result<Self> {
        if token.is_empty() {
            return Err(Error::InvalidArgument(
                "the pad token must not be empty".to_string(),
            ));
        }
        self.specials[3] = default_spec(token);
        self.resolve_added_tokens()?;
        Ok(self)
    }

    /// Ids for `text` padded (with the pad id) or truncated to exactly [`Self::max_length`]:
    /// start token, at most `max_length - 2` prompt tokens, end token, pad ids.
    ///
    /// # Panics
    /// When the `tokenizers` crate fails on the text; see [`Self::try_encode`].
    pub fn encode(&self, text: &str) -> Encoding {
        self.try_encode(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::encode`], with the `tokenizers` crate's failures as errors (a `tokenizer.json` whose
    /// unknown token is not in its vocabulary fails on a character the vocabulary lacks, as it does
    /// in transformers).
    pub fn try_encode(&self, text: &str) -> Result<Encoding> {
        let mut tokens = self.try_token_ids(text)?;
        let room = self.max_length.saturating_sub(2);
        let truncated = tokens.len() > room;
        tokens.truncate(room);
        let mut ids = Vec::with_capacity(self.max_length.max(tokens.len() + 2));
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens);
        ids.push(self.eos_id);
        if ids.len() < self.max_length {
            ids.resize(self.max_length, self.pad_id);
        }
        Ok(Encoding { ids, truncated })
    }

    /// Start token + all of the prompt's tokens + end token, without truncation or padding.
    ///
    /// # Panics
    /// When the `tokenizers` crate fails on the text; see [`Self::try_encode`].
    pub fn encode_unpadded(&self, text: &str) -> Vec<u32> {
        let tokens = self.token_ids(text);
        let mut ids = Vec::with_capacity(tokens.len() + 2);
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens);
        ids.push(self.eos_id);
        ids
    }

    /// The prompt's token ids alone: no start or end token, no truncation, no padding.
    ///
    /// # Panics
    /// When the `tokenizers` crate fails on the text; see [`Self::try_encode`].
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        self.try_token_ids(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::InvalidArgument(format!("the CLIP tokenizer cannot encode {text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of `token` (an added token or a vocabulary entry such as `cat</w>`), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Sequence length of [`Self::encode`] (`model_max_length`, 77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Id used to pad [`Self::encode`] output.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of the start token `<|startoftext|>`.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of the end token `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Number of entries in the BPE vocabulary (49408 for CLIP), added tokens outside it excluded.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(false)
    }

    /// The largest id [`Self::encode`] can produce (vocabulary, added and special tokens): the text
    /// encoder's embedding table must be larger than this.
    pub fn max_id(&self) -> u32 {
        self.inner
            .get_vocab(true)
            .into_values()
            .chain([self.bos_id, self.eos_id, self.pad_id])
            .max()
            .unwrap_or(0)
    }

    /// The first special token (`bos_token`, `eos_token`, `unk_token`, `pad_token`) whose id is `limit`
    /// or more, with its content and id: a special token missing from the vocabulary, which
    /// transformers appends as a new token. For a message naming the config key and file.
    pub fn special_beyond(&self, limit: usize) -> Option<(&'static str, String, u32)> {
        ["bos_token", "eos_token", "unk_token", "pad_token"]
            .into_iter()
            .zip(&self.specials)
            .find_map(|(key, spec)| {
                let id = self.inner.token_to_id(&spec.content)?;
                (id as usize >= limit).then(|| (key, spec.content.clone(), id))
            })
    }

    /// The `tokenizer_config.json` path the special tokens come from (for messages).
    pub fn config_file(&self) -> &str {
        &self.config_name
    }

    /// Rebuilds the added vocabulary from `base_added` and the special tokens, then the bos, eos
    /// and pad ids. Like transformers, each special token that is not an added token yet is added
    /// as one; if any special token with that content was given as a plain string it gets
    /// `normalized: false`, otherwise the `normalized` flag of its AddedToken dict.
    fn resolve_added_tokens(&mut self) -> Result<()> {
        let failed = |e: tokenizers::Error| {
            Error::InvalidModel(format!(
                "{}: adding the special tokens failed: {e}",
                self.config_name
            ))
        };
        let mut inner = self.inner.clone();
        inner.with_added_vocabulary(AddedVocabulary::new());
        inner
            .add_tokens(self.base_added.iter().cloned())
            .map_err(failed)?;
        let specials = &self.specials;
        for spec in specials {
            if inner
                .get_added_vocabulary()
                .get_vocab()
                .contains_key(&spec.content)
            {
                continue;
            }
            let same = || specials.iter().filter(|s| s.content == spec.content);
            let normalized = if same().any(|s| s.plain) {
                false
            } else {
                same().find_map(|s| s.normalized).unwrap_or(false)
            };
            inner
                .add_special_tokens([AddedToken::from(spec.content.as_str(), true).normalized(normalized)])
                .map_err(failed)?;
        }
        let id_of = |content: &str| {
            inner.token_to_id(content).ok_or_else(|| {
                Error::InvalidModel(format!(
                    "{}: special token {content:?} has no id",
                    self.config_name
                ))
            })
        };
        let pad_id = id_of(&specials[3].content)?;
        if !self.file_post_processor {
            let bos = (specials[0].content.clone(), id_of(&specials[0].content)?);
            let eos = (specials[1].content.clone(), id_of(&specials[1].content)?);
            inner.with_post_processor(Some(
                RobertaProcessing::new(eos, bos)
                    .trim_offsets(false)
                    .add_prefix_space(false),
            ));
        }
        // The start and end ids as the post-processor adds them around an empty prompt.
        let not_clip = || {
            Error::Unsupported(format!(
                "{}: the folder's post_processor is not \"<start> prompt <end>\", which a CLIP \
                 tokenizer needs",
                self.config_name
            ))
        };
        let post = inner.get_post_processor().ok_or_else(not_clip)?;
        if post.added_tokens(false) != 2 {
            return Err(not_clip());
        }
        let empty = inner
            .post_process(tokenizers::Encoding::default(), None, true)
            .map_err(|_| not_clip())?;
        let [bos_id, eos_id] = empty.get_ids() else {
            return Err(not_clip());
        };
        (self.bos_id, self.eos_id, self.pad_id) = (*bos_id, *eos_id, pad_id);
        self.inner = inner;
        Ok(())
    }
}

/// The pipeline transformers' slow-to-fast converter builds for a `vocab.json` + `merges.txt`
/// CLIP folder (`CLIPConverter`): NFC, `\s+` → ` `, lowercase; the CLIP split regex (matches
/// kept) then GPT-2's byte level; BPE with `</w>`. The post-processor comes from the special
/// tokens ([`ClipTokenizer::resolve_added_tokens`]).
fn legacy_tokenizer(vocab_path: &Path, merges_path: &Path, unk: &str) -> Result<Tokenizer> {
    let vocab_name = vocab_path.display().to_string();
    let vocab: Vocab = serde_json::from_str(&read_text(vocab_path)?)
        .map_err(|e| Error::InvalidModel(format!("{vocab_name}: not a JSON object of token → id: {e}")))?;
    if vocab.is_empty() {
        return Err(Error::InvalidModel(format!("{vocab_name}: vocabulary is empty")));
    }
    let merges_name = merges_path.display().to_string();
    let merges_text = read_text(merges_path)?;
    let mut merges = Vec::new();
    for (i, line) in merges_text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        merges.push(parse_merge_line(line, merges.len() + 1, &merges_name)?);
    }
    // An unknown token outside the vocabulary would make the crate fail on unknown characters;
    // transformers' converter then leaves them out, as does a BPE without one.
    let has_unk = vocab.contains_key(unk);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .end_of_word_suffix("</w>".to_string());
    if has_unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| Error::InvalidModel(format!("{merges_name} with {vocab_name}: {e}")))?;
    let unsupported = |what: &str, e: tokenizers::Error| Error::Unsupported(format!("CLIP {what}: {e}"));
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(vec![
            NFC.into(),
            Replace::new(ReplacePattern::Regex(r"\s+".to_string()), " ")
                .map_err(|e| unsupported("normalizer", e))?
                .into(),
            Lowercase.into(),
        ])))
        .map_err(|e| unsupported("normalizer", e))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        Split::new(
            SplitPattern::Regex(CLIP_SPLIT_PATTERN.to_string()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| unsupported("pre-tokenizer", e))?
        .into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    Ok(tokenizer)
}

/// `added_tokens_decoder` of a transformers 4 `tokenizer_config.json`, in id order.
fn legacy_added_tokens(config: Option<&Value>, config_name: &str) -> Result<Vec<AddedToken>> {
    let mut added = Vec::new();
    if let Some(Value::Object(map)) = config.and_then(|c| c.get("added_tokens_decoder")) {
        for (id, token) in map {
            let (Ok(id), Some(content)) = (id.parse::<u32>(), token.get("content").and_then(Value::as_str))
            else {
                return Err(Error::InvalidModel(format!(
                    "{config_name}: bad added_tokens_decoder entry {id:?}"
                )));
            };
            let flag = |key: &str| token.get(key).and_then(Value::as_bool).unwrap_or(false);
            let token = AddedToken::from(content, flag("special"))
                .normalized(flag("normalized"))
                .lstrip(flag("lstrip"))
                .rstrip(flag("rstrip"))
                .single_word(flag("single_word"));
            added.push((id, token));
        }
        added.sort_by_key(|(id, _)| *id);
    }
    Ok(added.into_iter().map(|(_, token)| token).collect())
}

fn parse_merge_line(line: &str, number: usize, source: &str) -> Result<(String, String)> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(Error::InvalidModel(format!(
            "{source}: merge {number} {line:?} is not two tokens separated by one space"
        ))),
    }
}

fn read_text(path: &Path) -> Result<String> {
    crate::weights::load::read_text_file(path)
}

fn read_json_optional(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_text(path)?;
    match serde_json::from_str(&text) {
        Ok(value @ Value::Object(_)) => Ok(Some(value)),
        Ok(_) => Err(Error::InvalidModel(format!(
            "{}: not a JSON object",
            path.display()
        ))),
        Err(e) => Err(Error::InvalidModel(format!(
            "{}: invalid JSON: {e}",
            path.display()
        ))),
    }
}

fn default_spec(content: &str) -> SpecialSpec {
    SpecialSpec {
        content: content.to_string(),
        plain: true,
        normalized: None,
    }
}

/// A special token from the first source that names it: a string or `{"content": ...}` dict.
fn special_spec(sources: &[Option<&Value>], key: &str, config_name: &str) -> Result<Option<SpecialSpec>> {
    for source in sources.iter().flatten() {
        match source.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s.is_empty() => {
                return Err(Error::InvalidModel(format!(
                    "{config_name} (or special_tokens_map.json): {key} is an empty string"
                )))
            }
            Some(Value::String(s)) => {
                return Ok(Some(SpecialSpec {
                    content: s.clone(),
                    plain: true,
                    normalized: None,
                }))
            }
            Some(Value::Object(map)) => {
                let content = map
                    .get("content")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| {
                        Error::InvalidModel(format!(
                            "{config_name} (or special_tokens_map.json): {key} has no non-empty \
                             string \"content\""
                        ))
                    })?;
                return Ok(Some(SpecialSpec {
                    content: content.to_string(),
                    plain: false,
                    normalized: map.get("normalized").and_then(Value::as_bool),
                }));
            }
            Some(other) => {
                return Err(Error::InvalidModel(format!(
                    "{config_name} (or special_tokens_map.json): {key} should be a string or an \
                     AddedToken dict, got {other}"
                )))
            }
        }
    }
    Ok(None)
}

/// `model_max_length` from `tokenizer_config.json`; missing, or transformers' "no limit"
/// sentinel (`1e30`), gives CLIP's 77.
fn max_length_from(config: Option<&Value>, config_name: &str) -> Result<usize> {
    let Some(value) = config.and_then(|c| c.get("model_max_length")) else {
        return Ok(DEFAULT_MAX_LENGTH);
    };
    if value.is_null() {
        return Ok(DEFAULT_MAX_LENGTH);
    }
    let length = match value.as_u64() {
        Some(n) => n as f64,
        None => value.as_f64().unwrap_or(-1.0),
    };
    if length >= 1e18 {
        return Ok(DEFAULT_MAX_LENGTH);
    }
    if length < 2.0 || length.fract() != 0.0 {
        return Err(Error::InvalidModel(format!(
            "{config_name}: model_max_length {value} is not a whole number of at least 2"
        )));
    }
    // Below transformers' "no limit" sentinel, a length no text encoder has: refusing it here keeps
    // `encode` from allocating without bound.
    if length > MAX_MODEL_MAX_LENGTH as f64 {
        return Err(Error::InvalidModel(format!(
            "{config_name}: model_max_length {value} is larger than any text encoder takes (at most \
             {MAX_MODEL_MAX_LENGTH})"
        )));
    }
    Ok(length as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's byte → printable character table (the byte-level alphabet).
    fn bytes_to_unicode() -> Vec<char> {
        let mut extra = 0;
        (0u32..256)
            .map(|b| {
                let printable =
                    (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
                if printable {
                    char::from_u32(b).unwrap()
                } else {
                    extra += 1;
                    char::from_u32(255 + extra).unwrap()
                }
            })
            .collect()
    }

    /// A legacy folder: the 512 byte symbols (plain and `</w>`), `ca`, `cat</w>` and the two
    /// special tokens; `model_max_length` 8, pad `!`, bos a `normalized: true` AddedToken dict.
    fn toy_dir(name: &str, merges: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ap-clip-toy-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut vocab = serde_json::Map::new();
        for (i, c) in bytes_to_unicode().iter().enumerate() {
            vocab.insert(c.to_string(), (i as u32).into());
            vocab.insert(format!("{c}</w>"), (256 + i as u32).into());
        }
        for (token, id) in [
            ("ca", 512),
            ("cat</w>", 513),
            (DEFAULT_BOS, 514),
            (DEFAULT_EOS, 515),
        ] {
            vocab.insert(token.to_string(), id.into());
        }
        std::fs::write(dir.join("vocab.json"), Value::Object(vocab).to_string()).unwrap();
        std::fs::write(dir.join("merges.txt"), merges).unwrap();
        let config = serde_json::json!({
            "model_max_length": 8,
            "pad_token": "!",
            "bos_token": {"content": DEFAULT_BOS, "normalized": true},
        });
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        dir
    }

    #[test]
    fn merges_special_tokens_padding_and_truncation() {
        let dir = toy_dir("ok", "#version: 0.2\nc a\nca t</w>\n");
        let tok = ClipTokenizer::from_dir(&dir);
        std::fs::remove_dir_all(&dir).ok();
        let tok = tok.unwrap();
        assert_eq!(tok.max_length(), 8);
        assert_eq!(tok.vocab_size(), 516);
        assert_eq!((tok.bos_id(), tok.eos_id()), (514, 515));
        // `!` is in the vocabulary at its byte position and becomes a special added token.
        assert_eq!(tok.pad_id(), u32::from(b'!'));
        assert_eq!(tok.encode_unpadded("  CAT  "), vec![514, 513, 515]);
        assert_eq!(tok.encode_unpadded("ca"), vec![514, 99, 256 + 97, 515]);
        let enc = tok.encode("cat");
        assert_eq!(enc.ids, vec![514, 513, 515, 33, 33, 33, 33, 33]);
        assert!(!enc.truncated);
        let enc = tok.encode("cat cat cat cat cat cat cat");
        assert_eq!(enc.ids, vec![514, 513, 513, 513, 513, 513, 513, 515]);
        assert!(enc.truncated);
        // Added tokens are cut out before normalization; `<|startoftext|>` is normalized.
        assert_eq!(
            tok.token_ids("cat!<|endoftext|><|STARTOFTEXT|>"),
            vec![513, 33, 515, 514]
        );
        assert_eq!(tok.max_id(), 515);
        assert_eq!(tok.token_to_id("cat</w>"), Some(513));
    }

    #[test]
    fn bad_merges_name_the_file() {
        let dir = toy_dir("bad", "c a\nc\n");
        let err = ClipTokenizer::from_dir(&dir).unwrap_err().to_string();
        let dir2 = toy_dir("oov", "c a\nca x</w>y\n");
        let err2 = ClipTokenizer::from_dir(&dir2).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).ok();
        std::fs::remove_dir_all(&dir2).ok();
        assert!(err.contains("merges.txt: merge 2"), "{err}");
        assert!(err2.contains("merges.txt"), "{err2}");
    }
}
