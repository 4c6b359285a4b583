//! Which pipeline a checkpoint becomes for a task: diffusers' AutoPipeline tables and lookup rules.
//!
//! The tables below are `diffusers/src/diffusers/pipelines/auto_pipeline.py` copied entry by entry,
//! in the same order (huggingface/diffusers main at 58eb52c, whose `auto_pipeline.py` equals the
//! v0.40.0 release; the `kolors` rows are the ones diffusers adds when `sentencepiece` is installed).
//! Order matters: diffusers finds a class's family by scanning the mappings in order and taking the
//! first hit, so the tables are kept as ordered lists rather than maps.
//!
//! Each family also carries our status: the [`Family`] variants are implemented (each by its module in
//! `pipeline::families`); every other family resolves (so messages and
//! class names match diffusers) but is reported as not supported yet by [`plan`].

use crate::error::{Error, Result};
use crate::model_index::ModelIndex;
use crate::source::ModelSource;

/// What a pipeline is asked to do: diffusers' `AutoPipelineForText2Image`,
/// `AutoPipelineForImage2Image` and `AutoPipelineForInpainting`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// `AutoPipelineForText2Image`.
    Text2Image,
    /// `AutoPipelineForImage2Image`.
    Image2Image,
    /// `AutoPipelineForInpainting`.
    Inpaint,
}

impl Task {
    /// All tasks, in diffusers' order.
    pub const ALL: [Task; 3] = [Task::Text2Image, Task::Image2Image, Task::Inpaint];

    /// The short name the fixtures use: `text2img`, `img2img`, `inpaint`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Text2Image => "text2img",
            Task::Image2Image => "img2img",
            Task::Inpaint => "inpaint",
        }
    }

    /// Parses `text2img`/`text2image`, `img2img`/`image2image`, `inpaint`/`inpainting`
    /// (ASCII case-insensitive).
    pub fn from_name(name: &str) -> Option<Task> {
        match name.to_ascii_lowercase().as_str() {
            "text2img" | "text2image" | "text-to-image" => Some(Task::Text2Image),
            "img2img" | "image2image" | "image-to-image" => Some(Task::Image2Image),
            "inpaint" | "inpainting" => Some(Task::Inpaint),
            _ => None,
        }
    }

    /// The diffusers mapping that serves this task.
    fn mapping(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Task::Text2Image => AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
            Task::Image2Image => AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
            Task::Inpaint => AUTO_INPAINT_PIPELINES_MAPPING,
        }
    }
}

/// The model families autopipeline implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// diffusers family `stable-diffusion` (SD 1.x, SD 2.x).
    StableDiffusion,
    /// diffusers family `stable-diffusion-xl`.
    StableDiffusionXl,
    /// diffusers family `lcm` (latent consistency models: `LatentConsistencyModelPipeline`).
    LatentConsistency,
    /// diffusers family `flux` (FLUX.1 (dev) and (schnell): `FluxPipeline`).
    Flux,
    /// diffusers family `stable-diffusion-3` (SD 3 and 3.5: `StableDiffusion3Pipeline`).
    StableDiffusion3,
}

impl Family {
    /// Every implemented family.
    /// (In the order of diffusers' AutoPipeline mappings.)
    pub const ALL: [Family; 5] = [
        Family::StableDiffusion,
        Family::StableDiffusionXl,
        Family::StableDiffusion3,
        Family::LatentConsistency,
        Family::Flux,
    ];

    /// diffusers' name for the family (the key in the AutoPipeline mappings).
    pub fn name(self) -> &'static str {
        match self {
            Family::StableDiffusion => "stable-diffusion",
            Family::StableDiffusionXl => "stable-diffusion-xl",
            Family::LatentConsistency => "lcm",
            Family::Flux => "flux",
            Family::StableDiffusion3 => "stable-diffusion-3",
        }
    }

    /// The implemented family with diffusers name `name`, if we implement it.
    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The answer to "which pipeline does this class become for this task".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// diffusers family name (`stable-diffusion`, `pixart-alpha`, …).
    pub family_name: &'static str,
    /// The task pipeline class diffusers instantiates (`StableDiffusionImg2ImgPipeline`, …).
    pub pipeline_class: &'static str,
    /// Our implementation of the family; `None` = diffusers has it, we don't yet.
    pub family: Option<Family>,
}

/// diffusers' `controlnet=` keyword, which AutoPipeline turns into a class-name change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlNet {
    /// `controlnet=None` passed explicitly (`from_pipe`: drop the controlnet).
    Removed,
    /// A `ControlNetModel` (or a list of them).
    Plain,
    /// A `ControlNetUnionModel`.
    Union,
}

