"""References for the `lcm` family (LatentConsistencyModelPipeline / ...Img2ImgPipeline), made with diffusers
0.42.1 on CPU: a tiny LCM checkpoint (the sd15-tiny text encoder, tokenizer and VAE, plus a random UNet with
`time_cond_proj_dim` and an LCMScheduler as LCM-distilled checkpoints ship it) and recorded runs in the case
format of tests/data/cases.

    venv/bin/python scripts/references/make_lcm.py      # ~10 s; rewrites what it made, nothing else
"""

import os
import shutil

import torch
from PIL import Image

import diffusers
from diffusers import (AutoencoderKL, AutoPipelineForImage2Image, AutoPipelineForInpainting,
                       AutoPipelineForText2Image, LatentConsistencyModelPipeline, LCMScheduler,
                       UNet2DConditionModel)
from transformers import CLIPTextModel, CLIPTokenizer

from capture import DATA, dump_json, run_recorded, write_case

assert diffusers.__version__ == "0.42.1", diffusers.__version__

CKPT = "checkpoints/lcm-tiny"
SD15 = os.path.join(DATA, "checkpoints", "sd15-tiny")


def build_checkpoint():
    out = os.path.join(DATA, CKPT)
    if os.path.exists(out):
        shutil.rmtree(out)
    unet_cfg = UNet2DConditionModel.load_config(os.path.join(SD15, "unet"))
    unet_cfg["time_cond_proj_dim"] = 16  # LCM-distilled UNets: the guidance-scale embedding's width
    torch.manual_seed(11)
    unet = UNet2DConditionModel.from_config(unet_cfg)
    # The scheduler config LCM-distilled SD 1.5 checkpoints (LCM_Dreamshaper_v7) ship.
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                             original_inference_steps=50, set_alpha_to_one=True, steps_offset=1,
                             clip_sample=False, timestep_scaling=10.0, prediction_type="epsilon")
    pipe = LatentConsistencyModelPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(SD15, "vae")),
        text_encoder=CLIPTextModel.from_pretrained(os.path.join(SD15, "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(SD15, "tokenizer")),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    print(f"  {CKPT}: {sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)} bytes")


AUTO = {"text2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
        "inpaint": AutoPipelineForInpainting}

CASES = [
    # id, task, from_pipe_of, seed, kwargs (None = the pipeline's default, not passed)
    ("lcm-t2i", "text2img", None, 0, dict(prompt="a watercolor landscape", num_inference_steps=4,
                                           guidance_scale=8.5)),
    ("lcm-t2i-defaults", "text2img", None, 5, dict(prompt="a red house by the sea")),
    ("lcm-t2i-w2-nonsquare", "text2img", None, 7, dict(prompt="a small robot", num_inference_steps=2,
                                                        guidance_scale=2.0, width=48, height=64)),
    ("lcm-i2i", "img2img", None, 1, dict(prompt="a watercolor landscape", num_inference_steps=4,
                                          image="images/init_64x64.png")),
    ("lcm-i2i-strength", "img2img", None, 3, dict(prompt="an oil painting", num_inference_steps=3,
                                                   guidance_scale=1.5, strength=0.5,
                                                   image="images/init_48x64.png")),
    ("lcm-i2i-frompipe", "img2img", "text2img", 2, dict(prompt="a watercolor landscape", num_inference_steps=2,
                                                         strength=0.9, image="images/init_64x64.png")),
]


def main():
    build_checkpoint()
    ckpt = os.path.join(DATA, CKPT)
    for case_id, task, of, seed, kw in CASES:
        if of is None:
            pipe = AUTO[task].from_pretrained(ckpt)
            load = {"route": "from_pretrained", "call": f"{AUTO[task].__name__}.from_pretrained(checkpoint)"}
        else:
            pipe = AUTO[task].from_pipe(AUTO[of].from_pretrained(ckpt))
            load = {"route": "from_pipe", "kwargs": {},
                    "call": f"{AUTO[task].__name__}.from_pipe({AUTO[of].__name__}.from_pretrained(checkpoint))"}
        pipe.set_progress_bar_config(disable=True)
        call = dict(kw)
        if "image" in call:
            call["image"] = Image.open(os.path.join(DATA, call["image"])).convert("RGB")
        rec = run_recorded(pipe, call, seed)
        inputs = {"checkpoint": CKPT, "task": task, "prompt": kw["prompt"], "negative_prompt": None,
                  "prompt_2": None, "negative_prompt_2": None, "seed": seed,
                  "guidance_scale": kw.get("guidance_scale"), "strength": kw.get("strength"),
                  "width": kw.get("width"), "height": kw.get("height"), "image": kw.get("image"),
                  "mask_image": None, "num_inference_steps": kw.get("num_inference_steps"), "load": load}
        write_case(case_id, inputs, pipe, rec)
    # AutoPipeline has no LCM inpainting pipeline: the exact error, from_pretrained and from_pipe.
    errors = {}
    try:
        AutoPipelineForInpainting.from_pretrained(ckpt)
    except Exception as e:  # noqa: BLE001
        errors["from_pretrained_inpaint"] = {"type": type(e).__name__, "message": str(e)}
    try:
        AutoPipelineForInpainting.from_pipe(AutoPipelineForText2Image.from_pretrained(ckpt))
    except Exception as e:  # noqa: BLE001
        errors["from_pipe_inpaint"] = {"type": type(e).__name__, "message": str(e)}
    dump_json(os.path.join(DATA, "lcm_errors.json"), errors)
    print("  errors:", errors)


if __name__ == "__main__":
    main()
