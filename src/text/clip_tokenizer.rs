//! CLIP byte-level BPE tokenizer, as used by every Stable Diffusion text encoder.
//!
//! It reproduces the ids of transformers 5 `CLIPTokenizer(...)(text, padding="max_length",
//! max_length=model_max_length, truncation=True)`, which runs the Hugging Face *tokenizers*
//! pipeline stored in `tokenizer.json`:
//!
//! 1. **Added tokens** (`<|startoftext|>`, `<|endoftext|>`, and the pad token when it is an added
//!    token, e.g. `!` for SD 2.x / SDXL `tokenizer_2`) are cut out of the text first. Tokens with
//!    `normalized: false` are matched in the raw text; the rest of the text is normalized and
//!    tokens with `normalized: true` are then matched in the normalized text (leftmost, longest).
//! 2. **Normalizer**: NFC, every `\s+` run becomes one space, lowercase (per character, so a
//!    Greek capital sigma always becomes `σ`, never the final form `ς`).
//! 3. **Pre-tokenizer**: the CLIP regex `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
//!    [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+` keeps its matches and drops everything else (whitespace),
//!    then the GPT-2 byte-level regex splits each piece again and maps its UTF-8 bytes to the
//!    printable characters of GPT-2's `bytes_to_unicode`.
//! 4. **BPE** over those characters with the end-of-word suffix `</w>` on the last character of
//!    each word; characters missing from the vocabulary become the unknown token.
//! 5. **Post-processing**: `<|startoftext|>` + ids + `<|endoftext|>`, truncated so that the whole
//!    sequence fits `max_length` (the end token is always kept), then right-padded with the pad id.
//!
//! Both folder layouts load: the transformers 5 layout (`tokenizer.json` + `tokenizer_config.json`)
//! and the hub-style legacy layout (`vocab.json` + `merges.txt` + `special_tokens_map.json` +
//! `tokenizer_config.json`), each to the ids transformers gives for it. The two agree except, as
//! in transformers, on an upper-case `<|ENDOFTEXT|>` typed in a prompt: for a legacy folder the
//! end token is matched after lowercasing unless some special token is given as the plain string
//! `<|endoftext|>` (see [`ClipTokenizer::with_pad_token`]). The pad token and `model_max_length`
//! come from the folder's files; when no file names them, the transformers `CLIPTokenizer`
//! defaults apply (`<|endoftext|>` and 77).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use regex::{NoExpand, Regex};
use serde::Deserialize;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// `model_max_length` when `tokenizer_config.json` does not give one (CLIP's context length).
const DEFAULT_MAX_LENGTH: usize = 77;
/// Largest `model_max_length` accepted (CLIP takes 77; long-prompt encoders a few hundred).
const MAX_MODEL_MAX_LENGTH: usize = 1 << 16;
/// transformers' default special tokens for `CLIPTokenizer`.
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
/// The pre-tokenizer split pattern transformers 5 builds for CLIP (kept matches, dropped gaps).
const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// GPT-2's byte-level split pattern without its final `\s+(?!\S)` lookahead, which the `regex`
/// crate lacks; [`ClipTokenizer::byte_level_split`] restores that rule by hand.
const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
/// Words whose BPE result is remembered; the cache stops growing past this many entries.
const CACHE_LIMIT: usize = 100_000;

/// The result of [`ClipTokenizer::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Exactly `max_length` ids: start token, the prompt's tokens, end token, then pad ids.
    pub ids: Vec<u32>,
    /// The prompt had more tokens than fit in `max_length` and was cut.
    pub truncated: bool,
}

/// One normalization step of the `normalizer` in `tokenizer.json`.
#[derive(Clone)]
enum NormStep {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    Lowercase,
    Replace { pattern: Regex, content: String },
    Strip { left: bool, right: bool },
}

/// One step of the `pre_tokenizer` in `tokenizer.json` before the final byte-level step.
#[derive(Clone)]
struct SplitStep {
    pattern: Regex,
    /// `true`: the regex matches are the pieces (`invert: true`); `false`: the gaps are.
    keep_matches: bool,
    /// `Isolated` behaviour: keep the other side too, as separate pieces.
    keep_both: bool,
}