/// The keywords that change the class diffusers picks: `controlnet=` and `enable_pag=`.
/// `None` = the keyword was not passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modifiers {
    /// The `controlnet=` keyword.
    pub controlnet: Option<ControlNet>,
    /// The `enable_pag=` keyword.
    pub enable_pag: Option<bool>,
}

/// The families we implement, as diffusers names them.
pub fn supported_families() -> Vec<&'static str> {
    Family::ALL.iter().map(|f| f.name()).collect()
}

/// `AutoPipelineFor<task>.from_pretrained(ckpt)` where `ckpt`'s `model_index.json` says
/// `_class_name = class_name`: the family and task pipeline diffusers picks, or diffusers' error.
///
/// An img2img or inpaint class as `_class_name` (e.g. `StableDiffusionXLInpaintPipeline`) maps to
/// its family like a text2img class does. The error is `Error::Unsupported` starting with
/// diffusers' exact text, `AutoPipeline can't find a pipeline linked to <class> for <family|None>`.
pub fn resolve(class_name: &str, task: Task) -> Result<Resolved> {
    resolve_with(class_name, task, Modifiers::default())
}

/// [`resolve`] with diffusers' `controlnet=` / `enable_pag=` keywords, which rename the class before
/// the lookup (`from_pretrained`'s rules, including the `*ControlPipeline` → `*ControlImg2ImgPipeline`
/// / `*ControlInpaintPipeline` rename diffusers always applies for img2img and inpaint).
pub fn resolve_with(class_name: &str, task: Task, modifiers: Modifiers) -> Result<Resolved> {
    let name = from_pretrained_class_name(class_name, task, modifiers);
    get_task_class(task, &name)
}

/// `AutoPipelineFor<task>.from_pipe(pipe)` where `pipe` is a `pipeline_class` instance, with
/// diffusers' `from_pipe` rules for `controlnet=` / `enable_pag=` (each applied as a second lookup).
pub fn resolve_from_pipe(pipeline_class: &str, task: Task, modifiers: Modifiers) -> Result<Resolved> {
    let mut resolved = get_task_class(task, pipeline_class)?;
    let current = |r: &Resolved| r.pipeline_class;
    if let Some(controlnet) = modifiers.controlnet {
        let cls = current(&resolved);
        let renamed = match (task, controlnet) {
            (Task::Text2Image, ControlNet::Plain | ControlNet::Union) => {
                let to_replace = if cls.contains("PAG") {
                    "PAGPipeline"
                } else {
                    "Pipeline"
                };
                cls.replace("ControlNet", "")
                    .replace(to_replace, &format!("ControlNet{to_replace}"))
            }
            (Task::Image2Image, ControlNet::Plain | ControlNet::Union) => {
                let to_replace = if cls.contains("PAG") {
                    "PAGImg2ImgPipeline"
                } else {
                    "Img2ImgPipeline"
                };
                cls.replace("ControlNet", "")
                    .replace(to_replace, &format!("ControlNet{to_replace}"))
            }
            (Task::Inpaint, ControlNet::Plain | ControlNet::Union) => cls
                .replace("ControlNet", "")
                .replace("InpaintPipeline", "ControlNetInpaintPipeline"),
            (Task::Text2Image | Task::Image2Image, ControlNet::Removed) => cls.replace("ControlNet", ""),
            (Task::Inpaint, ControlNet::Removed) => {
                cls.replace("ControlNetInpaintPipeline", "InpaintPipeline")
            }
        };
        resolved = get_task_class(task, &renamed)?;
    }
    if let Some(enable_pag) = modifiers.enable_pag {
        let cls = current(&resolved);
        let renamed = match (task, enable_pag) {
            (Task::Text2Image, true) => cls.replace("PAG", "").replace("Pipeline", "PAGPipeline"),
            (Task::Image2Image, true) => cls
                .replace("PAG", "")
                .replace("Img2ImgPipeline", "PAGImg2ImgPipeline"),
            (Task::Inpaint, true) => cls
                .replace("PAG", "")
                .replace("InpaintPipeline", "PAGInpaintPipeline"),
            (Task::Text2Image | Task::Image2Image, false) => cls.replace("PAG", ""),
            (Task::Inpaint, false) => cls.replace("PAGInpaintPipeline", "InpaintPipeline"),
        };
        resolved = get_task_class(task, &renamed)?;
    }
    Ok(resolved)
}

