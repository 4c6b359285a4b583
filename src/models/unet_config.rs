//! `unet/config.json` of a diffusers `UNet2DConditionModel`, with diffusers' defaults for absent keys.

use serde::Deserialize;

/// Most down/up blocks a UNet config may declare (diffusers' UNets have 3 or 4).
const MAX_BLOCKS: usize = 8;
/// Largest channel count, head count, layer count or sample size a config may declare: far above any
/// real model, low enough that sizes derived from it cannot overflow.
const MAX_WIDTH: usize = 1 << 16;

/// An integer given either once for every block or as a per-block list (diffusers accepts both).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for each of `n` blocks.
    pub fn expand(&self, n: usize) -> Vec<usize> {
        match self {
            PerBlock::One(v) => vec![*v; n],
            PerBlock::Each(v) => v.clone(),
        }
    }
}

fn default_sample_size() -> usize {
    64
}
fn four() -> usize {
    4
}
fn default_blocks() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn default_down() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_up() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn two() -> PerBlock {
    PerBlock::One(2)
}
fn one() -> PerBlock {
    PerBlock::One(1)
}
fn one_usize() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn default_groups() -> usize {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn default_cross() -> PerBlock {
    PerBlock::One(1280)
}
fn default_heads() -> PerBlock {
    PerBlock::One(8)
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}

/// The subset of diffusers' `UNet2DConditionModel` config that the supported families use; every other
/// key is checked by [`UNetConfig::check_supported`] so a checkpoint needing more is refused, not misrun.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default = "default_blocks")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    pub layers_per_block: PerBlock,
    #[serde(default = "one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_cross")]
    pub cross_attention_dim: PerBlock,
    #[serde(default = "one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<usize>>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default = "default_heads")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_time_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "one_f64")]
    pub resnet_out_scale_factor: f64,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub attention_type: Option<String>,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
}

fn default_time_shift() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
}
fn three() -> usize {
    3
}