/// A token matched as a whole in the text before BPE.
#[derive(Clone, Debug)]
struct AddedToken {
    /// The string searched for: the raw content, or its normalized form when `normalized`.
    pattern: String,
    id: u32,
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

/// The BPE model's options (`model` in `tokenizer.json`).
#[derive(Clone, Debug)]
struct BpeOptions {
    unk_token: Option<String>,
    end_of_word_suffix: String,
    continuing_subword_prefix: String,
    fuse_unk: bool,
    ignore_merges: bool,
}

impl Default for BpeOptions {
    fn default() -> Self {
        BpeOptions {
            unk_token: Some(DEFAULT_EOS.to_string()),
            end_of_word_suffix: "</w>".to_string(),
            continuing_subword_prefix: String::new(),
            fuse_unk: false,
            ignore_merges: false,
        }
    }
}

/// Everything read from one layout, before the special tokens are resolved.
struct Parts {
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    merges_source: String,
    options: BpeOptions,
    normalizer: Vec<NormStep>,
    splits: Vec<SplitStep>,
    byte_level_regex: bool,
    /// `(content, id, normalized)` from `tokenizer.json` `added_tokens` or `added_tokens_decoder`.
    added: Vec<(String, u32, bool)>,
    /// `(bos id, eos id)` from the post-processor, when there is one.
    post: Option<(u32, u32)>,
}

/// A CLIP BPE tokenizer loaded from a checkpoint's tokenizer folder.
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// `(left id, right id)` → `(rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Initial symbol ids per byte, indexed `[first?0:1 + last?2:0][byte]`.
    byte_ids: [[Option<u32>; 256]; 4],
    byte_chars: [char; 256],
    options: BpeOptions,
    unk_id: Option<u32>,
    normalizer: Vec<NormStep>,
    splits: Vec<SplitStep>,
    byte_level_regex: bool,
    byte_level_pattern: Regex,
    /// Added tokens matched in the raw text (`normalized: false`).
    raw_added: Vec<AddedToken>,
    /// Added tokens matched in the normalized text (`normalized: true`).
    normalized_added: Vec<AddedToken>,
    /// Every added token's content → id.
    added_ids: HashMap<String, u32>,
    next_id: u32,
    /// Added tokens listed by the files (`content`, id, `normalized`), before the special tokens.
    base_added: Vec<(String, u32, bool)>,
    /// First id after the vocabulary and `base_added`.
    base_next_id: u32,
    /// bos, eos, unk and pad as the files (or [`Self::with_pad_token`]) name them.
    specials: [SpecialSpec; 4],
    /// `(bos id, eos id)` from the post-processor, when there is one.
    post: Option<(u32, u32)>,
    /// `tokenizer_config.json` path, for error messages.
    config_name: String,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab.len())
            .field("merges", &self.merges.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

impl Clone for ClipTokenizer {
    /// Clones everything but the word cache, which starts empty.
    fn clone(&self) -> Self {
        ClipTokenizer {
            vocab: self.vocab.clone(),
            merges: self.merges.clone(),
            byte_ids: self.byte_ids,
            byte_chars: self.byte_chars,
            options: self.options.clone(),
            unk_id: self.unk_id,
            normalizer: self.normalizer.clone(),
            splits: self.splits.clone(),
            byte_level_regex: self.byte_level_regex,
            byte_level_pattern: self.byte_level_pattern.clone(),
            raw_added: self.raw_added.clone(),
            normalized_added: self.normalized_added.clone(),
            added_ids: self.added_ids.clone(),
            next_id: self.next_id,
            base_added: self.base_added.clone(),
            base_next_id: self.base_next_id,
            specials: self.specials.clone(),
            post: self.post,
            config_name: self.config_name.clone(),
            bos_id: self.bos_id,
            eos_id: self.eos_id,
            pad_id: self.pad_id,
            max_length: self.max_length,
            cache: Mutex::new(HashMap::new()),
        }
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
        let tokenizer_json = dir.join("tokenizer.json");
        let vocab_json = dir.join("vocab.json");
        let merges_txt = dir.join("merges.txt");
        let parts = if tokenizer_json.is_file() {
            parts_from_tokenizer_json(&tokenizer_json)?
        } else if vocab_json.is_file() && merges_txt.is_file() {
            parts_from_legacy(&vocab_json, &merges_txt, config.as_ref(), special_map.as_ref())?
        } else {
            return Err(Error::NotFound(format!(
                "tokenizer folder {} has neither tokenizer.json nor vocab.json + merges.txt",
                dir.display()
            )));
        };
        let config_name = dir.join("tokenizer_config.json").display().to_string();
        Self::build(parts, config.as_ref(), special_map.as_ref(), &config_name)
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
        self.cache_clear();
        Ok(self)
    }

    /// Ids for `text` padded (with the pad id) or truncated to exactly [`Self::max_length`]:
    /// start token, at most `max_length - 2` prompt tokens, end token, pad ids.
    pub fn encode(&self, text: &str) -> Encoding {
        let mut tokens = self.token_ids(text);
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
        Encoding { ids, truncated }
    }

    /// Start token + all of the prompt's tokens + end token, without truncation or padding.
    pub fn encode_unpadded(&self, text: &str) -> Vec<u32> {
        let tokens = self.token_ids(text);
        let mut ids = Vec::with_capacity(tokens.len() + 2);
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens);
        ids.push(self.eos_id);
        ids
    }

    /// The prompt's token ids alone: no start or end token, no truncation, no padding.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for segment in split_on_added(text, &self.raw_added) {
            match segment {
                Segment::Token(id) => out.push(id),
                Segment::Text(raw) => {
                    let normalized = self.normalize(raw);
                    for inner in split_on_added(&normalized, &self.normalized_added) {
                        match inner {
                            Segment::Token(id) => out.push(id),
                            Segment::Text(piece) => self.pre_tokenize_and_bpe(piece, &mut out),
                        }
                    }
                }
            }
        }
        out
    }

    /// The id of `token` (an added token or a vocabulary entry such as `cat</w>`), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added_ids
            .get(token)
            .or_else(|| self.vocab.get(token))
            .copied()
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
        self.vocab.len()
    }

    /// The largest id [`Self::encode`] can produce (vocabulary, added and special tokens): the text
    /// encoder's embedding table must be larger than this.
    pub fn max_id(&self) -> u32 {
        self.vocab
            .values()
            .chain(self.added_ids.values())
            .chain([&self.bos_id, &self.eos_id, &self.pad_id])
            .copied()
            .max()
            .unwrap_or(0)
    }

    fn build(
        parts: Parts,
        config: Option<&Value>,
        special_map: Option<&Value>,
        config_name: &str,
    ) -> Result<Self> {
        let Parts {
            vocab,
            merges: merge_list,
            merges_source,
            options,
            normalizer,
            splits,
            byte_level_regex,
            added,
            post,
        } = parts;

        let prefix_len = options.continuing_subword_prefix.len();
        let mut merges = HashMap::with_capacity(merge_list.len());
        for (rank, (left, right)) in merge_list.iter().enumerate() {
            let lookup = |token: &str| {
                vocab.get(token).copied().ok_or_else(|| {
                    Error::InvalidModel(format!(
                        "{merges_source}: merge {} (\"{left} {right}\") uses {token:?}, which is \
                         not in the vocabulary",
                        rank + 1
                    ))
                })
            };
            let left_id = lookup(left)?;
            let right_id = lookup(right)?;
            let merged = format!("{left}{}", right.get(prefix_len..).unwrap_or(right));
            let merged_id = lookup(&merged)?;
            merges.insert((left_id, right_id), (rank as u32, merged_id));
        }

        let byte_chars = bytes_to_unicode();
        let mut byte_ids = [[None; 256]; 4];
        for (kind, table) in byte_ids.iter_mut().enumerate() {
            let not_first = kind & 1 == 1;
            let last = kind & 2 == 2;
            for (byte, slot) in table.iter_mut().enumerate() {
                let mut key = String::new();
                if not_first {
                    key.push_str(&options.continuing_subword_prefix);
                }
                key.push(byte_chars[byte]);
                if last {
                    key.push_str(&options.end_of_word_suffix);
                }
                *slot = vocab.get(&key).copied();
            }
        }
        let unk_id = options.unk_token.as_ref().and_then(|unk| vocab.get(unk).copied());

        let max_id = vocab
            .values()
            .copied()
            .chain(added.iter().map(|(_, id, _)| *id))
            .max();
        // Special tokens: tokenizer_config.json first, then special_tokens_map.json, then the
        // CLIPTokenizer defaults.
        let sources = [config, special_map];
        let mut specials = Vec::with_capacity(4);
        for (key, default) in [
            ("bos_token", DEFAULT_BOS),
            ("eos_token", DEFAULT_EOS),
            ("unk_token", DEFAULT_EOS),
            ("pad_token", DEFAULT_EOS),
        ] {
            specials.push(special_spec(&sources, key, config_name)?.unwrap_or_else(|| default_spec(default)));
        }
        let specials: [SpecialSpec; 4] = specials
            .try_into()
            .map_err(|_| Error::Internal("four special tokens expected".to_string()))?;
        let base_next_id = max_id.map_or(0, |id| id.saturating_add(1));
        let mut tokenizer = ClipTokenizer {
            vocab,
            merges,
            byte_ids,
            byte_chars,
            options,
            unk_id,
            normalizer,
            splits,
            byte_level_regex,
            byte_level_pattern: compile(BYTE_LEVEL_PATTERN, "byte-level pre-tokenizer")?,
            raw_added: Vec::new(),
            normalized_added: Vec::new(),
            added_ids: HashMap::new(),
            next_id: base_next_id,
            base_added: added,
            base_next_id,
            specials,
            post,
            config_name: config_name.to_string(),
            bos_id: 0,
            eos_id: 0,
            pad_id: 0,
            max_length: max_length_from(config, config_name)?,
            cache: Mutex::new(HashMap::new()),
        };
        tokenizer.resolve_added_tokens()?;
        Ok(tokenizer)
    }

    /// Builds the added-token tables from `base_added` and the special tokens, then the bos, eos
    /// and pad ids. Like transformers, each special token that is not an added token yet is added
    /// as one; if any special token with that content was given as a plain string it gets
    /// `normalized: false`, otherwise the `normalized` flag of its AddedToken dict.
    fn resolve_added_tokens(&mut self) -> Result<()> {
        self.raw_added.clear();
        self.normalized_added.clear();
        self.added_ids.clear();
        self.next_id = self.base_next_id;
        for (content, id, normalized) in self.base_added.clone() {
            self.insert_added(&content, id, normalized);
        }
        let specials = self.specials.clone();
        for spec in &specials {
            let same = || specials.iter().filter(|s| s.content == spec.content);
            let normalized = if same().any(|s| s.plain) {
                false
            } else {
                same().find_map(|s| s.normalized).unwrap_or(false)
            };
            self.add_special_token(&spec.content, normalized);
        }
        let id_of = |content: &str| {
            self.token_to_id(content).ok_or_else(|| {
                Error::InvalidModel(format!(
                    "{}: special token {content:?} has no id",
                    self.config_name
                ))
            })
        };
        let (bos_id, eos_id) = match self.post {
            Some(ids) => ids,
            None => (id_of(&specials[0].content)?, id_of(&specials[1].content)?),
        };
        let pad_id = id_of(&specials[3].content)?;
        self.bos_id = bos_id;
        self.eos_id = eos_id;
        self.pad_id = pad_id;
        Ok(())
    }

    /// Registers an added token; matching uses the normalized content when `normalized`.
    fn insert_added(&mut self, content: &str, id: u32, normalized: bool) {
        self.added_ids.insert(content.to_string(), id);
        self.next_id = self.next_id.max(id.saturating_add(1));
        // An empty token would match everywhere without consuming text: it is never matched.
        if content.is_empty() {
            return;
        }
        if normalized {
            let pattern = self.normalize(content);
            if !pattern.is_empty() {
                self.normalized_added.push(AddedToken { pattern, id });
            }
        } else {
            self.raw_added.push(AddedToken {
                pattern: content.to_string(),
                id,
            });
        }
    }

    /// Adds `content` as a special token unless it is an added token already; returns its id
    /// (its vocabulary id when it has one, else the next free id).
    fn add_special_token(&mut self, content: &str, normalized: bool) -> u32 {
        if let Some(&id) = self.added_ids.get(content) {
            return id;
        }
        let id = match self.vocab.get(content) {
            Some(&id) => id,
            None => self.next_id,
        };
        self.insert_added(content, id, normalized);
        id
    }

    fn cache_clear(&self) {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    /// Runs the normalizer steps.
    fn normalize(&self, text: &str) -> String {
        let mut s = text.to_string();
        for step in &self.normalizer {
            s = match step {
                NormStep::Nfc => s.nfc().collect(),
                NormStep::Nfd => s.nfd().collect(),
                NormStep::Nfkc => s.nfkc().collect(),
                NormStep::Nfkd => s.nfkd().collect(),
                // Per character, like tokenizers (no final-sigma context rule).
                NormStep::Lowercase => s.chars().flat_map(char::to_lowercase).collect(),
                NormStep::Replace { pattern, content } => {
                    pattern.replace_all(&s, NoExpand(content.as_str())).into_owned()
                }
                NormStep::Strip { left, right } => {
                    let mut t = s.as_str();
                    if *left {
                        t = t.trim_start();
                    }
                    if *right {
                        t = t.trim_end();
                    }
                    t.to_string()
                }
            };
        }
        s
    }

    /// Splits normalized text into words and appends their BPE ids.
    fn pre_tokenize_and_bpe(&self, text: &str, out: &mut Vec<u32>) {
        let mut pieces = vec![text];
        for step in &self.splits {
            let mut next = Vec::with_capacity(pieces.len());
            for piece in pieces {
                split_piece(piece, step, &mut next);
            }
            pieces = next;
        }
        let mut words = Vec::new();
        for piece in pieces {
            if self.byte_level_regex {
                self.byte_level_split(piece, &mut words);
            } else if !piece.is_empty() {
                words.push(piece);
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for word in words {
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                continue;
            }
            let ids = self.bpe(word);
            out.extend_from_slice(&ids);
            if cache.len() < CACHE_LIMIT {
                cache.insert(word.to_string(), ids);
            }
        }
    }

    /// GPT-2's byte-level split: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
    /// \s+(?!\S)|\s+`. A whitespace run followed by more text leaves its last character to the
    /// next piece, which is what the `\s+(?!\S)` lookahead does.
    fn byte_level_split<'a>(&self, piece: &'a str, out: &mut Vec<&'a str>) {
        let mut start = 0;
        while start < piece.len() {
            let Some(found) = self.byte_level_pattern.find_at(piece, start) else {
                out.push(&piece[start..]);
                break;
            };
            if found.start() > start {
                out.push(&piece[start..found.start()]);
            }
            let text = found.as_str();
            let mut end = found.end();
            if end < piece.len() && text.chars().all(char::is_whitespace) {
                if let Some(last) = text.chars().last() {
                    if text.len() > last.len_utf8() {
                        end -= last.len_utf8();
                    }
                }
            }
            if end > found.start() {
                out.push(&piece[found.start()..end]);
            }
            start = end.max(found.start() + 1);
        }
    }

    /// BPE on one pre-tokenized word (before its byte-to-character mapping).
    fn bpe(&self, word: &str) -> Vec<u32> {
        let bytes = word.as_bytes();
        if bytes.is_empty() {
            return Vec::new();
        }
        if self.options.ignore_merges {
            let mut whole: String = bytes.iter().map(|&b| self.byte_chars[b as usize]).collect();
            whole.push_str(&self.options.end_of_word_suffix);
            if let Some(&id) = self.vocab.get(&whole) {
                return vec![id];
            }
        }
        let last = bytes.len() - 1;
        let mut ids = Vec::with_capacity(bytes.len());
        let mut pending_unk = false;
        for (i, &b) in bytes.iter().enumerate() {
            let kind = usize::from(i > 0) | (usize::from(i == last) << 1);
            match self.byte_ids[kind][b as usize] {
                Some(id) => {
                    pending_unk = false;
                    ids.push(id);
                }
                None => {
                    if let Some(unk) = self.unk_id {
                        if !(self.options.fuse_unk && pending_unk) {
                            ids.push(unk);
                        }
                        pending_unk = true;
                    }
                }
            }
        }
        merge_symbols(ids, &self.merges)
    }
}

