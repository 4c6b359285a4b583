"""Writes a checkpoint with the real Stable Diffusion 1.5 (or SDXL base) architecture and random weights.

The configs are the published ones of runwayml/stable-diffusion-v1-5 (unet/, vae/, text_encoder/,
scheduler/, model_index.json; the safety checker and feature extractor are left out) and of
stabilityai/stable-diffusion-xl-base-1.0 (with text_encoder_2/, tokenizer_2/). The tokenizer is the
full CLIP BPE vocabulary the tests already carry (tests/data/tokenizers/clip-full). Weights come from
diffusers/transformers' own initialisers under a fixed seed and are saved as safetensors, so the files
have exactly the layout and size of the real checkpoint (float32: ~4.3 GB for SD 1.5; `--fp16` halves
it, `--device cuda` initialises on a GPU, which SDXL's 3.5 B parameters want).

    python bench/make_checkpoint.py OUT_DIR [--arch sd15|sdxl] [--fp16] [--device cpu|cuda]
"""

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

VAE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

TEXT_ENCODER = {
    "_name_or_path": "openai/clip-vit-large-patch14",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "transformers_version": "4.22.0.dev0",
    "vocab_size": 49408,
}

SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


SDXL_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.19.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

SDXL_VAE = dict(VAE, _diffusers_version="0.20.0.dev0", sample_size=1024, scaling_factor=0.13025, force_upcast=True)

SDXL_TEXT_ENCODER_2 = dict(
    TEXT_ENCODER,
    _name_or_path="laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
    architectures=["CLIPTextModelWithProjection"],
    hidden_act="gelu",
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    projection_dim=1280,
)

SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def copy_tokenizer(dst: Path, pad_token=None) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    src = REPO / "tests" / "data" / "tokenizers" / "clip-full"
    for name in ["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"]:
        shutil.copy(src / name, dst / name)
    if pad_token is not None:  # SDXL's second tokenizer (OpenCLIP) pads with "!"
        for name in ["special_tokens_map.json", "tokenizer_config.json"]:
            cfg = json.loads((dst / name).read_text())
            cfg["pad_token"] = pad_token
            write_json(dst / name, cfg)


def save_text_encoder(model, out: Path, config: dict) -> None:
    model.save_pretrained(out, safe_serialization=True)
    # The published files (saved by transformers 4) prefix the encoder's keys with `text_model.`;
    # transformers 5 drops it. Restore the published key names.
    from safetensors.torch import load_file, save_file

    te = out / "model.safetensors"
    tensors = load_file(te)
    if not any(k.startswith("text_model.") for k in tensors):
        renamed = {(k if k.startswith("text_projection.") else f"text_model.{k}"): v.contiguous()
                   for k, v in tensors.items()}
        save_file(renamed, te, metadata={"format": "pt"})
    # save_pretrained writes the config with today's defaults filled in; keep the published one.
    write_json(out / "config.json", config)


def main() -> None:
    args = sys.argv[1:]
    out = Path(args[0])
    arch = args[args.index("--arch") + 1] if "--arch" in args else "sd15"
    device = args[args.index("--device") + 1] if "--device" in args else "cpu"
    fp16 = "--fp16" in args
    done = out / ".complete"
    if done.exists():
        print(f"{out}: already generated")
        return
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sdxl = arch == "sdxl"
    unet_cfg, vae_cfg = (SDXL_UNET, SDXL_VAE) if sdxl else (UNET, VAE)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "model_index.json", SDXL_MODEL_INDEX if sdxl else MODEL_INDEX)
    write_json(out / "scheduler" / "scheduler_config.json", SDXL_SCHEDULER if sdxl else SCHEDULER)
    copy_tokenizer(out / "tokenizer")
    if sdxl:
        copy_tokenizer(out / "tokenizer_2", pad_token="!")

    def clean(cfg):
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    def text_config(cfg):
        return CLIPTextConfig(**{k: v for k, v in cfg.items() if k not in ("_name_or_path", "architectures")})

    dtype = torch.float16 if fp16 else torch.float32
    torch.manual_seed(0)
    with torch.no_grad(), torch.device(device):
        unet = UNet2DConditionModel(**clean(unet_cfg)).to(dtype)
        unet.save_pretrained(out / "unet", safe_serialization=True)
        del unet
        # The VAE stays float32 like the published fp32 weights (SDXL's overflows in fp16).
        AutoencoderKL(**clean(vae_cfg)).save_pretrained(out / "vae", safe_serialization=True)
        save_text_encoder(CLIPTextModel(text_config(TEXT_ENCODER)).to(dtype), out / "text_encoder", TEXT_ENCODER)
        if sdxl:
            te2 = CLIPTextModelWithProjection(text_config(SDXL_TEXT_ENCODER_2)).to(dtype)
            save_text_encoder(te2, out / "text_encoder_2", SDXL_TEXT_ENCODER_2)
    write_json(out / "unet" / "config.json", unet_cfg)
    write_json(out / "vae" / "config.json", vae_cfg)
    done.write_text("ok\n")
    print(f"{out}: written")


if __name__ == "__main__":
    main()
