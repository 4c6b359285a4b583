"""Writes a checkpoint with the real Stable Diffusion 1.5 architecture and random weights.

The configs are the published ones of runwayml/stable-diffusion-v1-5 (unet/, vae/, text_encoder/,
scheduler/, model_index.json; the safety checker and feature extractor are left out). The tokenizer
is the full CLIP BPE vocabulary the tests already carry (tests/data/tokenizers/clip-full). Weights come
from diffusers/transformers' own initialisers under a fixed seed and are saved as safetensors, so the
files have exactly the layout and size (float32, ~4.3 GB) of the real checkpoint.

    python bench/make_checkpoint.py OUT_DIR
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


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def main() -> None:
    out = Path(sys.argv[1])
    done = out / ".complete"
    if done.exists():
        print(f"{out}: already generated")
        return
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "model_index.json", MODEL_INDEX)
    write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER)
    tok = out / "tokenizer"
    tok.mkdir(exist_ok=True)
    src = REPO / "tests" / "data" / "tokenizers" / "clip-full"
    for name in ["vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"]:
        shutil.copy(src / name, tok / name)

    torch.manual_seed(0)
    with torch.no_grad():
        UNet2DConditionModel(**{k: v for k, v in UNET.items() if not k.startswith("_")}).save_pretrained(
            out / "unet", safe_serialization=True
        )
        AutoencoderKL(**{k: v for k, v in VAE.items() if not k.startswith("_")}).save_pretrained(
            out / "vae", safe_serialization=True
        )
        cfg = CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER.items() if k not in ("_name_or_path", "architectures")})
        CLIPTextModel(cfg).save_pretrained(out / "text_encoder", safe_serialization=True)
    # The published file (saved by transformers 4) prefixes every key with `text_model.`; transformers
    # 5 drops it. Restore the published key names.
    from safetensors.torch import load_file, save_file

    te = out / "text_encoder" / "model.safetensors"
    tensors = load_file(te)
    if not any(k.startswith("text_model.") for k in tensors):
        save_file({f"text_model.{k}": v.contiguous() for k, v in tensors.items()}, te, metadata={"format": "pt"})
    # save_pretrained writes the configs with today's defaults filled in; keep the published ones.
    write_json(out / "unet" / "config.json", UNET)
    write_json(out / "vae" / "config.json", VAE)
    write_json(out / "text_encoder" / "config.json", TEXT_ENCODER)
    done.write_text("ok\n")
    print(f"{out}: written")


if __name__ == "__main__":
    main()