/// One candidate merge in the priority queue: lowest rank first, then leftmost.
#[derive(PartialEq, Eq)]
struct Candidate {
    rank: u32,
    pos: usize,
    new_id: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then_with(|| other.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    alive: bool,
}

/// Applies the merges to a word's symbol ids the way tokenizers' `Word::merge_all` does.
fn merge_symbols(ids: Vec<u32>, merges: &HashMap<(u32, u32), (u32, u32)>) -> Vec<u32> {
    let n = ids.len();
    if n < 2 {
        return ids;
    }
    let mut symbols: Vec<Symbol> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| Symbol {
            id,
            prev: i.checked_sub(1),
            next: if i + 1 < n { Some(i + 1) } else { None },
            alive: true,
        })
        .collect();
    let mut queue = BinaryHeap::with_capacity(n);
    for (pos, pair) in ids.windows(2).enumerate() {
        if let Some(&(rank, new_id)) = merges.get(&(pair[0], pair[1])) {
            queue.push(Candidate { rank, pos, new_id });
        }
    }
    while let Some(top) = queue.pop() {
        let current = symbols[top.pos];
        if !current.alive {
            continue;
        }
        let Some(next_pos) = current.next else {
            continue;
        };
        let right = symbols[next_pos];
        match merges.get(&(current.id, right.id)) {
            Some(&(_, new_id)) if new_id == top.new_id => {}
            _ => continue,
        }
        symbols[top.pos].id = top.new_id;
        symbols[top.pos].next = right.next;
        symbols[next_pos].alive = false;
        if let Some(after) = right.next {
            symbols[after].prev = Some(top.pos);
        }
        if let Some(prev) = current.prev {
            if let Some(&(rank, new_id)) = merges.get(&(symbols[prev].id, top.new_id)) {
                queue.push(Candidate {
                    rank,
                    pos: prev,
                    new_id,
                });
            }
        }
        if let Some(after) = right.next {
            if let Some(&(rank, new_id)) = merges.get(&(top.new_id, symbols[after].id)) {
                queue.push(Candidate {
                    rank,
                    pos: top.pos,
                    new_id,
                });
            }
        }
    }
    symbols.iter().filter(|s| s.alive).map(|s| s.id).collect()
}

