"""References for custom schedules: diffusers pipelines' `timesteps=` / `sigmas=` arguments (handed to the
scheduler by `retrieve_timesteps`), made with diffusers 0.42.1 on CPU on the sd15-tiny checkpoint with the
scheduler switched as `pipe.scheduler = Cls.from_config(pipe.scheduler.config)`. Writes cases in the format
of tests/data/cases, with the extra keys `scheduler`, `timesteps` and `sigmas`.

    venv/bin/python scripts/references/make_custom_schedules.py      # ~10 s
"""

import os

import diffusers
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image
from PIL import Image

from capture import DATA, dump_json, run_recorded, write_case

assert diffusers.__version__ == "0.42.1", diffusers.__version__

CKPT = "checkpoints/sd15-tiny"
AUTO = {"text2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image}

CASES = [
    # id, task, scheduler class, seed, kwargs
    ("sd15-t2i-custom-sigmas-euler", "text2img", "EulerDiscreteScheduler", 0,
     dict(prompt="a watercolor landscape", guidance_scale=7.5, sigmas=[14.0, 6.0, 2.5, 0.9, 0.2])),
    ("sd15-t2i-custom-timesteps-ddpm", "text2img", "DDPMScheduler", 1,
     dict(prompt="a red house", guidance_scale=1.0, timesteps=[999, 700, 400, 100])),
    ("sd15-t2i-custom-timesteps-dpm", "text2img", "DPMSolverMultistepScheduler", 2,
     dict(prompt="a small robot", guidance_scale=5.0, timesteps=[980, 800, 600, 350, 120])),
    ("sd15-i2i-custom-timesteps-euler", "img2img", "EulerDiscreteScheduler", 3,
     dict(prompt="an oil painting", guidance_scale=7.5, strength=0.6, timesteps=[900, 600, 300, 50],
          image="images/init_64x64.png")),
]


def main():
    ckpt = os.path.join(DATA, CKPT)
    for case_id, task, cls, seed, kw in CASES:
        pipe = AUTO[task].from_pretrained(ckpt)
        pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        call = dict(kw)
        if "image" in call:
            call["image"] = Image.open(os.path.join(DATA, call["image"])).convert("RGB")
        rec = run_recorded(pipe, call, seed)
        inputs = {"checkpoint": CKPT, "task": task, "prompt": kw["prompt"], "negative_prompt": None,
                  "prompt_2": None, "negative_prompt_2": None, "seed": seed,
                  "guidance_scale": kw.get("guidance_scale"), "strength": kw.get("strength"),
                  "width": None, "height": None, "image": kw.get("image"), "mask_image": None,
                  "num_inference_steps": None, "scheduler": cls, "timesteps": kw.get("timesteps"),
                  "sigmas": kw.get("sigmas"),
                  "load": {"route": "from_pretrained",
                           "call": f"{AUTO[task].__name__}.from_pretrained(checkpoint); "
                                   f"pipe.scheduler = {cls}.from_config(pipe.scheduler.config)"}}
        write_case(case_id, inputs, pipe, rec)
    # The checkpoint's own PNDM takes neither: diffusers' refusals, recorded.
    errors = {}
    pipe = AutoPipelineForText2Image.from_pretrained(ckpt)
    for what, kw in (("timesteps", dict(timesteps=[999, 500])), ("sigmas", dict(sigmas=[10.0, 1.0]))):
        try:
            pipe(prompt="x", output_type="np", **kw)
        except Exception as e:  # noqa: BLE001
            errors[f"pndm_{what}"] = {"type": type(e).__name__, "message": str(e)}
    dump_json(os.path.join(DATA, "custom_schedule_errors.json"), errors)
    print("  errors:", errors)


if __name__ == "__main__":
    main()