/// diffusers' `_get_connected_pipeline`: for a decoder-only class (e.g. `KandinskyV22Pipeline`
/// from `kandinsky-2-2-decoder`), the combined pipeline diffusers loads instead.
pub fn connected_pipeline(pipeline_class: &str) -> Option<&'static str> {
    let pairs = [
        (
            AUTO_TEXT2IMAGE_DECODER_PIPELINES_MAPPING,
            AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
        ),
        (
            AUTO_IMAGE2IMAGE_DECODER_PIPELINES_MAPPING,
            AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        ),
        (
            AUTO_INPAINT_DECODER_PIPELINES_MAPPING,
            AUTO_INPAINT_PIPELINES_MAPPING,
        ),
    ];
    for (decoders, mapping) in pairs {
        if decoders.iter().any(|&(_, cls)| cls == pipeline_class) {
            let family = family_of_class(pipeline_class)?;
            return lookup(mapping, family);
        }
    }
    None
}

/// The diffusers family a pipeline class belongs to (`_get_model`): the first mapping entry, over
/// every AutoPipeline mapping in diffusers' order, whose class is `pipeline_class`.
pub fn family_of_class(pipeline_class: &str) -> Option<&'static str> {
    SUPPORTED_TASKS_MAPPINGS
        .iter()
        .flat_map(|(_, mapping)| mapping.iter())
        .find(|&&(_, cls)| cls == pipeline_class)
        .map(|&(family, _)| family)
}

/// One diffusers family with its class per task and our status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyRow {
    /// diffusers family name.
    pub name: &'static str,
    /// `AUTO_TEXT2IMAGE_PIPELINES_MAPPING[name]`.
    pub text2image: Option<&'static str>,
    /// `AUTO_IMAGE2IMAGE_PIPELINES_MAPPING[name]`.
    pub image2image: Option<&'static str>,
    /// `AUTO_INPAINT_PIPELINES_MAPPING[name]`.
    pub inpaint: Option<&'static str>,
    /// Entries in diffusers' other mappings (video, audio, decoder-only): `(mapping, class)`.
    pub other: Vec<(&'static str, &'static str)>,
    /// Our implementation, or `None` = not supported yet.
    pub family: Option<Family>,
}

impl FamilyRow {
    /// The pipeline class for `task`, if diffusers has one.
    pub fn class_for(&self, task: Task) -> Option<&'static str> {
        match task {
            Task::Text2Image => self.text2image,
            Task::Image2Image => self.image2image,
            Task::Inpaint => self.inpaint,
        }
    }
}

/// Every family in diffusers' AutoPipeline mappings, in order of first appearance (text2image
/// mapping first), with per-task classes and our status.
pub fn all_families() -> Vec<FamilyRow> {
    let mut rows: Vec<FamilyRow> = Vec::new();
    for (mapping_name, mapping) in SUPPORTED_TASKS_MAPPINGS {
        for &(family, cls) in *mapping {
            let index = match rows.iter().position(|r| r.name == family) {
                Some(i) => i,
                None => {
                    rows.push(FamilyRow {
                        name: family,
                        text2image: lookup(AUTO_TEXT2IMAGE_PIPELINES_MAPPING, family),
                        image2image: lookup(AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, family),
                        inpaint: lookup(AUTO_INPAINT_PIPELINES_MAPPING, family),
                        other: Vec::new(),
                        family: Family::from_name(family),
                    });
                    rows.len() - 1
                }
            };
            if !TASK_MAPPING_NAMES.contains(mapping_name) {
                rows[index].other.push((mapping_name, cls));
            }
        }
    }
    rows
}

/// What loading `source` for `task` will build, once every check diffusers makes before building
/// the pipeline has passed.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// The checkpoint's `model_index.json`.
    pub index: ModelIndex,
    /// The family and task pipeline class diffusers picks.
    pub resolved: Resolved,
    /// Our implementation of that family.
    pub family: Family,
}

/// Checks `source` for `task` in diffusers' order, so each failure has diffusers' category:
///
/// 1. `model_index.json`: missing → `NotFound`, malformed → `InvalidModel`;
/// 2. the class lookup ([`resolve`]) → `Unsupported` with diffusers' "can't find" text;
/// 3. with a `variant`, at least one component folder must hold files of that variant
///    (diffusers' `_identify_model_variants` check) → `NotFound`;
/// 4. for families diffusers has but we don't, diffusers would now fail loading a missing
///    component folder, so each non-null component's folder must exist (→ `NotFound` naming it);
///    only then is the family reported `Unsupported` as "known to diffusers but not supported by
///    autopipeline yet".
pub fn plan(source: &ModelSource, task: Task) -> Result<LoadPlan> {
    let index = source.model_index()?;
    let resolved = resolve(&index.class_name, task)?;
    source.check_variant(&index)?;
    match resolved.family {
        Some(family) => Ok(LoadPlan {
            index,
            resolved,
            family,
        }),
        None => {
            for component in &index.components {
                if !source.component_dir_exists(&component.name)? {
                    return Err(Error::NotFound(format!(
                        "{} has no folder for component '{}' ({} {}) listed in {}: expected {}",
                        source.display_name(),
                        component.name,
                        component.library,
                        component.class_name,
                        crate::model_index::MODEL_INDEX_FILE,
                        source.component_location(&component.name),
                    )));
                }
            }
            Err(Error::Unsupported(format!(
                "{} ({}) is known to diffusers but not supported by autopipeline yet; supported \
                 families: {}",
                resolved.family_name,
                resolved.pipeline_class,
                supported_families().join(", ")
            )))
        }
    }
}