/// A piece of text around the added tokens found in it.
#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Text(&'a str),
    Token(u32),
}

/// Cuts `text` at every occurrence of an added token (leftmost, then longest match).
fn split_on_added<'a>(text: &'a str, tokens: &[AddedToken]) -> Vec<Segment<'a>> {
    let mut out = Vec::new();
    if tokens.is_empty() {
        if !text.is_empty() {
            out.push(Segment::Text(text));
        }
        return out;
    }
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let best = tokens
            .iter()
            .filter(|t| rest.starts_with(t.pattern.as_str()))
            .max_by_key(|t| t.pattern.len());
        match best {
            Some(token) => {
                if pos > start {
                    out.push(Segment::Text(&text[start..pos]));
                }
                out.push(Segment::Token(token.id));
                pos += token.pattern.len();
                start = pos;
            }
            None => pos += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        out.push(Segment::Text(&text[start..]));
    }
    out
}

/// One pre-tokenizer `Split` step on one piece.
fn split_piece<'a>(piece: &'a str, step: &SplitStep, out: &mut Vec<&'a str>) {
    let mut last = 0;
    for found in step.pattern.find_iter(piece) {
        if found.start() == found.end() {
            continue;
        }
        if found.start() > last && (!step.keep_matches || step.keep_both) {
            out.push(&piece[last..found.start()]);
        }
        if step.keep_matches || step.keep_both {
            out.push(found.as_str());
        }
        last = found.end();
    }
    if last < piece.len() && (!step.keep_matches || step.keep_both) {
        out.push(&piece[last..]);
    }
}

