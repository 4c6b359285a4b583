//! Pipelines: a task over shared, loaded components (`from_pretrained`, `from_pipe`, `run`).

mod components;
mod conditioning;
mod config;
pub mod control;
mod denoise;
pub mod families;
pub(crate) mod generate;
pub mod info;
pub mod memory;
pub mod params;
mod prompt;
mod resample;

pub use components::{Components, TextEncoder};
pub use control::{LogLevel, LogSink, PreviewMode, RunControl};
pub use families::FamilyPipeline;
pub use params::{LoadOptions, ProgressFn, RunParams};

use crate::error::{Error, Result};
use crate::image::Image;
use crate::registry::{self, Family, Task};
use crate::source::{ModelSource, SourceOptions};
use candle_core::Tensor;
use serde_json::{Map, Value};
use std::sync::Arc;

/// A ready-to-run pipeline for one task. Cheap to clone; clones and `from_pipe` siblings share the
/// loaded models, and `run` takes `&self`, so several threads may run one pipeline at once.
#[derive(Debug, Clone)]
pub struct Pipeline {
    task: Task,
    family: Family,
    class_name: String,
    name_or_path: String,
    config: Map<String, Value>,
    /// Run defaults set by `from_pipe` overrides (a run's own values win, the family's come last).
    run_defaults: config::RunDefaultOverrides,
    /// The entries of the checkpoint's `model_index.json` (`from_pipe` refuses them as overrides).
    component_names: Vec<String>,
    components: Arc<Components>,
}

/// Intermediate values of a run, recorded on request: what the parity tests compare against diffusers,
/// and what a user chasing a difference would want to see.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    pub prompt_embeds: Option<Tensor>,
    pub negative_prompt_embeds: Option<Tensor>,
    /// SDXL: the second encoder's pooled projection (`text_embeds`).
    pub pooled_prompt_embeds: Option<Tensor>,
    pub negative_pooled_prompt_embeds: Option<Tensor>,
    /// SDXL: `added_cond_kwargs` of the first UNet call (text embeds and time ids, CFG batch included).
    pub added_cond: Option<crate::models::unet::AddedCond>,
    /// Every tensor drawn from the generator, in order.
    pub noise: Vec<Tensor>,
    pub unet_timesteps: Vec<f64>,
    pub unet_input_step0: Option<Tensor>,
    pub unet_output_step0: Option<Tensor>,
    /// Latents after each scheduler step.
    pub latents: Vec<Tensor>,
    /// The decoded images as floats in `[0, 1]`, `(b, 3, h, w)`.
    pub image: Option<Tensor>,
}

/// What a run returns.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub images: Vec<Image>,
    /// Non-fatal notes diffusers would log (e.g. a truncated prompt).
    pub warnings: Vec<String>,
}

impl Pipeline {
    /// Loads the checkpoint at `model` (a folder or a hub id) for `task`, like diffusers'
    /// `AutoPipelineFor<Task>.from_pretrained(model)`. `progress(done, total)` is told after each
    /// component; returning `false` cancels the load.
    pub fn from_pretrained(
        model: &str,
        task: Task,
        opts: &LoadOptions,
        progress: Option<&mut ProgressFn>,
    ) -> Result<Self> {
        let device = crate::device::parse_device(opts.device.as_deref())?;
        let source_opts = SourceOptions {
            revision: opts.revision.clone(),
            variant: opts.variant.clone(),
            cache_dir: opts.cache_dir.clone(),
            token: opts.token.clone(),
            offline: None,
            local_files_only: opts.local_files_only,
        };
        let source = ModelSource::resolve(model, &source_opts)?;
        let plan = registry::plan(&source, task)?;
        let mut no_progress = |_: usize, _: usize| true;
        let progress: &mut dyn FnMut(usize, usize) -> bool = match progress {
            Some(p) => p,
            None => &mut no_progress,
        };
        let dtype = crate::device::parse_dtype(opts.dtype.as_deref())?;
        let fam = families::imp(plan.family);
        let ctx = families::LoadContext {
            source: &source,
            index: &plan.index,
            device: &device,
            dtype,
            preload: opts.preload,
        };
        let components = fam.load(&ctx, progress)?;
        components.patch_scheduler(|s| fam.patch_scheduler(task, s));
        let mut base = plan.index.config.clone();
        base.insert("_name_or_path".into(), Value::String(model.to_string()));
        let config = config::derive(&fam.config_keys(task), &base, &Map::new());
        let component_names = (plan.index.components.iter().map(|c| c.name.clone()))
            .chain(plan.index.null_components.iter().cloned())
            .collect();
        Ok(Self {
            task,
            family: plan.family,
            class_name: plan.resolved.pipeline_class.to_string(),
            name_or_path: model.to_string(),
            config,
            run_defaults: Default::default(),
            component_names,
            components: Arc::new(components),
        })
    }