/// `from_pretrained`'s class-name rewrite before the lookup.
fn from_pretrained_class_name(class_name: &str, task: Task, modifiers: Modifiers) -> String {
    let to_replace = match task {
        Task::Image2Image if class_name.contains("Img2Img") => "Img2ImgPipeline",
        Task::Inpaint if class_name.contains("Inpaint") => "InpaintPipeline",
        _ if class_name.contains("ControlPipeline") => "ControlPipeline",
        _ => "Pipeline",
    };
    let mut name = class_name.to_string();
    if let Some(controlnet) = modifiers.controlnet {
        // diffusers only checks for a `ControlNetUnionModel` instance; `None` counts as plain.
        let union = if controlnet == ControlNet::Union {
            "Union"
        } else {
            ""
        };
        let replacement = match task {
            Task::Text2Image => format!("ControlNet{union}Pipeline"),
            _ => format!("ControlNet{union}{to_replace}"),
        };
        name = name.replace(to_replace, &replacement);
    }
    if modifiers.enable_pag == Some(true) {
        let replacement = match task {
            Task::Text2Image => "PAGPipeline".to_string(),
            _ => format!("PAG{to_replace}"),
        };
        name = name.replace(to_replace, &replacement);
    }
    if to_replace == "ControlPipeline" {
        match task {
            Task::Text2Image => {}
            Task::Image2Image => name = name.replace(to_replace, "ControlImg2ImgPipeline"),
            Task::Inpaint => name = name.replace(to_replace, "ControlInpaintPipeline"),
        }
    }
    name
}

/// diffusers' `_get_task_class(mapping, pipeline_class_name)`.
fn get_task_class(task: Task, pipeline_class: &str) -> Result<Resolved> {
    let family = family_of_class(pipeline_class);
    if let Some(family) = family {
        if let Some(cls) = lookup(task.mapping(), family) {
            return Ok(Resolved {
                family_name: family,
                pipeline_class: cls,
                family: Family::from_name(family),
            });
        }
    }
    Err(Error::Unsupported(format!(
        "AutoPipeline can't find a pipeline linked to {pipeline_class} for {}. autopipeline supports \
         the families: {}",
        family.unwrap_or("None"),
        supported_families().join(", ")
    )))
}

/// `mapping.get(family)`.
fn lookup(mapping: &[(&'static str, &'static str)], family: &str) -> Option<&'static str> {
    mapping.iter().find(|&&(f, _)| f == family).map(|&(_, cls)| cls)
}

const TASK_MAPPING_NAMES: [&str; 3] = [
    "AUTO_TEXT2IMAGE_PIPELINES_MAPPING",
    "AUTO_IMAGE2IMAGE_PIPELINES_MAPPING",
    "AUTO_INPAINT_PIPELINES_MAPPING",
];

/// diffusers' `SUPPORTED_TASKS_MAPPINGS`, in its order (the family lookup scans all of them).
const SUPPORTED_TASKS_MAPPINGS: &[(&str, &[(&str, &str)])] = &[
    (
        "AUTO_TEXT2IMAGE_PIPELINES_MAPPING",
        AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    ),
    (
        "AUTO_IMAGE2IMAGE_PIPELINES_MAPPING",
        AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
    ),
    ("AUTO_INPAINT_PIPELINES_MAPPING", AUTO_INPAINT_PIPELINES_MAPPING),
    (
        "AUTO_TEXT2VIDEO_PIPELINES_MAPPING",
        AUTO_TEXT2VIDEO_PIPELINES_MAPPING,
    ),
    (
        "AUTO_CONDITION2VIDEO_PIPELINES_MAPPING",
        AUTO_CONDITION2VIDEO_PIPELINES_MAPPING,
    ),
    (
        "AUTO_IMAGE2VIDEO_PIPELINES_MAPPING",
        AUTO_IMAGE2VIDEO_PIPELINES_MAPPING,
    ),
    (
        "AUTO_VIDEO2VIDEO_PIPELINES_MAPPING",
        AUTO_VIDEO2VIDEO_PIPELINES_MAPPING,
    ),
    (
        "AUTO_TEXT2AUDIO_PIPELINES_MAPPING",
        AUTO_TEXT2AUDIO_PIPELINES_MAPPING,
    ),
    (
        "_AUTO_TEXT2IMAGE_DECODER_PIPELINES_MAPPING",
        AUTO_TEXT2IMAGE_DECODER_PIPELINES_MAPPING,
    ),
    (
        "_AUTO_IMAGE2IMAGE_DECODER_PIPELINES_MAPPING",
        AUTO_IMAGE2IMAGE_DECODER_PIPELINES_MAPPING,
    ),
    (
        "_AUTO_INPAINT_DECODER_PIPELINES_MAPPING",
        AUTO_INPAINT_DECODER_PIPELINES_MAPPING,
    ),
];

