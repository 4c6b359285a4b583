//! CLIP text encoders (`CLIPTextModel`, `CLIPTextModelWithProjection`) built from the checkpoint's
//! `config.json` (transformers layout and key names).

use crate::layers::nn::Embedding;
use crate::layers::nn::{linear, linear_no_bias, Linear};
use crate::weights::Weights;
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::LayerNorm;
use serde::Deserialize;

fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_positions() -> usize {
    77
}
fn default_eos() -> i64 {
    2
}

/// `text_encoder/config.json` (the keys a CLIP text encoder needs).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub projection_dim: Option<usize>,
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            _ => None,
        }
    }

    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
        }
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Activation,
}

impl EncoderLayer {
    fn new(vb: Weights, c: &ClipTextConfig, act: Activation) -> Result<Self> {
        let h = c.hidden_size;
        let attn = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm1").vb())?,
            q: linear(h, h, attn.pp("q_proj"))?,
            k: linear(h, h, attn.pp("k_proj"))?,
            v: linear(h, h, attn.pp("v_proj"))?,
            out: linear(h, h, attn.pp("out_proj"))?,
            layer_norm2: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm2").vb())?,
            fc1: linear(h, c.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(c.intermediate_size, h, vb.pp("mlp.fc2"))?,
            heads: c.num_attention_heads,
            act,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (b, l, h) = xs.dims3()?;
        let head_dim = h / self.heads;
        let normed = self.layer_norm1.forward(xs)?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q.forward(&normed)? * (head_dim as f64).powf(-0.5))?)?;
        let k = split(self.k.forward(&normed)?)?;
        let v = split(self.v.forward(&normed)?)?;
        let scores = q.matmul(&k.t()?.contiguous()?)?.broadcast_add(causal_mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))?;
        // Linear layers add the residual as they write (see `nn::Linear`).
        let xs = self.out.forward_add(&attn, Some(xs))?;
        let hidden = self
            .act
            .apply(&self.fc1.forward(&self.layer_norm2.forward(&xs)?)?)?;
        self.fc2.forward_add(&hidden, Some(&xs))
    }
}

/// What one encoder pass returns.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// `hidden_states` as transformers returns them: the embeddings, then each layer's output
    /// (`num_hidden_layers + 1` entries, none with the final layer norm).
    pub hidden_states: Vec<Tensor>,
    /// `last_hidden_state`: the last layer's output after the final layer norm.
    pub last_hidden_state: Tensor,
    /// The pooled output (the eos position of `last_hidden_state`), projected by `text_projection` when
    /// the model has one (`text_embeds` of `CLIPTextModelWithProjection`).
    pub pooled: Tensor,
}

/// A CLIP text transformer; with `with_projection`, also `text_projection` (SDXL's second encoder).
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
}

impl ClipTextModel {
    /// Builds the model from `config`; `with_projection` loads `text_projection.weight` too.
    pub fn new(vb: Weights, config: ClipTextConfig, with_projection: bool) -> Result<Self> {
        // Values that would divide by zero in `forward` or allocate without bound.
        let (h, heads) = (config.hidden_size, config.num_attention_heads);
        if heads == 0 || h % heads != 0 {
            candle_core::bail!("num_attention_heads {heads} must be positive and divide hidden_size {h}");
        }
        if config.max_position_embeddings == 0 || config.max_position_embeddings > 1 << 16 {
            candle_core::bail!(
                "max_position_embeddings {} must be 1..=65536",
                config.max_position_embeddings
            );
        }
        let act = Activation::parse(&config.hidden_act).ok_or_else(|| {
            candle_core::Error::Msg(format!("unsupported CLIP hidden_act {:?}", config.hidden_act))
        })?;
        // Hub checkpoints (transformers 4) prefix every key with `text_model.`; transformers 5 saves a
        // plain CLIPTextModel without it. Accept both.
        let tm = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        let h = config.hidden_size;
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(tm.pp(format!("encoder.layers.{i}")), &config, act))
            .collect::<Result<Vec<_>>>()?;
        let text_projection = if with_projection {
            let dim = config.projection_dim.unwrap_or(h);
            Some(linear_no_bias(h, dim, vb.pp("text_projection"))?)
        } else {
            None
        };
        Ok(Self {
            token_embedding: crate::layers::nn::embedding(
                config.vocab_size,
                h,
                tm.pp("embeddings.token_embedding"),
            )?,
            position_embedding: crate::layers::nn::embedding(
                config.max_position_embeddings,
                h,
                tm.pp("embeddings.position_embedding"),
            )?,
            layers,
            final_layer_norm: candle_nn::layer_norm(
                h,
                config.layer_norm_eps,
                tm.pp("final_layer_norm").vb(),
            )?,
            text_projection,
            config,
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Runs the encoder on `(batch, len)` token ids (u32).
    pub fn forward(&self, ids: &Tensor) -> Result<ClipOutput> {
        let (b, l) = ids.dims2()?;
        let device = ids.device();
        if l > self.config.max_position_embeddings {
            candle_core::bail!(
                "{l} tokens exceed the text encoder's max_position_embeddings {}",
                self.config.max_position_embeddings
            );
        }
        let positions = Tensor::arange(0u32, l as u32, device)?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(l, xs.dtype(), device)?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(xs.clone());
        for layer in &self.layers {
            crate::layers::cancel::check()?;
            xs = layer.forward(&xs, &mask)?;
            hidden_states.push(xs.clone());
        }
        let last_hidden_state = self.final_layer_norm.forward(&xs)?;
        let eos = self.eos_positions(ids)?;
        let pooled = (0..b)
            .map(|i| last_hidden_state.i((i, eos[i]))?.unsqueeze(0))
            .collect::<Result<Vec<_>>>()?;
        let mut pooled = Tensor::cat(&pooled, 0)?;
        if let Some(proj) = &self.text_projection {
            pooled = proj.forward(&pooled)?;
        }
        Ok(ClipOutput {
            hidden_states,
            last_hidden_state,
            pooled,
        })
    }

    /// Applies the final layer norm (what diffusers does to a `clip_skip` hidden state).
    pub fn final_layer_norm(&self, xs: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(xs)
    }

    /// Where transformers pools: with the legacy `eos_token_id == 2` config, at the highest token id (the
    /// real eos id is the largest in CLIP's vocab); otherwise at the first `eos_token_id`.
    fn eos_positions(&self, ids: &Tensor) -> Result<Vec<usize>> {
        let rows = ids.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        Ok(rows
            .iter()
            .map(|row| {
                if self.config.eos_token_id == 2 {
                    // argmax returns the first maximum, like torch.
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&t| t == max).unwrap_or(0)
                } else {
                    row.iter()
                        .position(|&t| t == self.config.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect())
    }
}

fn causal_mask(l: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    // Plain loops: the nested iterator form made valgrind report a branch on uninitialised stack
    // memory (LLVM's speculative read of an empty iterator slot; harmless, but it hides real reports).
    let mut mask = vec![0f32; l * l];
    for (i, row) in mask.chunks_exact_mut(l.max(1)).enumerate() {
        for v in &mut row[i + 1..] {
            *v = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(mask, (l, l), device)?.to_dtype(dtype)
}
