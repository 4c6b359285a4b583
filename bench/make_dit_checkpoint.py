"""Writes a checkpoint with a published diffusion-transformer architecture and random weights, for the GPU
benchmark (bench/gpu.py): FLUX.1-schnell (`flux-schnell`) or Stable Diffusion 3.5 Medium (`sd35m`), every
model at its published config (T5-XXL, CLIP-L, CLIP-G, the transformer, the 16-channel VAE), in bfloat16.
No hub: the tokenizers are the repository's (the full CLIP vocabulary of tests/data/tokenizers/clip-full and
the locally made T5 tokenizer of tests/data/checkpoints/flux-dev-tiny; T5-XXL's 32128-id table embeds their
ids). Needs torch, diffusers 0.42.1 and transformers; ~25 GB (FLUX) / ~16 GB (SD3.5 M) of disk.

    python bench/make_dit_checkpoint.py OUT_DIR --arch flux-schnell|sd35m [--device cuda] [--smoke]

Prepared for a lent GPU (issues #22 and #23); it has not run on one yet (`--smoke`, toy sizes, is checked on
the CPU: both pipelines load and run what it writes).
"""

import json
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from make_checkpoint import copy_tokenizer, save_text_encoder, write_json  # noqa: E402

T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
              bos_token_id=0, eos_token_id=2, pad_token_id=1)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
              bos_token_id=0, eos_token_id=2, pad_token_id=1)
VAE_16 = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
              layers_per_block=2, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, sample_size=1024,
              use_quant_conv=False, use_post_quant_conv=False)
ARCHS = {
    "flux-schnell": dict(
        pipeline="FluxPipeline",
        transformer=("FluxTransformer2DModel", dict(patch_size=1, in_channels=64, num_layers=19,
                                                    num_single_layers=38, attention_head_dim=128,
                                                    num_attention_heads=24, joint_attention_dim=4096,
                                                    pooled_projection_dim=768, guidance_embeds=False,
                                                    axes_dims_rope=[16, 56, 56])),
        vae=dict(VAE_16, scaling_factor=0.3611, shift_factor=0.1159),
        scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", base_image_seq_len=256, base_shift=0.5,
                       max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000, shift=1.0,
                       use_dynamic_shifting=False),
        encoders=[("text_encoder", "tokenizer", "CLIPTextModel", CLIP_L), ("text_encoder_2", "tokenizer_2", "T5", None)],
    ),
    "sd35m": dict(
        pipeline="StableDiffusion3Pipeline",
        transformer=("SD3Transformer2DModel", dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                                   attention_head_dim=64, num_attention_heads=24,
                                                   joint_attention_dim=4096, caption_projection_dim=1536,
                                                   pooled_projection_dim=2048, out_channels=16,
                                                   pos_embed_max_size=384, qk_norm="rms_norm",
                                                   dual_attention_layers=list(range(13)))),
        vae=dict(VAE_16, scaling_factor=1.5305, shift_factor=0.0609),
        scheduler=dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0),
        encoders=[("text_encoder", "tokenizer", "CLIPTextModelWithProjection", CLIP_L),
                  ("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", CLIP_G),
                  ("text_encoder_3", "tokenizer_3", "T5", None)],
    ),
}


def smoke(spec):
    """`--smoke`: the same layout at toy sizes (one or two blocks, narrow widths), to check this script and
    both pipelines on a CPU in seconds."""
    T5_XXL.update(d_model=64, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    for clip in (CLIP_L, CLIP_G):
        clip.update(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, projection_dim=32)
    VAE_16.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1, sample_size=64)
    name, cfg = spec["transformer"]
    if name == "FluxTransformer2DModel":
        cfg.update(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                   joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
    else:
        cfg.update(sample_size=32, num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                   caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=48,
                   dual_attention_layers=[0])
    for k in ("vae",):
        spec[k] = dict(spec[k], **VAE_16)


def main():
    out = Path(sys.argv[1])
    arch = sys.argv[sys.argv.index("--arch") + 1]
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    spec = ARCHS[arch]
    if "--smoke" in sys.argv:
        smoke(spec)
    import diffusers
    import transformers

    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(0)
    dtype = torch.bfloat16
    index = {"_class_name": spec["pipeline"], "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "transformer": ["diffusers", spec["transformer"][0]], "vae": ["diffusers", "AutoencoderKL"]}
    for enc, tok, cls, cfg in spec["encoders"]:
        if cls == "T5":
            model = transformers.T5EncoderModel(transformers.T5Config(**T5_XXL)).to(device, dtype)
            model.save_pretrained(out / enc, safe_serialization=True, max_shard_size="5GB")
            shutil.copytree(REPO / "tests/data/checkpoints/flux-dev-tiny/tokenizer_2", out / tok)
            index[enc], index[tok] = ["transformers", "T5EncoderModel"], ["transformers", "T5TokenizerFast"]
        else:
            config = dict(cfg, architectures=[cls], model_type="clip_text_model", torch_dtype="bfloat16")
            model_cls = getattr(transformers, cls)
            model = model_cls(transformers.CLIPTextConfig(**cfg)).to(device, dtype)
            save_text_encoder(model, out / enc, config)
            copy_tokenizer(out / tok, pad_token="!" if enc == "text_encoder_2" else None)
            index[enc], index[tok] = ["transformers", cls], ["transformers", "CLIPTokenizer"]
        del model
    name, cfg = spec["transformer"]
    with torch.device(device):
        model = getattr(diffusers, name)(**cfg).to(dtype)
    model.save_pretrained(out / "transformer", safe_serialization=True, max_shard_size="10GB")
    del model
    vae = diffusers.AutoencoderKL(**spec["vae"]).to(device, dtype)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    write_json(out / "scheduler" / "scheduler_config.json", spec["scheduler"])
    write_json(out / "model_index.json", index)
    print(f"{arch}: written to {out}")


if __name__ == "__main__":
    main()