    /// A pipeline for `task` over the same loaded components (no extra model memory), like diffusers'
    /// `AutoPipelineFor<Task>.from_pipe(self, **overrides)`: the configuration carries over and
    /// `overrides` (pipeline config keys such as `requires_aesthetics_score`) win. `overrides` may also
    /// set the new pipeline's run defaults `strength`, `guidance_scale` and `num_inference_steps`
    /// (used by runs that leave them unset; not carried on by a further `from_pipe`). Anything else
    /// (unknown keys, wrong types, `_` keys, component names) is [`Error::InvalidArgument`].
    pub fn from_pipe(&self, task: Task, overrides: &Map<String, Value>) -> Result<Self> {
        // diffusers' `from_pipe` looks the instance's class up as it is (no `from_pretrained` renames);
        // `controlnet=` / `enable_pag=` will arrive as modifiers.
        let resolved = registry::resolve_from_pipe(&self.class_name, task, registry::Modifiers::default())?;
        let family = resolved.family.ok_or_else(|| {
            Error::Unsupported(format!(
                "{} is not supported by autopipeline yet",
                resolved.pipeline_class
            ))
        })?;
        let fam = families::imp(family);
        let keys = fam.config_keys(task);
        let run_defaults =
            config::check_overrides(&keys, &self.component_names, overrides, generate::MAX_STEPS)?;
        let config = config::derive(&keys, &self.config, overrides);
        // The new pipeline's constructor patches the scheduler both pipelines share.
        self.components.patch_scheduler(|s| fam.patch_scheduler(task, s));
        Ok(Self {
            task,
            family,
            class_name: resolved.pipeline_class.to_string(),
            name_or_path: self.name_or_path.clone(),
            config,
            run_defaults,
            component_names: self.component_names.clone(),
            components: Arc::clone(&self.components),
        })
    }

    pub fn task(&self) -> Task {
        self.task
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// The implementation of this pipeline's family.
    pub fn family_impl(&self) -> &'static dyn FamilyPipeline {
        families::imp(self.family)
    }

    /// The diffusers pipeline class this pipeline mirrors, e.g. `StableDiffusionPipeline`.
    pub fn class_name(&self) -> &str {
        &self.class_name
    }

    /// The pipeline configuration (`model_index.json` scalars plus overrides).
    pub fn config(&self) -> &Map<String, Value> {
        &self.config
    }

    pub fn components(&self) -> &Arc<Components> {
        &self.components
    }

    /// Whether two pipelines share the very same loaded models.
    pub fn shares_components_with(&self, other: &Pipeline) -> bool {
        Arc::ptr_eq(&self.components, &other.components)
    }

    /// Default output size along each side (`unet.sample_size × vae_scale_factor` for UNet families).
    pub fn default_size(&self) -> usize {
        self.family_impl().default_size(&self.components)
    }

    /// Generates images. `progress(step, total)` is called after each denoising step; returning `false`
    /// cancels the run with [`Error::Cancelled`].
    pub fn run(&self, params: &RunParams, progress: Option<&mut ProgressFn>) -> Result<RunOutput> {
        self.run_traced(params, progress, None)
    }

    /// [`Pipeline::run`], recording intermediate tensors into `trace`.
    pub fn run_traced(
        &self,
        params: &RunParams,
        progress: Option<&mut ProgressFn>,
        trace: Option<&mut Trace>,
    ) -> Result<RunOutput> {
        let mut control = RunControl::new();
        if let Some(p) = progress {
            control = control.with_progress(p);
        }
        self.run_controlled(params, &mut control, trace)
    }

    /// [`Pipeline::run`] with per-run hooks: progress, a cancel flag, previews, a log sink.
    pub fn run_with(&self, params: &RunParams, control: &mut RunControl<'_>) -> Result<RunOutput> {
        self.run_controlled(params, control, None)
    }

    fn run_controlled(
        &self,
        params: &RunParams,
        control: &mut RunControl<'_>,
        trace: Option<&mut Trace>,
    ) -> Result<RunOutput> {
        let started = std::time::Instant::now();
        let mut scratch = Trace::default();
        let trace_on = trace.is_some();
        let trace = trace.unwrap_or(&mut scratch);
        // The models check the run's cancel flag between their blocks (see `layers::cancel`), so a
        // cancel takes effect inside a long step, not after it.
        let _cancel_points = crate::layers::cancel::scope(control.cancel_flag().clone());
        let out = control
            .bind(self, params.vae_options())
            .and_then(|()| generate::run(self, params, control, trace, trace_on));
        let warnings = out.as_ref().map_or(&[][..], |o| &o.warnings[..]);
        control.finish(&out, warnings, started);
        out
    }
}