const AUTO_TEXT2IMAGE_PIPELINES_MAPPING: &[(&str, &str)] = &[
    ("stable-diffusion", "StableDiffusionPipeline"),
    ("stable-diffusion-xl", "StableDiffusionXLPipeline"),
    ("stable-diffusion-3", "StableDiffusion3Pipeline"),
    ("stable-diffusion-3-pag", "StableDiffusion3PAGPipeline"),
    ("if", "IFPipeline"),
    ("hunyuan", "HunyuanDiTPipeline"),
    ("hunyuan-pag", "HunyuanDiTPAGPipeline"),
    ("kandinsky", "KandinskyCombinedPipeline"),
    ("kandinsky22", "KandinskyV22CombinedPipeline"),
    ("kandinsky3", "Kandinsky3Pipeline"),
    ("stable-diffusion-controlnet", "StableDiffusionControlNetPipeline"),
    (
        "stable-diffusion-xl-controlnet",
        "StableDiffusionXLControlNetPipeline",
    ),
    (
        "stable-diffusion-xl-controlnet-union",
        "StableDiffusionXLControlNetUnionPipeline",
    ),
    (
        "stable-diffusion-3-controlnet",
        "StableDiffusion3ControlNetPipeline",
    ),
    ("wuerstchen", "WuerstchenCombinedPipeline"),
    ("cascade", "StableCascadeCombinedPipeline"),
    ("lcm", "LatentConsistencyModelPipeline"),
    ("pixart-alpha", "PixArtAlphaPipeline"),
    ("pixart-sigma", "PixArtSigmaPipeline"),
    ("sana", "SanaPipeline"),
    ("sana-pag", "SanaPAGPipeline"),
    ("stable-diffusion-pag", "StableDiffusionPAGPipeline"),
    (
        "stable-diffusion-controlnet-pag",
        "StableDiffusionControlNetPAGPipeline",
    ),
    ("stable-diffusion-xl-pag", "StableDiffusionXLPAGPipeline"),
    (
        "stable-diffusion-xl-controlnet-pag",
        "StableDiffusionXLControlNetPAGPipeline",
    ),
    ("pixart-sigma-pag", "PixArtSigmaPAGPipeline"),
    ("auraflow", "AuraFlowPipeline"),
    ("flux", "FluxPipeline"),
    ("flux-control", "FluxControlPipeline"),
    ("flux-controlnet", "FluxControlNetPipeline"),
    ("flux-kontext", "FluxKontextPipeline"),
    ("flux2-klein", "Flux2KleinPipeline"),
    ("flux2", "Flux2Pipeline"),
    ("ideogram4", "Ideogram4Pipeline"),
    ("krea2", "Krea2Pipeline"),
    ("lumina", "LuminaPipeline"),
    ("lumina2", "Lumina2Pipeline"),
    ("chroma", "ChromaPipeline"),
    ("cogview3", "CogView3PlusPipeline"),
    ("cogview4", "CogView4Pipeline"),
    ("glm_image", "GlmImagePipeline"),
    ("helios", "HeliosPipeline"),
    ("helios-pyramid", "HeliosPyramidPipeline"),
    ("cogview4-control", "CogView4ControlPipeline"),
    ("nucleusmoe-image", "NucleusMoEImagePipeline"),
    ("qwenimage", "QwenImagePipeline"),
    ("qwenimage-controlnet", "QwenImageControlNetPipeline"),
    ("z-image", "ZImagePipeline"),
    ("z-image-controlnet", "ZImageControlNetPipeline"),
    ("z-image-controlnet-inpaint", "ZImageControlNetInpaintPipeline"),
    ("z-image-omni", "ZImageOmniPipeline"),
    ("ovis", "OvisImagePipeline"),
    ("prx", "PRXPipeline"),
    // Added by diffusers when sentencepiece is installed.
    ("kolors", "KolorsPipeline"),
    ("kolors-pag", "KolorsPAGPipeline"),
];

