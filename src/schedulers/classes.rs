//! The one table of scheduler classes this build constructs and the short names users know for them;
//! `SUPPORTED`, `build`, name resolution, custom-schedule messages and the flow / non-flow split all
//! derive from it (config keys and defaults per class live in `select.rs`, checked against this table).

use super::{
    DdimScheduler, DdpmScheduler, DeisMultistepScheduler, DpmSolverMultistepScheduler,
    DpmSolverSinglestepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, HeunDiscreteScheduler,
    Kdpm2AncestralDiscreteScheduler, Kdpm2DiscreteScheduler, LcmScheduler, LmsDiscreteScheduler,
    PndmScheduler, Scheduler, SchedulerConfig, TcdScheduler, UniPcMultistepScheduler,
};
use crate::error::Result;

/// One scheduler class.
pub(crate) struct Class {
    /// diffusers' class name (`_class_name` in a config).
    pub name: &'static str,
    /// diffusers' module under `diffusers.schedulers`, for messages that quote the Python class.
    pub module: &'static str,
    /// Flow-matching (velocity-predicting models such as SD3 and FLUX) rather than diffusion (noise /
    /// v-predicting UNets): a model trained for one cannot be sampled with the other.
    pub flow: bool,
    pub build: fn(&SchedulerConfig) -> Result<Box<dyn Scheduler>>,
}

macro_rules! class {
    ($name:literal, $module:literal, $flow:literal, $ty:ty) => {
        Class {
            name: $name,
            module: $module,
            flow: $flow,
            build: |c| Ok(Box::new(<$ty>::new(c)?)),
        }
    };
}

/// Every class, in the order messages list them.
pub(crate) const CLASSES: &[Class] = &[
    class!("DDPMScheduler", "scheduling_ddpm", false, DdpmScheduler),
    class!("DDIMScheduler", "scheduling_ddim", false, DdimScheduler),
    class!("PNDMScheduler", "scheduling_pndm", false, PndmScheduler),
    class!(
        "EulerDiscreteScheduler",
        "scheduling_euler_discrete",
        false,
        EulerDiscreteScheduler
    ),
    class!(
        "EulerAncestralDiscreteScheduler",
        "scheduling_euler_ancestral_discrete",
        false,
        EulerAncestralDiscreteScheduler
    ),
    class!(
        "DPMSolverMultistepScheduler",
        "scheduling_dpmsolver_multistep",
        false,
        DpmSolverMultistepScheduler
    ),
    class!(
        "DPMSolverSinglestepScheduler",
        "scheduling_dpmsolver_singlestep",
        false,
        DpmSolverSinglestepScheduler
    ),
    class!(
        "DEISMultistepScheduler",
        "scheduling_deis_multistep",
        false,
        DeisMultistepScheduler
    ),
    class!(
        "LMSDiscreteScheduler",
        "scheduling_lms_discrete",
        false,
        LmsDiscreteScheduler
    ),
    class!(
        "HeunDiscreteScheduler",
        "scheduling_heun_discrete",
        false,
        HeunDiscreteScheduler
    ),
    class!(
        "KDPM2DiscreteScheduler",
        "scheduling_k_dpm_2_discrete",
        false,
        Kdpm2DiscreteScheduler
    ),
    class!(
        "KDPM2AncestralDiscreteScheduler",
        "scheduling_k_dpm_2_ancestral_discrete",
        false,
        Kdpm2AncestralDiscreteScheduler
    ),
    class!(
        "UniPCMultistepScheduler",
        "scheduling_unipc_multistep",
        false,
        UniPcMultistepScheduler
    ),
    class!("LCMScheduler", "scheduling_lcm", false, LcmScheduler),
    class!("TCDScheduler", "scheduling_tcd", false, TcdScheduler),
    class!(
        "FlowMatchEulerDiscreteScheduler",
        "scheduling_flow_match_euler_discrete",
        true,
        FlowMatchEulerDiscreteScheduler
    ),
    class!(
        "FlowMatchHeunDiscreteScheduler",
        "scheduling_flow_match_heun_discrete",
        true,
        FlowMatchHeunDiscreteScheduler
    ),
];

const NAMES: [&str; CLASSES.len()] = {
    let mut out = [""; CLASSES.len()];
    let mut i = 0;
    while i < CLASSES.len() {
        out[i] = CLASSES[i].name;
        i += 1;
    }
    out
};