/// GPT-2's reversible byte → printable character table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let b = byte as u32;
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let code = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        *slot = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    table
}

fn compile(pattern: &str, what: &str) -> Result<Regex> {
    Regex::new(pattern)
        .map_err(|e| Error::Unsupported(format!("{what}: regex {pattern:?} is not supported: {e}")))
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

/// The `merges` of a `tokenizer.json` BPE model: `"a b"` strings or `["a", "b"]` pairs.
#[derive(Deserialize)]
#[serde(untagged)]
enum MergeEntry {
    Joined(String),
    Pair(Vec<String>),
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    vocab: HashMap<String, u32>,
    #[serde(default)]
    merges: Vec<MergeEntry>,
    unk_token: Option<String>,
    end_of_word_suffix: Option<String>,
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    fuse_unk: bool,
    #[serde(default)]
    byte_fallback: bool,
    #[serde(default)]
    ignore_merges: bool,
    dropout: Option<f64>,
}

#[derive(Deserialize)]
struct AddedTokenJson {
    id: u32,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    normalized: bool,
}

#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedTokenJson>,
    normalizer: Option<Value>,
    pre_tokenizer: Option<Value>,
    post_processor: Option<Value>,
    model: ModelJson,
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

fn parts_from_tokenizer_json(path: &Path) -> Result<Parts> {
    let name = path.display().to_string();
    let text = read_text(path)?;
    let json: TokenizerJson = serde_json::from_str(&text)
        .map_err(|e| Error::InvalidModel(format!("{name}: invalid tokenizer.json: {e}")))?;
    let model = json.model;
    if let Some(kind) = &model.kind {
        if kind != "BPE" {
            return Err(Error::Unsupported(format!(
                "{name}: model type {kind:?} is not supported, a CLIP tokenizer is \"BPE\""
            )));
        }
    }
    if model.byte_fallback {
        return Err(Error::Unsupported(format!(
            "{name}: BPE byte_fallback is not supported"
        )));
    }
    if model.dropout.is_some_and(|p| p > 0.0) {
        return Err(Error::Unsupported(format!(
            "{name}: BPE dropout is not supported"
        )));
    }
    if model.vocab.is_empty() {
        return Err(Error::InvalidModel(format!("{name}: model.vocab is empty")));
    }
    let mut merges = Vec::with_capacity(model.merges.len());
    for (i, entry) in model.merges.into_iter().enumerate() {
        merges.push(match entry {
            MergeEntry::Joined(line) => parse_merge_line(&line, i + 1, &name)?,
            MergeEntry::Pair(pair) => match <[String; 2]>::try_from(pair) {
                Ok([a, b]) => (a, b),
                Err(_) => {
                    return Err(Error::InvalidModel(format!(
                        "{name}: merge {} is not a pair of tokens",
                        i + 1
                    )))
                }
            },
        });
    }
    let options = BpeOptions {
        unk_token: model.unk_token,
        end_of_word_suffix: model.end_of_word_suffix.unwrap_or_default(),
        continuing_subword_prefix: model.continuing_subword_prefix.unwrap_or_default(),
        fuse_unk: model.fuse_unk,
        ignore_merges: model.ignore_merges,
    };
    let mut added = Vec::with_capacity(json.added_tokens.len());
    for token in json.added_tokens {
        if token.lstrip || token.rstrip || token.single_word {
            return Err(Error::Unsupported(format!(
                "{name}: added token {:?} uses lstrip/rstrip/single_word, which is not supported",
                token.content
            )));
        }
        added.push((token.content, token.id, token.normalized));
    }
    let normalizer = match &json.normalizer {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => parse_normalizer(value, &name)?,
    };
    let (splits, byte_level_regex) = match &json.pre_tokenizer {
        Some(value) if !value.is_null() => parse_pre_tokenizer(value, &name)?,
        _ => {
            return Err(Error::Unsupported(format!(
                "{name}: no pre_tokenizer; a CLIP tokenizer needs a ByteLevel pre-tokenizer"
            )))
        }
    };
    let post = match &json.post_processor {
        None | Some(Value::Null) => None,
        Some(value) => Some(parse_post_processor(value, &name)?),
    };
    Ok(Parts {
        vocab: model.vocab,
        merges,
        merges_source: name,
        options,
        normalizer,
        splits,
        byte_level_regex,
        added,
        post,
    })
}

fn parts_from_legacy(
    vocab_path: &Path,
    merges_path: &Path,
    config: Option<&Value>,
    special_map: Option<&Value>,
) -> Result<Parts> {
    let vocab_name = vocab_path.display().to_string();
    let vocab: HashMap<String, u32> = serde_json::from_str(&read_text(vocab_path)?)
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
    let config_name = vocab_path.with_file_name("tokenizer_config.json");
    let config_name = config_name.display().to_string();
    let unk = special_spec(&[config, special_map], "unk_token", &config_name)?
        .map_or_else(|| DEFAULT_EOS.to_string(), |s| s.content);
    // tokenizer_config.json of transformers 4 may list `added_tokens_decoder` with their flags.
    let mut added = Vec::new();
    if let Some(Value::Object(map)) = config.and_then(|c| c.get("added_tokens_decoder")) {
        for (id, token) in map {
            let (Ok(id), Some(content)) = (id.parse::<u32>(), token.get("content").and_then(Value::as_str))
            else {
                return Err(Error::InvalidModel(format!(
                    "{config_name}: bad added_tokens_decoder entry {id:?}"
                )));
            };
            let normalized = token.get("normalized").and_then(Value::as_bool).unwrap_or(false);
            added.push((content.to_string(), id, normalized));
        }
        added.sort_by_key(|(_, id, _)| *id);
    }
    Ok(Parts {
        vocab,
        merges,
        merges_source: merges_name,
        options: BpeOptions {
            unk_token: Some(unk),
            ..BpeOptions::default()
        },
        normalizer: vec![
            NormStep::Nfc,
            NormStep::Replace {
                pattern: compile(r"\s+", "CLIP normalizer")?,
                content: " ".to_string(),
            },
            NormStep::Lowercase,
        ],
        splits: vec![SplitStep {
            pattern: compile(CLIP_SPLIT_PATTERN, "CLIP pre-tokenizer")?,
            keep_matches: true,
            keep_both: false,
        }],
        byte_level_regex: true,
        added,
        post: None,
    })
}

/// The regex of a `Replace`/`Split` pattern: `{"Regex": ...}` or `{"String": ...}` (literal).
fn parse_pattern(value: Option<&Value>, name: &str, what: &str) -> Result<Regex> {
    let pattern = value.and_then(|p| {
        p.get("Regex")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| p.get("String").and_then(Value::as_str).map(regex::escape))
    });
    let pattern = pattern
        .ok_or_else(|| Error::InvalidModel(format!("{name}: {what} has no Regex or String pattern")))?;
    compile(&pattern, &format!("{name}: {what}"))
}

