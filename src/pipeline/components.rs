//! The loaded models of a checkpoint, shared (through `Arc`) by every pipeline made from it.

use crate::error::{Error, Result};
use crate::model_index::ModelIndex;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::flux::{FluxConfig, FluxTransformer2DModel};
use crate::models::sd3::{SD3Transformer2DModel, Sd3Config};
use crate::models::t5::{T5Config, T5EncoderModel};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::schedulers::SchedulerConfig;
use crate::source::ModelSource;
use crate::text::clip_tokenizer::ClipTokenizer;
use crate::text::t5_tokenizer::T5Tokenizer;
use crate::weights::load::{model_error, read_config};
use crate::weights::{WeightStore, Weights};
use candle_core::{DType, Device};
use std::path::PathBuf;
use std::sync::Arc;

/// A tokenizer and the text encoder it feeds.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    pub tokenizer: ClipTokenizer,
    pub model: ClipTextModel,
}

/// A T5 tokenizer and the `T5EncoderModel` it feeds (FLUX's `text_encoder_2`).
#[derive(Debug, Clone)]
pub struct T5TextEncoder {
    pub tokenizer: T5Tokenizer,
    pub model: T5EncoderModel,
}

/// Every model of a checkpoint, loaded by its family ([`super::families::FamilyPipeline::load`]). The models are immutable once loaded, so runs on any number of pipelines
/// and threads may use them at once; the scheduler config is the one shared, mutable piece, as in
/// diffusers, where pipeline constructors patch the shared scheduler's config (see
/// `config::patch_legacy_scheduler`).
#[derive(Debug)]
pub struct Components {
    pub text_encoder: TextEncoder,
    /// SDXL's second encoder (`CLIPTextModelWithProjection`).
    pub text_encoder_2: Option<TextEncoder>,
    /// The denoiser of UNet families (SD, SDXL, LCM).
    pub unet: Option<UNet2DConditionModel>,
    /// FLUX's T5 encoder (`text_encoder_2`).
    pub t5: Option<T5TextEncoder>,
    /// FLUX's denoiser.
    pub flux_transformer: Option<FluxTransformer2DModel>,
    /// SD3's denoiser.
    pub sd3_transformer: Option<SD3Transformer2DModel>,
    pub vae: AutoencoderKL,
    scheduler: std::sync::RwLock<SchedulerConfig>,
    pub device: Device,
    pub dtype: DType,
    /// Each model's deferred weights (see [`crate::weights`]).
    weights: Vec<Arc<WeightStore>>,
    /// What was loaded, in load order: for introspection.
    parts: Vec<ComponentPart>,
}

/// One loaded model: its folder name, its class as `model_index.json` names it, and the bytes of its
/// weight files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentPart {
    pub name: String,
    pub class: String,
    pub file_bytes: u64,
}

impl Components {
    /// The checkpoint's scheduler config, as the pipelines sharing it have patched it.
    pub fn scheduler(&self) -> SchedulerConfig {
        self.scheduler.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies `patch` to the shared scheduler config.
    pub(crate) fn patch_scheduler(&self, patch: impl FnOnce(&mut SchedulerConfig)) {
        patch(&mut self.scheduler.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// Memory the weights not read yet will take when a run first uses them (float32 CPU weights are
    /// read on first use, see [`crate::weights`]): their bytes, plus the largest read buffer
    /// one of them needs (weights stored in half precision are converted through one). Zero once every weight has been used or after [`Components::preload`].
    pub fn pending_weight_bytes(&self) -> u64 {
        let (mut total, mut largest) = (0, 0);
        for store in &self.weights {
            let (bytes, max) = store.pending_bytes();
            total += bytes;
            largest = largest.max(max);
        }
        total + largest
    }

    /// Reads every weight that is still deferred, so no later run pays for it.
    pub fn preload(&self) -> Result<()> {
        self.weights.iter().try_for_each(|store| store.materialize())
    }
}

/// A model's weights for computing in `dtype` on `device`. Half precision on the CPU holds half-precision
/// values but computes in float32 with our kernels ([`Weights::open_half_on_cpu`]): candle's float16
/// CPU kernels are 3.5× slower (SD 1.5 UNet step at 256²) and accumulate convolutions in half
/// precision, and it has no bfloat16 CPU matmul at all.
fn open_weights(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Weights> {
    if device.is_cpu() && matches!(dtype, DType::F16 | DType::BF16) {
        Weights::open_half_on_cpu(files, dtype)
    } else {
        Weights::open(files, dtype, device)
    }
}

/// Files a tokenizer folder may hold; each is fetched (hub) or checked (local) before parsing.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer_config.json",
];

/// What a family's loader reads from.
pub struct LoadContext<'a> {
    pub source: &'a ModelSource,
    pub index: &'a ModelIndex,
    pub device: &'a Device,
    pub dtype: DType,
    /// Read deferred weights during the load.
    pub preload: bool,
}

/// Loads a checkpoint's components one by one for a family's loader: reads the scheduler config,
/// opens each model's weights, keeps their deferred stores, and tells `progress` after each model.
pub struct Loader<'a> {
    source: &'a ModelSource,
    device: Device,
    dtype: DType,
    preload: bool,
    progress: &'a mut dyn FnMut(usize, usize) -> bool,
    done: usize,
    total: usize,
    weights: Vec<Arc<WeightStore>>,
    index: &'a ModelIndex,
    parts: Vec<ComponentPart>,
}

impl<'a> Loader<'a> {
    /// A loader for `total` models (the progress denominator).
    pub fn new(
        ctx: &LoadContext<'a>,
        total: usize,
        progress: &'a mut dyn FnMut(usize, usize) -> bool,
    ) -> Self {
        Self {
            source: ctx.source,
            device: ctx.device.clone(),
            dtype: ctx.dtype,
            preload: ctx.preload,
            progress,
            done: 0,
            total,
            weights: Vec::new(),
            index: ctx.index,
            parts: Vec::new(),
        }
    }