const AUTO_IMAGE2IMAGE_PIPELINES_MAPPING: &[(&str, &str)] = &[
    ("stable-diffusion", "StableDiffusionImg2ImgPipeline"),
    ("stable-diffusion-xl", "StableDiffusionXLImg2ImgPipeline"),
    ("stable-diffusion-3", "StableDiffusion3Img2ImgPipeline"),
    ("stable-diffusion-3-pag", "StableDiffusion3PAGImg2ImgPipeline"),
    ("if", "IFImg2ImgPipeline"),
    ("kandinsky", "KandinskyImg2ImgCombinedPipeline"),
    ("kandinsky22", "KandinskyV22Img2ImgCombinedPipeline"),
    ("kandinsky3", "Kandinsky3Img2ImgPipeline"),
    (
        "stable-diffusion-controlnet",
        "StableDiffusionControlNetImg2ImgPipeline",
    ),
    ("stable-diffusion-pag", "StableDiffusionPAGImg2ImgPipeline"),
    (
        "stable-diffusion-xl-controlnet",
        "StableDiffusionXLControlNetImg2ImgPipeline",
    ),
    (
        "stable-diffusion-xl-controlnet-union",
        "StableDiffusionXLControlNetUnionImg2ImgPipeline",
    ),
    ("stable-diffusion-xl-pag", "StableDiffusionXLPAGImg2ImgPipeline"),
    (
        "stable-diffusion-xl-controlnet-pag",
        "StableDiffusionXLControlNetPAGImg2ImgPipeline",
    ),
    ("lcm", "LatentConsistencyModelImg2ImgPipeline"),
    ("flux", "FluxImg2ImgPipeline"),
    ("flux-controlnet", "FluxControlNetImg2ImgPipeline"),
    ("flux-control", "FluxControlImg2ImgPipeline"),
    ("flux-kontext", "FluxKontextPipeline"),
    ("flux2-klein", "Flux2KleinPipeline"),
    ("flux2", "Flux2Pipeline"),
    ("qwenimage", "QwenImageImg2ImgPipeline"),
    ("qwenimage-edit", "QwenImageEditPipeline"),
    ("qwenimage-edit-plus", "QwenImageEditPlusPipeline"),
    ("qwenimage-layered", "QwenImageLayeredPipeline"),
    ("z-image", "ZImageImg2ImgPipeline"),
    // Added by diffusers when sentencepiece is installed.
    ("kolors", "KolorsImg2ImgPipeline"),
];

const AUTO_INPAINT_PIPELINES_MAPPING: &[(&str, &str)] = &[
    ("stable-diffusion", "StableDiffusionInpaintPipeline"),
    ("stable-diffusion-xl", "StableDiffusionXLInpaintPipeline"),
    ("stable-diffusion-3", "StableDiffusion3InpaintPipeline"),
    ("if", "IFInpaintingPipeline"),
    ("kandinsky", "KandinskyInpaintCombinedPipeline"),
    ("kandinsky22", "KandinskyV22InpaintCombinedPipeline"),
    (
        "stable-diffusion-controlnet",
        "StableDiffusionControlNetInpaintPipeline",
    ),
    (
        "stable-diffusion-controlnet-pag",
        "StableDiffusionControlNetPAGInpaintPipeline",
    ),
    (
        "stable-diffusion-xl-controlnet",
        "StableDiffusionXLControlNetInpaintPipeline",
    ),
    (
        "stable-diffusion-xl-controlnet-union",
        "StableDiffusionXLControlNetUnionInpaintPipeline",
    ),
    (
        "stable-diffusion-3-controlnet",
        "StableDiffusion3ControlNetInpaintingPipeline",
    ),
    ("stable-diffusion-xl-pag", "StableDiffusionXLPAGInpaintPipeline"),
    ("flux", "FluxInpaintPipeline"),
    ("flux-controlnet", "FluxControlNetInpaintPipeline"),
    ("flux-control", "FluxControlInpaintPipeline"),
    ("stable-diffusion-pag", "StableDiffusionPAGInpaintPipeline"),
    ("qwenimage", "QwenImageInpaintPipeline"),
    ("qwenimage-edit", "QwenImageEditInpaintPipeline"),
    ("z-image", "ZImageInpaintPipeline"),
];

const AUTO_TEXT2VIDEO_PIPELINES_MAPPING: &[(&str, &str)] =
    &[("anyflow", "AnyFlowPipeline"), ("wan", "WanPipeline")];

