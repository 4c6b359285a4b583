//! Prompt encoding as diffusers' `encode_prompt` does it for SD 1.x/2.x (and the pieces SDXL reuses).

use super::components::TextEncoder;
use crate::error::Result;
use candle_core::{Device, Tensor};

/// Token ids of `text` (padded/truncated to the tokenizer's max length) as a `(1, len)` tensor, and a
/// warning when the prompt was cut.
pub fn tokenize(
    enc: &TextEncoder,
    text: &str,
    device: &Device,
    warnings: &mut Vec<String>,
) -> Result<Tensor> {
    let e = enc.tokenizer.try_encode(text)?;
    if e.truncated {
        warnings.push(format!(
            "the prompt {:?} is longer than CLIP's {} tokens and was truncated, as diffusers does",
            abbreviate(text),
            enc.tokenizer.max_length()
        ));
    }
    Ok(Tensor::new(e.ids, device)?.unsqueeze(0)?)
}

fn abbreviate(text: &str) -> String {
    let mut s: String = text.chars().take(60).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// Which of SDXL's two encoders a prompt goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizedFor {
    First,
    Second,
}

/// SD 1.x/2.x: `last_hidden_state`, or with `clip_skip` the hidden state `clip_skip` layers earlier
/// passed through the final layer norm.
pub fn encode_sd(enc: &TextEncoder, ids: &Tensor, clip_skip: Option<usize>) -> Result<Tensor> {
    let out = enc.model.forward(ids)?;
    Ok(match clip_skip {
        None => out.last_hidden_state,
        Some(skip) => {
            let n = out.hidden_states.len();
            let idx = n.checked_sub(skip + 1).ok_or_else(|| {
                crate::Error::InvalidArgument(format!(
                    "clip_skip {skip} is too large for a text encoder with {} layers",
                    n - 1
                ))
            })?;
            enc.model.final_layer_norm(&out.hidden_states[idx])?
        }
    })
}

/// Repeats `(1, …)` embeddings for `n` images per prompt (diffusers' `repeat` + `view`).
pub fn repeat_batch(t: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(t.clone());
    }
    let copies: Vec<&Tensor> = std::iter::repeat_n(t, n).collect();
    Ok(Tensor::cat(&copies, 0)?)
}