    /// Records a loaded model (folder `name`, its weight `files`) and reports progress (`Cancelled`
    /// when the callback says stop).
    fn loaded(&mut self, name: &str, files: &[PathBuf], store: Arc<WeightStore>) -> Result<()> {
        if self.preload {
            store.materialize()?;
        }
        self.weights.push(store);
        self.parts.push(ComponentPart {
            name: name.to_string(),
            class: self
                .index
                .component(name)
                .map(|c| c.class_name.clone())
                .unwrap_or_default(),
            file_bytes: files
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum(),
        });
        self.done += 1;
        if (self.progress)(self.done, self.total) {
            Ok(())
        } else {
            Err(Error::Cancelled)
        }
    }

    /// Refuses to load `name` when `model_index.json` saved it as `[null, null]` (`None`): the
    /// family needs it, and its folder, if one is there, is not part of the checkpoint.
    fn require(&self, name: &str) -> Result<()> {
        if self.index.null_components.iter().any(|n| n == name) {
            return Err(Error::InvalidModel(format!(
                "model_index.json marks the component {name:?} as [null, null] (none), but this \
                 pipeline needs it: give it its library and class (e.g. [\"diffusers\", \"...\"]) \
                 and a {name} folder"
            )));
        }
        Ok(())
    }

    /// A CLIP tokenizer folder and the text encoder it feeds (`with_projection`:
    /// `CLIPTextModelWithProjection`).
    pub fn text_encoder(
        &mut self,
        tokenizer: &str,
        encoder: &str,
        with_projection: bool,
    ) -> Result<TextEncoder> {
        self.require(tokenizer)?;
        self.require(encoder)?;
        let (enc, store, files) = load_text_encoder(
            self.source,
            tokenizer,
            encoder,
            with_projection,
            &self.device,
            self.dtype,
        )?;
        self.loaded(encoder, &files, store)?;
        Ok(enc)
    }

    /// The `unet` folder's `UNet2DConditionModel`.
    pub fn unet(&mut self) -> Result<UNet2DConditionModel> {
        self.require("unet")?;
        let source = self.source;
        let cfg: UNetConfig = read_config(&source.file("unet", "config.json")?)?;
        let dir = PathBuf::from(source.component_location("unet"));
        let files = source.weights("unet", "diffusion_pytorch_model")?;
        let vb = open_weights(&files, self.dtype, &self.device)?;
        let store = vb.store();
        let unet = UNet2DConditionModel::new(vb, cfg).map_err(|e| model_error("unet", &dir, e))?;
        self.loaded("unet", &files, store)?;
        Ok(unet)
    }

