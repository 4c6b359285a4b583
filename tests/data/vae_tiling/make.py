"""Reference outputs of diffusers' tiled VAE (AutoencoderKL.enable_tiling) for tests/vae_tiling.rs.

Uses the tiny SD 1.5 test VAE (sample_size 64, scale factor 2: tiles of 64 px / 32 latents, 25 %
overlap), at sizes that need 3 × 2 tiles. Run with the torch venv from the repository root:

    python tests/data/vae_tiling/make.py
"""

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

HERE = Path(__file__).resolve().parent
VAE = HERE.parent / "checkpoints" / "sd15-tiny" / "vae"

torch.manual_seed(0)
torch.set_grad_enabled(False)
vae = AutoencoderKL.from_pretrained(VAE).eval()
vae.enable_tiling()

z = torch.randn(1, 4, 56, 44, generator=torch.Generator().manual_seed(1))
image = torch.rand(1, 3, 112, 88, generator=torch.Generator().manual_seed(2)) * 2 - 1
decoded = vae.decode(z).sample
dist = vae.encode(image).latent_dist

for name, t in [
    ("decode_input", z),
    ("decode_tiled", decoded),
    ("encode_input", image),
    ("encode_tiled_mean", dist.mean),
    ("encode_tiled_std", dist.std),
]:
    np.save(HERE / f"{name}.npy", t.numpy().astype(np.float32))
print("tiles: latent", vae.tile_latent_min_size, "sample", vae.tile_sample_min_size, "->", decoded.shape)
