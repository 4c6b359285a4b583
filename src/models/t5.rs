//! transformers' `T5EncoderModel` (T5 v1.1 as FLUX and SD3 use it: gated GELU, RMS layer norms without
//! mean or bias, relative position buckets shared by every layer), built from its `config.json`.

use crate::layers::nn::{embedding, linear_no_bias, Embedding, Linear};
use crate::weights::Weights;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use serde::Deserialize;

/// The `config.json` fields of a `T5EncoderModel` this implementation reads.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `"relu"`, `"gated-gelu"` (T5 v1.1), `"gated-silu"`, …
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    /// transformers derives it from `feed_forward_proj` (and maps `gated-gelu` to `gelu_new`).
    #[serde(default)]
    pub dense_act_fn: Option<String>,
}

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Relu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `gelu`: exact (erf).
    Gelu,
    Silu,
}

impl T5Config {
    /// `(gated, activation)` as transformers' `T5Config.__init__` derives them, or why not.
    fn feed_forward(&self) -> std::result::Result<(bool, Act), String> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let gated = match parts.as_slice() {
            [_] => false,
            ["gated", _] => true,
            _ => {
                return Err(format!(
                    "feed_forward_proj {:?} is not a valid activation (e.g. \"relu\" or \"gated-gelu\")",
                    self.feed_forward_proj
                ))
            }
        };
        let name = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new".to_string()
        } else {
            self.dense_act_fn
                .clone()
                .unwrap_or_else(|| parts.last().copied().unwrap_or("relu").to_string())
        };
        let act = match name.as_str() {
            "relu" => Act::Relu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Act::GeluTanh,
            "gelu" => Act::Gelu,
            "silu" | "swish" => Act::Silu,
            other => return Err(format!("T5 activation {other:?} is not supported")),
        };
        Ok((gated, act))
    }

    /// Refuses configs the model cannot be built from.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
        ] {
            if v == 0 || v > 1 << 20 {
                return Err(format!("{name} {v} is out of range"));
            }
        }
        if self.num_layers == 0 || self.num_layers > 1024 {
            return Err(format!("num_layers {} is out of range", self.num_layers));
        }
        if self.relative_attention_num_buckets < 4 {
            return Err("relative_attention_num_buckets must be at least 4".into());
        }
        self.feed_forward().map(|_| ())
    }
}

/// `T5LayerNorm`: `weight · x / sqrt(mean(x²) + eps)`, the mean of squares taken in float32.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: Weights) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        // `x * rsqrt(var + eps)`, as transformers writes it.
        let x = x
            .broadcast_mul(&(var + self.eps)?.sqrt()?.recip()?)?
            .to_dtype(dtype)?;
        x.broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
}

impl SelfAttention {
    fn new(c: &T5Config, vb: Weights) -> Result<Self> {
        let inner = c.num_heads * c.d_kv;
        Ok(Self {
            q: linear_no_bias(c.d_model, inner, vb.pp("q"))?,
            k: linear_no_bias(c.d_model, inner, vb.pp("k"))?,
            v: linear_no_bias(c.d_model, inner, vb.pp("v"))?,
            o: linear_no_bias(inner, c.d_model, vb.pp("o"))?,
            heads: c.num_heads,
            d_kv: c.d_kv,
        })
    }

    /// T5 attention: no `1/sqrt(d)` scaling (folded into the weights at training), the position bias
    /// `(1, heads, l, l)` added to the scores, softmax in float32.
    fn forward(&self, xs: &Tensor, bias: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, self.d_kv))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(xs)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let scores = q.matmul(&k.t()?.contiguous()?)?;
        let scores = scores.broadcast_add(&bias.to_dtype(scores.dtype())?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, self.heads * self.d_kv))?;
        self.o.forward_add(&out, Some(residual))
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    /// `wi` (plain) or `wi_0` (gated: the activated half).
    wi_0: Linear,
    /// `wi_1`: the gated variant's linear half.
    wi_1: Option<Linear>,
    wo: Linear,
    act: Act,
}

impl FeedForward {
    fn new(c: &T5Config, vb: Weights) -> Result<Self> {
        let (gated, act) = c.feed_forward().map_err(candle_core::Error::msg)?;
        let (wi_0, wi_1) = if gated {
            (
                linear_no_bias(c.d_model, c.d_ff, vb.pp("wi_0"))?,
                Some(linear_no_bias(c.d_model, c.d_ff, vb.pp("wi_1"))?),
            )
        } else {
            (linear_no_bias(c.d_model, c.d_ff, vb.pp("wi"))?, None)
        };
        Ok(Self {
            wi_0,
            wi_1,
            wo: linear_no_bias(c.d_ff, c.d_model, vb.pp("wo"))?,
            act,
        })
    }

    fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = self.wi_0.forward(xs)?;
        let h = match self.act {
            Act::Relu => h.relu()?,
            Act::GeluTanh => gelu_new(&h)?,
            Act::Gelu => h.gelu_erf()?,
            Act::Silu => h.silu()?,
        };
        let h = match &self.wi_1 {
            Some(wi_1) => (h * wi_1.forward(xs)?)?,
            None => h,
        };
        self.wo.forward_add(&h, Some(residual))
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// transformers' `T5EncoderModel`: `last_hidden_state` of token ids.
#[derive(Debug, Clone)]
pub struct T5EncoderModel {
    config: T5Config,
    embed: Embedding,
    /// `(num_buckets, heads)`: block 0's `relative_attention_bias`, shared by every layer.
    relative_bias: Tensor,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
}

impl T5EncoderModel {
    /// Builds the encoder from `config` and weights under `vb` (transformers' names: `shared`,
    /// `encoder.block.{i}.layer.{0,1}`, `encoder.final_layer_norm`).
    pub fn new(vb: Weights, config: T5Config) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let c = &config;
        // The tied input embedding is saved once, under either name.
        let embed_vb = if vb.contains_tensor("shared.weight") {
            vb.pp("shared")
        } else {
            vb.pp("encoder.embed_tokens")
        };
        let embed = embedding(c.vocab_size, c.d_model, embed_vb)?;
        let enc = vb.pp("encoder");
        let relative_bias = enc
            .pp("block.0.layer.0.SelfAttention.relative_attention_bias")
            .get((c.relative_attention_num_buckets, c.num_heads), "weight")?;
        let blocks = (0..c.num_layers)
            .map(|i| {
                let b = enc.pp(format!("block.{i}.layer"));
                Ok(Block {
                    attn_norm: RmsNorm::new(c.d_model, c.layer_norm_epsilon, b.pp("0.layer_norm"))?,
                    attn: SelfAttention::new(c, b.pp("0.SelfAttention"))?,
                    ff_norm: RmsNorm::new(c.d_model, c.layer_norm_epsilon, b.pp("1.layer_norm"))?,
                    ff: FeedForward::new(c, b.pp("1.DenseReluDense"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = RmsNorm::new(c.d_model, c.layer_norm_epsilon, enc.pp("final_layer_norm"))?;
        Ok(Self {
            config,
            embed,
            relative_bias,
            blocks,
            final_norm,
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// `last_hidden_state` for `(batch, len)` u32 ids, every position attending to every other (the
    /// FLUX and SD3 pipelines pass no attention mask, so padding is attended to as well).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, l) = ids.dims2()?;
        let mut xs = self.embed.forward(ids)?;
        let bias = self.position_bias(l, ids.device())?;
        for block in &self.blocks {
            crate::layers::cancel::check()?;
            let h = block.attn_norm.forward(&xs)?;
            xs = block.attn.forward(&h, &bias, &xs)?;
            let h = block.ff_norm.forward(&xs)?;
            xs = block.ff.forward(&h, &xs)?;
        }
        self.final_norm.forward(&xs)
    }

    /// `(1, heads, l, l)`: the learned bias of each query/key offset's bucket.
    fn position_bias(&self, l: usize, device: &Device) -> Result<Tensor> {
        let c = &self.config;
        let mut buckets = Vec::with_capacity(l * l);
        for q in 0..l as i64 {
            for k in 0..l as i64 {
                buckets.push(relative_position_bucket(
                    k - q,
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                ));
            }
        }
        let buckets = Tensor::from_vec(buckets, l * l, device)?;
        let heads = c.num_heads;
        self.relative_bias
            .index_select(&buckets, 0)?
            .reshape((l, l, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }
}

/// transformers' `NewGELUActivation` as it writes it: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
/// (candle's `gelu` groups the same terms differently, one rounding apart).
fn gelu_new(x: &Tensor) -> Result<Tensor> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let cube = (x * x)?.broadcast_mul(x)?;
    let inner = ((x + (cube * 0.044715)?)? * c)?;
    (x * 0.5)?.broadcast_mul(&(inner.tanh()? + 1.0)?)
}

/// transformers' `T5Attention._relative_position_bucket` for the encoder (bidirectional): half the
/// buckets per direction; exact buckets for offsets below half of those, log-spaced ones up to
/// `max_distance`, the last bucket beyond. The log is taken in float32 as torch does.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        let ratio = (n as f32 / max_exact as f32).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32)
            * (half - max_exact) as f32;
        (max_exact + ratio as i64).min(half - 1)
    };
    bucket as u32
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket as bucket;

    #[test]
    fn buckets_match_transformers() {
        // transformers' T5Attention._relative_position_bucket(torch.arange(-200, 201), True, 32, 128),
        // checked at a few offsets: exact below 8, log-spaced to 15, the top bucket past 128; positive
        // offsets in the upper half.
        assert_eq!(bucket(0, 32, 128), 0);
        assert_eq!(bucket(-1, 32, 128), 1);
        assert_eq!(bucket(1, 32, 128), 17);
        assert_eq!(bucket(-7, 32, 128), 7);
        assert_eq!(bucket(-8, 32, 128), 8);
        assert_eq!(bucket(-12, 32, 128), 9);
        assert_eq!(bucket(-16, 32, 128), 10);
        assert_eq!(bucket(-127, 32, 128), 15);
        assert_eq!(bucket(-200, 32, 128), 15);
        assert_eq!(bucket(200, 32, 128), 31);
    }
}