    /// A T5 tokenizer folder (`tokenizer.json`) and the `T5EncoderModel` it feeds.
    pub fn t5_encoder(&mut self, tokenizer: &str, encoder: &str) -> Result<T5TextEncoder> {
        self.require(tokenizer)?;
        self.require(encoder)?;
        let source = self.source;
        let tok_file = source.file(tokenizer, "tokenizer.json")?;
        // Fetched (hub) or checked (local) so the folder read below finds it.
        source.optional_file(tokenizer, "tokenizer_config.json")?;
        let folder = tok_file.parent().map(PathBuf::from).unwrap_or_default();
        let tok = T5Tokenizer::from_dir(&folder)?;
        let cfg: T5Config = read_config(&source.file(encoder, "config.json")?)?;
        let dir = PathBuf::from(source.component_location(encoder));
        let files = source.weights(encoder, "model")?;
        let vb = open_weights(&files, self.dtype, &self.device)?;
        let store = vb.store();
        let model = T5EncoderModel::new(vb, cfg).map_err(|e| model_error(encoder, &dir, e))?;
        let vocab = model.config().vocab_size;
        if tok.max_id() as usize >= vocab {
            return Err(Error::InvalidModel(format!(
                "{tokenizer} produces ids up to {} but {encoder} embeds only {vocab}",
                tok.max_id()
            )));
        }
        self.loaded(encoder, &files, store)?;
        Ok(T5TextEncoder {
            tokenizer: tok,
            model,
        })
    }

    /// The `transformer` folder's `FluxTransformer2DModel`.
    pub fn flux_transformer(&mut self) -> Result<FluxTransformer2DModel> {
        self.require("transformer")?;
        let source = self.source;
        let cfg: FluxConfig = read_config(&source.file("transformer", "config.json")?)?;
        let dir = PathBuf::from(source.component_location("transformer"));
        if let Err(why) = cfg.validate() {
            return Err(Error::InvalidModel(format!(
                "{}/config.json is not a FluxTransformer2DModel the FLUX pipelines can run: {why}",
                dir.display()
            )));
        }
        let files = source.weights("transformer", "diffusion_pytorch_model")?;
        let vb = open_weights(&files, self.dtype, &self.device)?;
        let store = vb.store();
        let model = FluxTransformer2DModel::new(vb, cfg).map_err(|e| model_error("transformer", &dir, e))?;
        self.loaded("transformer", &files, store)?;
        Ok(model)
    }

    /// The `transformer` folder's `SD3Transformer2DModel`.
    pub fn sd3_transformer(&mut self) -> Result<SD3Transformer2DModel> {
        self.require("transformer")?;
        let source = self.source;
        let cfg: Sd3Config = read_config(&source.file("transformer", "config.json")?)?;
        let dir = PathBuf::from(source.component_location("transformer"));
        if let Err(why) = cfg.validate() {
            return Err(Error::InvalidModel(format!(
                "{}/config.json is not an SD3Transformer2DModel the SD3 pipelines can run: {why}",
                dir.display()
            )));
        }
        let files = source.weights("transformer", "diffusion_pytorch_model")?;
        let vb = open_weights(&files, self.dtype, &self.device)?;
        let store = vb.store();
        let model = SD3Transformer2DModel::new(vb, cfg).map_err(|e| model_error("transformer", &dir, e))?;
        self.loaded("transformer", &files, store)?;
        Ok(model)
    }

    /// The `vae` folder's `AutoencoderKL`. `upcast`: keep a `force_upcast` VAE of a half-precision
    /// pipeline in float32 (its half-precision values, computed in float32), as diffusers' SDXL
    /// pipelines do for every encode and decode.
    pub fn vae(&mut self, upcast: bool) -> Result<AutoencoderKL> {
        self.require("vae")?;
        let source = self.source;
        let cfg: VaeConfig = read_config(&source.file("vae", "config.json")?)?;
        let dir = PathBuf::from(source.component_location("vae"));
        let files = source.weights("vae", "diffusion_pytorch_model")?;
        let vb = if upcast && self.dtype != DType::F32 && cfg.force_upcast.unwrap_or(true) {
            Weights::open_upcast(&files, self.dtype, &self.device)?
        } else {
            open_weights(&files, self.dtype, &self.device)?
        };
        let store = vb.store();
        let vae = AutoencoderKL::new(vb, cfg).map_err(|e| model_error("vae", &dir, e))?;
        self.loaded("vae", &files, store)?;
        Ok(vae)
    }