const AUTO_CONDITION2VIDEO_PIPELINES_MAPPING: &[(&str, &str)] = &[("cosmos3-omni", "Cosmos3OmniPipeline")];

const AUTO_IMAGE2VIDEO_PIPELINES_MAPPING: &[(&str, &str)] = &[
    ("anyflow-far", "AnyFlowFARPipeline"),
    ("wan-i2v", "WanImageToVideoPipeline"),
];

const AUTO_VIDEO2VIDEO_PIPELINES_MAPPING: &[(&str, &str)] = &[
    ("anyflow-far", "AnyFlowFARPipeline"),
    ("wan", "WanVideoToVideoPipeline"),
];

const AUTO_TEXT2AUDIO_PIPELINES_MAPPING: &[(&str, &str)] = &[
    ("audioldm2", "AudioLDM2Pipeline"),
    ("stable-audio", "StableAudioPipeline"),
    ("stable-audio-3", "StableAudio3Pipeline"),
    ("longcat-audio-dit", "LongCatAudioDiTPipeline"),
];

const AUTO_TEXT2IMAGE_DECODER_PIPELINES_MAPPING: &[(&str, &str)] = &[
    ("kandinsky", "KandinskyPipeline"),
    ("kandinsky22", "KandinskyV22Pipeline"),
    ("wuerstchen", "WuerstchenDecoderPipeline"),
    ("cascade", "StableCascadeDecoderPipeline"),
];

const AUTO_IMAGE2IMAGE_DECODER_PIPELINES_MAPPING: &[(&str, &str)] = &[
    ("kandinsky", "KandinskyImg2ImgPipeline"),
    ("kandinsky22", "KandinskyV22Img2ImgPipeline"),
];