/// Scheduler classes this build can construct (diffusers class names), from the class table (`classes.rs`).
pub const SUPPORTED: &[&str] = &NAMES;

/// The table entry of `name` (exact diffusers spelling).
pub(crate) fn class(name: &str) -> Option<&'static Class> {
    CLASSES.iter().find(|c| c.name == name)
}

/// diffusers' module of `name`, e.g. `scheduling_pndm`.
pub(crate) fn module_of(name: &str) -> Option<&'static str> {
    class(name).map(|c| c.module)
}

/// A short name users know → (diffusers class, config overrides as JSON).
pub const ALIASES: &[(&str, &str, &str)] = &[
    ("ddim", "DDIMScheduler", "{}"),
    ("ddpm", "DDPMScheduler", "{}"),
    ("pndm", "PNDMScheduler", "{}"),
    ("plms", "PNDMScheduler", r#"{"skip_prk_steps": true}"#),
    ("euler", "EulerDiscreteScheduler", "{}"),
    (
        "euler_karras",
        "EulerDiscreteScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    ("euler_a", "EulerAncestralDiscreteScheduler", "{}"),
    ("lms", "LMSDiscreteScheduler", "{}"),
    (
        "lms_karras",
        "LMSDiscreteScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    ("heun", "HeunDiscreteScheduler", "{}"),
    (
        "heun_karras",
        "HeunDiscreteScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    ("dpm++2m", "DPMSolverMultistepScheduler", "{}"),
    (
        "dpm++2m_karras",
        "DPMSolverMultistepScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    (
        "dpm++2m_sde",
        "DPMSolverMultistepScheduler",
        r#"{"algorithm_type": "sde-dpmsolver++"}"#,
    ),
    (
        "dpm++2m_sde_karras",
        "DPMSolverMultistepScheduler",
        r#"{"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": true}"#,
    ),
    ("dpm++3m", "DPMSolverMultistepScheduler", r#"{"solver_order": 3}"#),
    (
        "dpm++3m_karras",
        "DPMSolverMultistepScheduler",
        r#"{"solver_order": 3, "use_karras_sigmas": true}"#,
    ),
    // diffusers' stand-in for A1111's "DPM++ 2S a" / "DPM++ SDE" samplers (deterministic unless SDE).
    ("dpm++2s", "DPMSolverSinglestepScheduler", "{}"),
    (
        "dpm++2s_karras",
        "DPMSolverSinglestepScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    (
        "dpm++2s_sde",
        "DPMSolverSinglestepScheduler",
        r#"{"algorithm_type": "sde-dpmsolver++"}"#,
    ),
    (
        "dpm++2s_sde_karras",
        "DPMSolverSinglestepScheduler",
        r#"{"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": true}"#,
    ),
    (
        "dpm++3s",
        "DPMSolverSinglestepScheduler",
        r#"{"solver_order": 3}"#,
    ),
    (
        "dpm++3s_karras",
        "DPMSolverSinglestepScheduler",
        r#"{"solver_order": 3, "use_karras_sigmas": true}"#,
    ),
    ("deis", "DEISMultistepScheduler", "{}"),
    (
        "deis_karras",
        "DEISMultistepScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    ("dpm2", "KDPM2DiscreteScheduler", "{}"),
    (
        "dpm2_karras",
        "KDPM2DiscreteScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    ("dpm2_a", "KDPM2AncestralDiscreteScheduler", "{}"),
    (
        "dpm2_a_karras",
        "KDPM2AncestralDiscreteScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    ("kdpm2", "KDPM2DiscreteScheduler", "{}"),
    (
        "kdpm2_karras",
        "KDPM2DiscreteScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    ("kdpm2_a", "KDPM2AncestralDiscreteScheduler", "{}"),
    (
        "kdpm2_a_karras",
        "KDPM2AncestralDiscreteScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    ("unipc", "UniPCMultistepScheduler", "{}"),
    (
        "unipc_karras",
        "UniPCMultistepScheduler",
        r#"{"use_karras_sigmas": true}"#,
    ),
    ("lcm", "LCMScheduler", "{}"),
    ("tcd", "TCDScheduler", "{}"),
    // Flow-matching models (SD3, FLUX): their own Euler and Heun samplers.
    ("flow_euler", "FlowMatchEulerDiscreteScheduler", "{}"),
    ("flow_heun", "FlowMatchHeunDiscreteScheduler", "{}"),
];