impl UNetConfig {
    /// Attention heads per down block. diffusers' legacy `attention_head_dim` really holds the number of
    /// heads; `num_attention_heads`, when given, wins.
    pub fn heads(&self) -> Vec<usize> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.expand(n),
            None => self.attention_head_dim.expand(n),
        }
    }

    /// Refuses values no working UNet has and that would divide by zero, index past a per-block list
    /// or overflow while the model is built (checkpoints come from strangers), naming the key.
    pub fn check_values(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        let mut problems = Vec::new();
        if !(1..=MAX_BLOCKS).contains(&n) {
            problems.push(format!(
                "block_out_channels must list 1 to {MAX_BLOCKS} blocks, not {n}"
            ));
        }
        if self.block_out_channels.iter().any(|&c| c == 0 || c > MAX_WIDTH) {
            problems.push(format!("block_out_channels entries must be 1..={MAX_WIDTH}"));
        }
        let g = self.norm_num_groups;
        if g == 0 || self.block_out_channels.iter().any(|c| c % g != 0) {
            problems.push(format!(
                "norm_num_groups {g} must be positive and divide every block_out_channels entry"
            ));
        }
        let lists = [
            ("layers_per_block", &self.layers_per_block, 1),
            (
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
                1,
            ),
            ("attention_head_dim", &self.attention_head_dim, 1),
        ];
        let heads = self
            .num_attention_heads
            .as_ref()
            .map(|h| ("num_attention_heads", h, 1));
        for (key, value, min) in lists.into_iter().chain(heads) {
            if let PerBlock::Each(v) = value {
                if v.len() != n {
                    problems.push(format!("{key} lists {} values for {n} blocks", v.len()));
                }
            }
            if value.expand(n).iter().any(|&v| v < min || v > MAX_WIDTH) {
                problems.push(format!("{key} values must be {min}..={MAX_WIDTH}"));
            }
        }
        if let Some(v) = &self.reverse_transformer_layers_per_block {
            if v.len() != n || v.iter().any(|&l| l > MAX_WIDTH) {
                problems.push(format!(
                    "reverse_transformer_layers_per_block must list {n} values"
                ));
            }
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ] {
            if v == 0 || v > MAX_WIDTH {
                problems.push(format!("{key} {v} must be 1..={MAX_WIDTH}"));
            }
        }
        if self
            .cross_attention_dim
            .expand(n)
            .iter()
            .any(|&d| d == 0 || d > MAX_WIDTH)
        {
            problems.push(format!("cross_attention_dim must be 1..={MAX_WIDTH}"));
        }
        // SDXL's added conditioning: `projection_class_embeddings_input_dim` holds the 5 or 6 time
        // ids, `addition_time_embed_dim` wide each, plus the pooled text embedding.
        if let Some(d) = self.addition_time_embed_dim {
            let p = self.projection_class_embeddings_input_dim;
            if d == 0 || d > MAX_WIDTH {
                problems.push(format!("addition_time_embed_dim {d} must be 1..={MAX_WIDTH}"));
            } else if let Some(p) = p.filter(|&p| d * 5 > p) {
                problems.push(format!(
                    "addition_time_embed_dim {d} is too large for projection_class_embeddings_input_dim {p}, \
                     which must hold 5 or 6 time ids of that width plus the pooled text embedding \
                     (SDXL: 256 and 2816)"
                ));
            }
        }
        if let Some(p) = self.projection_class_embeddings_input_dim {
            if p == 0 || p > MAX_WIDTH {
                problems.push(format!(
                    "projection_class_embeddings_input_dim {p} must be 1..={MAX_WIDTH}"
                ));
            }
        }
        if self.sample_size == 0 || self.sample_size > MAX_WIDTH {
            problems.push(format!(
                "sample_size {} must be 1..={MAX_WIDTH}",
                self.sample_size
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }

    /// Refuses configurations that would need UNet features we have not built, naming the key.
    pub fn check_supported(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        let mut problems = Vec::new();
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            problems.push(format!(
                "down_block_types/up_block_types must have {n} entries like block_out_channels"
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                problems.push(format!("down block type {t}"));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                problems.push(format!("up block type {t}"));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") | None => {}
            Some(t) => problems.push(format!("mid block type {t}")),
        }
        if self.act_fn != "silu" {
            problems.push(format!("act_fn {}", self.act_fn));
        }
        if self.resnet_time_scale_shift != "default" {
            problems.push(format!(
                "resnet_time_scale_shift {}",
                self.resnet_time_scale_shift
            ));
        }
        if self.time_embedding_type != "positional" {
            problems.push(format!("time_embedding_type {}", self.time_embedding_type));
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            problems.push("class embeddings (class_embed_type / num_class_embeds)".into());
        }
        if self.encoder_hid_dim.is_some() {
            problems.push("encoder_hid_dim".into());
        }
        if self.dual_cross_attention || self.resnet_skip_time_act {
            problems.push("dual_cross_attention / resnet_skip_time_act".into());
        }
        if !matches!(
            &self.only_cross_attention,
            serde_json::Value::Null | serde_json::Value::Bool(false)
        ) {
            problems.push("only_cross_attention".into());
        }
        if self.time_embedding_act_fn.is_some() || self.timestep_post_act.is_some() {
            problems.push("time_embedding_act_fn / timestep_post_act".into());
        }
        if let Some(t) = self.attention_type.as_deref() {
            if t != "default" {
                problems.push(format!("attention_type {t}"));
            }
        }
        if self.cross_attention_norm.is_some() {
            problems.push("cross_attention_norm".into());
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time")
                if self.addition_time_embed_dim.is_none()
                    || self.projection_class_embeddings_input_dim.is_none() =>
            {
                problems.push(
                    "addition_embed_type text_time without addition_time_embed_dim and \
                     projection_class_embeddings_input_dim"
                        .into(),
                )
            }
            Some("text_time") => {}
            Some(t) => problems.push(format!("addition_embed_type {t}")),
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            problems.push("even conv_in_kernel / conv_out_kernel".into());
        }
        if let PerBlock::Each(v) = &self.cross_attention_dim {
            if v.iter().any(|d| *d != v[0]) {
                problems.push("per-block cross_attention_dim".into());
            }
        }
        if let PerBlock::Each(v) = &self.layers_per_block {
            if v.len() != n {
                problems.push("layers_per_block list length".into());
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }

    /// The cross-attention width (the text encoder's hidden size, or both encoders' for SDXL).
    pub fn cross_attention_dim(&self) -> usize {
        match &self.cross_attention_dim {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[0],
        }
    }
}