const AUTO_INPAINT_DECODER_PIPELINES_MAPPING: &[(&str, &str)] = &[
    ("kandinsky", "KandinskyInpaintPipeline"),
    ("kandinsky22", "KandinskyV22InpaintPipeline"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn class(class_name: &str, task: Task) -> &'static str {
        resolve(class_name, task).unwrap().pipeline_class
    }

    fn error(result: Result<Resolved>) -> String {
        match result {
            Err(Error::Unsupported(m)) => m,
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn our_families_resolve_from_any_of_their_classes() {
        for (cls, family) in [
            ("StableDiffusionPipeline", Family::StableDiffusion),
            ("StableDiffusionImg2ImgPipeline", Family::StableDiffusion),
            ("StableDiffusionInpaintPipeline", Family::StableDiffusion),
            ("StableDiffusionXLPipeline", Family::StableDiffusionXl),
            ("StableDiffusionXLImg2ImgPipeline", Family::StableDiffusionXl),
            ("StableDiffusionXLInpaintPipeline", Family::StableDiffusionXl),
        ] {
            for task in Task::ALL {
                let r = resolve(cls, task).unwrap();
                assert_eq!(r.family, Some(family), "{cls} {task:?}");
                assert_eq!(r.family_name, family.name());
            }
        }
        assert_eq!(
            class("StableDiffusionXLInpaintPipeline", Task::Image2Image),
            "StableDiffusionXLImg2ImgPipeline"
        );
        assert_eq!(
            class("StableDiffusionImg2ImgPipeline", Task::Inpaint),
            "StableDiffusionInpaintPipeline"
        );
    }

    #[test]
    fn diffusers_error_texts() {
        let m = error(resolve("ShapEImg2ImgPipeline", Task::Text2Image));
        assert!(m.starts_with("AutoPipeline can't find a pipeline linked to ShapEImg2ImgPipeline for None. "));
        assert!(m.ends_with("stable-diffusion, stable-diffusion-xl, stable-diffusion-3, lcm, flux"));
        let m = error(resolve("LatentConsistencyModelPipeline", Task::Inpaint));
        assert!(m.starts_with(
            "AutoPipeline can't find a pipeline linked to LatentConsistencyModelPipeline for lcm."
        ));
        // A video-only family is found by the scan over every mapping.
        let m = error(resolve("WanPipeline", Task::Text2Image));
        assert!(m.starts_with("AutoPipeline can't find a pipeline linked to WanPipeline for wan."));
        // from_pretrained renames *ControlPipeline before an img2img lookup.
        let m = error(resolve("CogView4ControlPipeline", Task::Image2Image));
        assert!(m.starts_with(
            "AutoPipeline can't find a pipeline linked to CogView4ControlImg2ImgPipeline for None."
        ));
        let m = error(resolve_from_pipe(
            "CogView4ControlPipeline",
            Task::Image2Image,
            Modifiers::default(),
        ));
        assert!(m.starts_with(
            "AutoPipeline can't find a pipeline linked to CogView4ControlPipeline for cogview4-control."
        ));
    }

    #[test]
    fn name_mangling_matches_diffusers() {
        assert_eq!(
            class("FluxControlPipeline", Task::Image2Image),
            "FluxControlImg2ImgPipeline"
        );
        assert_eq!(
            class("FluxControlPipeline", Task::Inpaint),
            "FluxControlInpaintPipeline"
        );
        assert_eq!(
            class("FluxControlPipeline", Task::Text2Image),
            "FluxControlPipeline"
        );
        assert_eq!(
            class("KandinskyV22Pipeline", Task::Text2Image),
            "KandinskyV22CombinedPipeline"
        );
        let cn = Modifiers {
            controlnet: Some(ControlNet::Plain),
            enable_pag: None,
        };
        let union = Modifiers {
            controlnet: Some(ControlNet::Union),
            enable_pag: None,
        };
        let pag = Modifiers {
            controlnet: None,
            enable_pag: Some(true),
        };
        let cn_pag = Modifiers {
            controlnet: Some(ControlNet::Plain),
            enable_pag: Some(true),
        };
        let with = |c: &str, t, m| resolve_with(c, t, m).unwrap().pipeline_class;
        assert_eq!(
            with("StableDiffusionPipeline", Task::Text2Image, cn),
            "StableDiffusionControlNetPipeline"
        );
        assert_eq!(
            with("StableDiffusionXLPipeline", Task::Image2Image, union),
            "StableDiffusionXLControlNetUnionImg2ImgPipeline"
        );
        assert_eq!(
            with("StableDiffusionXLPipeline", Task::Inpaint, pag),
            "StableDiffusionXLPAGInpaintPipeline"
        );
        assert_eq!(
            with("StableDiffusionPipeline", Task::Text2Image, cn_pag),
            "StableDiffusionControlNetPAGPipeline"
        );
        assert_eq!(
            with("StableDiffusionPipeline", Task::Inpaint, cn_pag),
            "StableDiffusionControlNetPAGInpaintPipeline"
        );
        assert_eq!(
            with("FluxControlPipeline", Task::Text2Image, cn),
            "FluxControlNetPipeline"
        );
        assert!(resolve_with("StableDiffusionPipeline", Task::Text2Image, pag)
            .unwrap()
            .family
            .is_none());
        let pipe = |c: &str, t, m| resolve_from_pipe(c, t, m).unwrap().pipeline_class;
        assert_eq!(
            pipe("StableDiffusionXLPAGPipeline", Task::Image2Image, cn),
            "StableDiffusionXLControlNetPAGImg2ImgPipeline"
        );
        let off = Modifiers {
            controlnet: Some(ControlNet::Removed),
            enable_pag: Some(false),
        };
        // diffusers' inpaint `controlnet=None` rename only matches `ControlNetInpaintPipeline`, so
        // the controlnet stays when PAG is on: the quirk is kept.
        assert_eq!(
            pipe("StableDiffusionControlNetPAGInpaintPipeline", Task::Inpaint, off),
            "StableDiffusionControlNetInpaintPipeline"
        );
        assert_eq!(
            pipe("StableDiffusionControlNetPipeline", Task::Text2Image, off),
            "StableDiffusionPipeline"
        );
    }

    #[test]
    fn family_table() {
        let rows = all_families();
        let names: Vec<_> = rows.iter().map(|r| r.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert_eq!(&names[..2], ["stable-diffusion", "stable-diffusion-xl"]);
        let supported: Vec<_> = rows
            .iter()
            .filter(|r| r.family.is_some())
            .map(|r| r.name)
            .collect();
        assert_eq!(supported, supported_families());
        let lcm = rows.iter().find(|r| r.name == "lcm").unwrap();
        assert_eq!(
            lcm.class_for(Task::Image2Image),
            Some("LatentConsistencyModelImg2ImgPipeline")
        );
        assert_eq!(lcm.inpaint, None);
        let k = rows.iter().find(|r| r.name == "kandinsky22").unwrap();
        assert!(k.other.contains(&(
            "_AUTO_TEXT2IMAGE_DECODER_PIPELINES_MAPPING",
            "KandinskyV22Pipeline"
        )));
        assert_eq!(
            connected_pipeline("KandinskyV22InpaintPipeline"),
            Some("KandinskyV22InpaintCombinedPipeline")
        );
        assert_eq!(connected_pipeline("StableDiffusionPipeline"), None);
        assert_eq!(Task::from_name("Inpainting"), Some(Task::Inpaint));
    }
}
