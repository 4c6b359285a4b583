#!/usr/bin/env python3
"""References for tests/cli.rs `checkpoints_naming_each_scheduler_run_through_the_cli`: checkpoints whose
own scheduler_config.json names each scheduler class we port, as a user's fine-tune saved with
`pipe.scheduler = Cls.from_config(pipe.scheduler.config); pipe.save_pretrained(...)` would have it.

For sd15-tiny (text2img, img2img, inpaint) and sdxl-tiny (text2img, inpaint) and every class, it writes
the scheduler config diffusers saves (`<ckpt>/<Class>.json`) and diffusers 0.42.1's image from
`AutoPipelineFor<Task>.from_pretrained` of the checkpoint with that config (`<ckpt>/<Class>-<task>.png`).
Each task loads afresh: SD pipeline constructors patch outdated scheduler configs (clip_sample,
steps_offset, skip_prk_steps) on the scheduler object they are given. Not run by CI:

    /work/scratch/venv-torch/bin/python tests/data/hidden_schedulers/make.py
"""

import json
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import diffusers  # noqa: E402

torch.set_num_threads(2)
diffusers.utils.logging.disable_progress_bar()
HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)
CLASSES = [
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "UniPCMultistepScheduler", "LCMScheduler",
    "DEISMultistepScheduler", "TCDScheduler",
]
AUTO = {"text2img": diffusers.AutoPipelineForText2Image, "img2img": diffusers.AutoPipelineForImage2Image,
        "inpaint": diffusers.AutoPipelineForInpainting}
RUNS = {"sd15-tiny": ["text2img", "img2img", "inpaint"], "sdxl-tiny": ["text2img", "inpaint"]}
# The run every case uses (mirrored by tests/cli.rs).
PROMPT, NEGATIVE, SEED, STEPS, GUIDANCE, STRENGTH = "a red barn in a field", "blurry", 4, 4, 6.0, 0.75
IMAGE, MASK = "images/init_64x64.png", "images/mask_rect_64x64.png"


def main():
    for ckpt, tasks in RUNS.items():
        out = os.path.join(HERE, ckpt)
        os.makedirs(out, exist_ok=True)
        for cls_name in CLASSES:
            base = diffusers.AutoPipelineForText2Image.from_pretrained(os.path.join(DATA, "checkpoints", ckpt))
            sched = getattr(diffusers, cls_name).from_config(base.scheduler.config)
            with tempfile.TemporaryDirectory() as tmp:
                sched.save_config(tmp)
                config = json.load(open(os.path.join(tmp, "scheduler_config.json")))
            config.pop("_diffusers_version", None)
            with open(os.path.join(out, f"{cls_name}.json"), "w") as f:
                json.dump(config, f, indent=1)
            model = tempfile.mkdtemp()
            shutil.copytree(os.path.join(DATA, "checkpoints", ckpt), model, dirs_exist_ok=True)
            shutil.copy(os.path.join(out, f"{cls_name}.json"), os.path.join(model, "scheduler", "scheduler_config.json"))
            # save_pretrained records the class in model_index.json too; diffusers loads the class named there.
            index_path = os.path.join(model, "model_index.json")
            index = json.load(open(index_path))
            index["scheduler"] = ["diffusers", cls_name]
            json.dump(index, open(index_path, "w"), indent=1)
            for task in tasks:
                pipe = AUTO[task].from_pretrained(model)
                kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                          guidance_scale=GUIDANCE, output_type="np",
                          generator=torch.Generator("cpu").manual_seed(SEED))
                if task == "text2img":
                    kw.update(width=64, height=64)
                if task != "text2img":
                    kw.update(image=Image.open(os.path.join(DATA, IMAGE)).convert("RGB"), strength=STRENGTH)
                if task == "inpaint":
                    kw.update(mask_image=Image.open(os.path.join(DATA, MASK)))
                img = pipe(**kw).images[0]
                png = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
                Image.fromarray(png).save(os.path.join(out, f"{cls_name}-{task}.png"))
                print(ckpt, cls_name, task, flush=True)
            shutil.rmtree(model)
    meta = {"classes": CLASSES, "runs": RUNS, "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED,
            "steps": STEPS, "guidance": GUIDANCE, "strength": STRENGTH, "image": IMAGE, "mask": MASK,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__}}
    with open(os.path.join(HERE, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