fn type_of<'a>(value: &'a Value, name: &str, what: &str) -> Result<&'a str> {
    value
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::InvalidModel(format!("{name}: {what} has no \"type\"")))
}

fn parse_normalizer(value: &Value, name: &str) -> Result<Vec<NormStep>> {
    let kind = type_of(value, name, "normalizer")?;
    let flag = |key: &str| value.get(key).and_then(Value::as_bool).unwrap_or(false);
    let step = match kind {
        "Sequence" => {
            let list = value
                .get("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::InvalidModel(format!("{name}: Sequence normalizer has no list")))?;
            let mut steps = Vec::new();
            for item in list {
                steps.extend(parse_normalizer(item, name)?);
            }
            return Ok(steps);
        }
        "NFC" => NormStep::Nfc,
        "NFD" => NormStep::Nfd,
        "NFKC" => NormStep::Nfkc,
        "NFKD" => NormStep::Nfkd,
        "Lowercase" => NormStep::Lowercase,
        "Strip" => NormStep::Strip {
            left: flag("strip_left"),
            right: flag("strip_right"),
        },
        "Replace" => NormStep::Replace {
            pattern: parse_pattern(value.get("pattern"), name, "Replace normalizer")?,
            content: value
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        },
        other => {
            return Err(Error::Unsupported(format!(
                "{name}: normalizer {other:?} is not supported"
            )))
        }
    };
    Ok(vec![step])
}

/// Flattens the pre-tokenizer into `Split` steps followed by one final `ByteLevel` step.
fn parse_pre_tokenizer(value: &Value, name: &str) -> Result<(Vec<SplitStep>, bool)> {
    let list: Vec<&Value> = if type_of(value, name, "pre_tokenizer")? == "Sequence" {
        value
            .get("pretokenizers")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::InvalidModel(format!("{name}: Sequence pre_tokenizer has no list")))?
            .iter()
            .collect()
    } else {
        vec![value]
    };
    let mut splits = Vec::new();
    let mut byte_level = None;
    for item in list {
        let kind = type_of(item, name, "pre_tokenizer")?;
        if byte_level.is_some() {
            return Err(Error::Unsupported(format!(
                "{name}: pre-tokenizer {kind:?} after ByteLevel is not supported"
            )));
        }
        match kind {
            "Split" => {
                let behavior = item.get("behavior").and_then(Value::as_str).unwrap_or("Removed");
                let keep_both = match behavior {
                    "Removed" => false,
                    "Isolated" => true,
                    other => {
                        return Err(Error::Unsupported(format!(
                            "{name}: Split behavior {other:?} is not supported"
                        )))
                    }
                };
                splits.push(SplitStep {
                    pattern: parse_pattern(item.get("pattern"), name, "Split pre-tokenizer")?,
                    keep_matches: item.get("invert").and_then(Value::as_bool).unwrap_or(false),
                    keep_both,
                });
            }
            "ByteLevel" => {
                if item.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
                    return Err(Error::Unsupported(format!(
                        "{name}: ByteLevel add_prefix_space is not supported"
                    )));
                }
                byte_level = Some(item.get("use_regex").and_then(Value::as_bool).unwrap_or(true));
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "{name}: pre-tokenizer {other:?} is not supported"
                )))
            }
        }
    }
    let byte_level = byte_level.ok_or_else(|| {
        Error::Unsupported(format!(
            "{name}: the pre-tokenizer has no ByteLevel step, which a CLIP tokenizer needs"
        ))
    })?;
    Ok((splits, byte_level))
}

