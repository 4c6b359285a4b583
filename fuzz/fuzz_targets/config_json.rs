//! Every JSON file a checkpoint hands us, parsed as each config type, then used the way loading and a
//! run use it: model_index → registry lookup; UNet/VAE/CLIP configs → value checks and derived
//! sizes; scheduler configs → construction, timesteps and a full stepping loop on a 1-pixel sample.
#![no_main]

use autopipeline::models::clip::ClipTextConfig;
use autopipeline::weights::load::parse_config;
use autopipeline::models::unet_config::UNetConfig;
use autopipeline::models::vae::VaeConfig;
use autopipeline::model_index::ModelIndex;
use autopipeline::registry::{self, Task};
use autopipeline::rng::TorchCpuGenerator;
use autopipeline::schedulers::{self, SchedulerConfig};
use candle_core::{Device, Tensor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(index) = ModelIndex::parse(text, std::path::Path::new("model_index.json")) {
        for task in Task::ALL {
            let _ = registry::resolve(&index.class_name, task);
        }
        let _ = index.config_bool("requires_safety_checker");
    }
    if let Ok(unet) = parse_config::<UNetConfig>(text, "unet/config.json") {
        if unet.check_values().is_ok() {
            let _ = unet.check_supported();
            let _ = unet.heads();
            let _ = unet.cross_attention_dim();
        }
    }
    if let Ok(vae) = parse_config::<VaeConfig>(text, "vae/config.json") {
        let _ = vae.scale_factor();
    }
    let _ = parse_config::<ClipTextConfig>(text, "text_encoder/config.json");
    if let Ok(config) = SchedulerConfig::from_json(text, "scheduler/scheduler_config.json") {
        run_scheduler(&config);
    }
});

/// Builds the scheduler and steps it through a few schedules, as a run would.
fn run_scheduler(config: &SchedulerConfig) {
    let Ok(mut scheduler) = schedulers::build(config) else {
        return;
    };
    let device = Device::Cpu;
    let sample = Tensor::ones((1, 1, 1, 1), candle_core::DType::F32, &device).unwrap();
    let noise = Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &device).unwrap();
    let mut rng = TorchCpuGenerator::new(0);
    for steps in [1, 2, 3, 25] {
        if scheduler.set_timesteps(steps).is_err() {
            continue;
        }
        let timesteps = scheduler.timesteps().to_vec();
        let (start, _) = schedulers::strength_start(steps, 0.5, scheduler.order());
        if let Some(&t) = timesteps.get(start) {
            let _ = scheduler.add_noise(&sample, &noise, t);
        }
        let _ = scheduler.init_noise_sigma();
        let mut x = sample.clone();
        for &t in &timesteps {
            let Ok(input) = scheduler.scale_model_input(&x, t) else {
                break;
            };
            match scheduler.step(&input, t, &x, &mut rng) {
                Ok(next) => x = next,
                Err(_) => break,
            }
        }
    }
}
