//! Tokenizers: prompt text to token ids, exactly as transformers' tokenizers give them.

pub mod clip_tokenizer;
pub mod t5_tokenizer;