/// `(bos id, eos id)` of a `RobertaProcessing`/`BertProcessing` post-processor, or of a
/// `TemplateProcessing` whose single template is `special $A special`.
fn parse_post_processor(value: &Value, name: &str) -> Result<(u32, u32)> {
    let bad = || {
        Error::Unsupported(format!(
            "{name}: post_processor is not \"<start> prompt <end>\", which a CLIP tokenizer needs"
        ))
    };
    let pair_id = |key: &str| {
        value
            .get(key)
            .and_then(|p| p.get(1))
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
    };
    match type_of(value, name, "post_processor")? {
        "RobertaProcessing" | "BertProcessing" => {
            Ok((pair_id("cls").ok_or_else(bad)?, pair_id("sep").ok_or_else(bad)?))
        }
        "TemplateProcessing" => {
            let single = value.get("single").and_then(Value::as_array).ok_or_else(bad)?;
            let special = |item: &Value| {
                let token = item.get("SpecialToken")?.get("id")?.as_str()?;
                let ids = value.get("special_tokens")?.get(token)?.get("ids")?;
                u32::try_from(ids.get(0)?.as_u64()?).ok()
            };
            match single.as_slice() {
                [first, middle, last] if middle.get("Sequence").is_some() => {
                    Ok((special(first).ok_or_else(bad)?, special(last).ok_or_else(bad)?))
                }
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> ClipTokenizer {
        let mut vocab = HashMap::new();
        let chars = bytes_to_unicode();
        for (i, c) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), i as u32);
            vocab.insert(format!("{c}</w>"), 256 + i as u32);
        }
        let merges = vec![
            ("c".to_string(), "a".to_string()),
            ("ca".to_string(), "t</w>".to_string()),
        ];
        vocab.insert("ca".to_string(), 512);
        vocab.insert("cat</w>".to_string(), 513);
        vocab.insert(DEFAULT_BOS.to_string(), 514);
        vocab.insert(DEFAULT_EOS.to_string(), 515);
        let config = serde_json::json!({
            "model_max_length": 8,
            "pad_token": "!",
            "bos_token": {"content": DEFAULT_BOS, "normalized": true},
        });
        let parts = Parts {
            vocab,
            merges,
            merges_source: "toy".to_string(),
            options: BpeOptions::default(),
            normalizer: vec![
                NormStep::Nfc,
                NormStep::Replace {
                    pattern: Regex::new(r"\s+").unwrap(),
                    content: " ".to_string(),
                },
                NormStep::Lowercase,
            ],
            splits: vec![SplitStep {
                pattern: Regex::new(CLIP_SPLIT_PATTERN).unwrap(),
                keep_matches: true,
                keep_both: false,
            }],
            byte_level_regex: true,
            added: Vec::new(),
            post: None,
        };
        ClipTokenizer::build(parts, Some(&config), None, "toy").unwrap()
    }

    #[test]
    fn bytes_to_unicode_is_a_bijection_onto_printable_chars() {
        let table = bytes_to_unicode();
        let mut seen: Vec<char> = table.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[0], 'Ā');
        assert!(table.iter().all(|c| !c.is_whitespace() && !c.is_control()));
    }

    #[test]
    fn merges_special_tokens_padding_and_truncation() {
        let tok = toy();
        assert_eq!(tok.max_length(), 8);
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
    }

    #[test]
    fn byte_level_split_keeps_the_last_space_for_the_next_word() {
        let tok = toy();
        let mut out = Vec::new();
        tok.byte_level_split("a  b\t\tc  ", &mut out);
        assert_eq!(out, vec!["a", " ", " b", "\t", "\t", "c", "  "]);
    }

    #[test]
    fn split_on_added_prefers_the_longest_match() {
        let tokens = vec![
            AddedToken {
                pattern: "<|a".to_string(),
                id: 1,
            },
            AddedToken {
                pattern: "<|ab|>".to_string(),
                id: 2,
            },
        ];
        assert_eq!(
            split_on_added("x<|ab|>y<|a", &tokens),
            vec![
                Segment::Text("x"),
                Segment::Token(2),
                Segment::Text("y"),
                Segment::Token(1)
            ]
        );
    }
}