    /// The loaded set, with the checkpoint's scheduler config.
    pub fn finish(self, models: Models, scheduler: SchedulerConfig) -> Components {
        Components {
            text_encoder: models.text_encoder,
            text_encoder_2: models.text_encoder_2,
            unet: models.unet,
            t5: models.t5,
            flux_transformer: models.flux_transformer,
            sd3_transformer: models.sd3_transformer,
            vae: models.vae,
            scheduler: std::sync::RwLock::new(scheduler),
            device: self.device,
            dtype: self.dtype,
            weights: self.weights,
            parts: self.parts,
        }
    }
}

/// The models a family loaded, handed to [`Loader::finish`].
pub struct Models {
    pub text_encoder: TextEncoder,
    pub text_encoder_2: Option<TextEncoder>,
    pub unet: Option<UNet2DConditionModel>,
    pub t5: Option<T5TextEncoder>,
    pub flux_transformer: Option<FluxTransformer2DModel>,
    pub sd3_transformer: Option<SD3Transformer2DModel>,
    pub vae: AutoencoderKL,
}

/// The checkpoint's scheduler config. diffusers instantiates the class `model_index.json` names
/// (`Cls.from_pretrained(folder)`), whatever `_class_name` the config file has; a file saved for another
/// class goes through `from_config`.
pub fn load_scheduler(source: &ModelSource, index: &ModelIndex) -> Result<SchedulerConfig> {
    let scheduler_path = source.file("scheduler", "scheduler_config.json")?;
    let text = crate::weights::load::read_text_file(&scheduler_path)?;
    let mut scheduler = SchedulerConfig::from_json(&text, &scheduler_path.display().to_string())?;
    if let Some(c) = index.component("scheduler") {
        if c.class_name != scheduler.class_name && !c.class_name.is_empty() {
            let file_class = scheduler.class_name.clone();
            scheduler = crate::schedulers::select(&scheduler, Some(&c.class_name), None).map_err(|e| {
                let why = match e {
                    Error::InvalidArgument(m) | Error::Unsupported(m) | Error::InvalidModel(m) => m,
                    other => other.to_string(),
                };
                Error::Unsupported(format!(
                    "model_index.json names scheduler class {} (its config file is for {file_class}): {why}",
                    c.class_name
                ))
            })?;
        }
    }
    crate::schedulers::build(&scheduler)?;
    Ok(scheduler)
}

impl Components {
    /// Pixels per latent (`2^(len(vae.block_out_channels) - 1)`).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config().scale_factor()
    }

    /// The models loaded, in load order.
    pub fn parts(&self) -> &[ComponentPart] {
        &self.parts
    }

    /// The UNet, for families that denoise with one.
    pub fn unet(&self) -> Result<&UNet2DConditionModel> {
        self.unet
            .as_ref()
            .ok_or_else(|| Error::Unsupported("this pipeline's components have no UNet".into()))
    }
}

fn load_text_encoder(
    source: &ModelSource,
    tokenizer: &str,
    encoder: &str,
    with_projection: bool,
    device: &Device,
    dtype: DType,
) -> Result<(TextEncoder, Arc<WeightStore>, Vec<PathBuf>)> {
    // Fetch (hub) or locate every tokenizer file first: the tokenizer reads its folder as a whole.
    let mut folder = None;
    for f in TOKENIZER_FILES {
        if let Some(path) = source.optional_file(tokenizer, f)? {
            folder = path.parent().map(PathBuf::from);
        }
    }
    let folder = folder.ok_or_else(|| {
        Error::NotFound(format!(
            "{} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)",
            source.component_location(tokenizer)
        ))
    })?;
    let tok = ClipTokenizer::from_dir(&folder)?;
    let cfg: ClipTextConfig = read_config(&source.file(encoder, "config.json")?)?;
    let dir = PathBuf::from(source.component_location(encoder));
    let files = source.weights(encoder, "model")?;
    let vb = open_weights(&files, dtype, device)?;
    let store = vb.store();
    let model = ClipTextModel::new(vb, cfg, with_projection).map_err(|e| model_error(encoder, &dir, e))?;
    // Ids or lengths the encoder cannot embed would only fail at the first run, with candle's index
    // error; refuse the pair here, naming both folders.
    let vocab_size = model.config().vocab_size;
    // A special token missing from the vocabulary is appended by transformers as a new id: the
    // tokenizer's config is what is wrong, not the encoder.
    if let Some((key, content, id)) = tok.special_beyond(vocab_size) {
        return Err(Error::InvalidModel(format!(
            "{}: {key} {content:?} is not in the tokenizer's vocabulary, so it would get the new id {id}, \
             beyond the {vocab_size} tokens {encoder} embeds: name a token of the vocabulary (CLIP's are \
             \"<|startoftext|>\" and \"<|endoftext|>\")",
            tok.config_file()
        )));
    }
    if vocab_size < tok.vocab_size() || tok.max_id() as usize >= vocab_size {
        return Err(Error::InvalidModel(format!(
            "{tokenizer} has {} tokens (largest id {}) but {encoder} embeds only {vocab_size}",
            tok.vocab_size(),
            tok.max_id()
        )));
    }
    let positions = model.config().max_position_embeddings;
    if tok.max_length() > positions {
        return Err(Error::InvalidModel(format!(
            "{tokenizer}'s model_max_length {} exceeds {encoder}'s max_position_embeddings {positions}",
            tok.max_length()
        )));
    }
    let encoder = TextEncoder {
        tokenizer: tok,
        model,
    };
    Ok((encoder, store, files))
}
