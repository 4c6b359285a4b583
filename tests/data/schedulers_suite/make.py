#!/usr/bin/env python3
"""Reference data for tests/scheduler_suite.rs: every scheduler class we port, run by the real diffusers.

Not run by CI. Regenerate with the venv the fixtures used (torch 2.15.0, diffusers 0.42.1, numpy 2.4.6,
scipy for LMSDiscreteScheduler) from the repository root:

    /work/scratch/venv-torch/bin/python tests/data/schedulers_suite/make.py

Each case builds its scheduler the way a user switches schedulers on a loaded pipeline,
`Cls.from_config(base.config, **overrides)`, where `base` is the scheduler a tiny checkpoint in
tests/data/checkpoints loads with (SD1.5's PNDM, SD2's v-prediction DDIM, SDXL's Euler). It records:
- `set_timesteps(n)`: timesteps, sigmas (if the class has them), init_noise_sigma, order;
- img2img truncation: StableDiffusionImg2ImgPipeline.get_timesteps (timesteps, begin index, steps left);
- two trajectories with fixed fake model outputs on a [1, 4, 4, 4] latent, the step generator seeded:
  "t2i" runs the whole schedule like a text-to-image pipeline (no begin index); "i2i" starts like
  img2img/inpaint (strength 0.6, `set_begin_index`, `add_noise` of a clean latent at the first timestep)
  and after each step records `add_noise(clean, noise, timesteps[i + 1])` as 4-channel inpainting does.
  All arrays of a case are rows of one float32 .npy (the JSON gives each row's meaning).
- end-to-end runs of tests/data/checkpoints/sd15-tiny and sdxl-tiny with a few schedulers (`e2e/`), output_type
  'np'.
- `class_keys.json`: each class's `__init__` keys and defaults (the tables in src/schedulers/select.rs).
"""

import inspect
import json
import math
import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import diffusers  # noqa: E402
from diffusers import StableDiffusionImg2ImgPipeline  # noqa: E402

torch.set_num_threads(2)
diffusers.utils.logging.disable_progress_bar()

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)  # tests/data
CKPTS = {"sd15": "checkpoints/sd15-tiny", "sd2": "checkpoints/sd2-tiny", "sdxl": "checkpoints/sdxl-tiny"}
SHAPE = (1, 4, 4, 4)

CLASSES = [
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "UniPCMultistepScheduler", "LCMScheduler",
    "DEISMultistepScheduler", "TCDScheduler",
]

K = {"use_karras_sigmas": True}
E = {"use_exponential_sigmas": True}
SDE = {"algorithm_type": "sde-dpmsolver++"}
V = {"prediction_type": "v_prediction"}
TR = {"timestep_spacing": "trailing"}
LS = {"timestep_spacing": "linspace"}
LD = {"timestep_spacing": "leading"}
ZSNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}

# (name, base checkpoint, class, overrides)
CASES = [
    ("dpmpp2m", "sd15", "DPMSolverMultistepScheduler", {}),
    ("dpmpp2m-karras", "sd15", "DPMSolverMultistepScheduler", K),
    ("dpmpp2m-sde", "sd15", "DPMSolverMultistepScheduler", SDE),
    ("dpmpp2m-sde-karras", "sd15", "DPMSolverMultistepScheduler", {**SDE, **K}),
    ("dpmpp3m", "sd15", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("dpmpp1", "sd15", "DPMSolverMultistepScheduler", {"solver_order": 1, **LS}),
    ("dpmpp2m-heun-sigmamin", "sd15", "DPMSolverMultistepScheduler",
     {"solver_type": "heun", "final_sigmas_type": "sigma_min", "lower_order_final": False}),
    ("dpmpp3m-sde-nolof", "sd15", "DPMSolverMultistepScheduler",
     {"solver_order": 3, **SDE, "lower_order_final": False, "final_sigmas_type": "sigma_min"}),
    ("dpmpp2m-exp", "sd15", "DPMSolverMultistepScheduler", E),
    ("dpmpp2m-vpred-trailing", "sd2", "DPMSolverMultistepScheduler", TR),
    ("dpmpp2m-euler-final", "sdxl", "DPMSolverMultistepScheduler", {"euler_at_final": True, **LS}),
    ("dpmpp2m-zsnr", "sd15", "DPMSolverMultistepScheduler", ZSNR),
    ("dpm2m-legacy", "sd15", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    ("euler-a", "sd15", "EulerAncestralDiscreteScheduler", {}),
    ("euler-a-linspace-vpred", "sd2", "EulerAncestralDiscreteScheduler", LS),
    ("euler-a-trailing-cos", "sd15", "EulerAncestralDiscreteScheduler", {**TR, "beta_schedule": "squaredcos_cap_v2"}),
    ("euler-karras", "sdxl", "EulerDiscreteScheduler", K),
    ("euler-exp-linspace", "sd15", "EulerDiscreteScheduler", {**E, **LS}),
    ("euler-trailing-vpred", "sd2", "EulerDiscreteScheduler", {**TR, "final_sigmas_type": "sigma_min"}),
    ("ddpm", "sd15", "DDPMScheduler", {}),
    ("ddpm-vpred-trailing", "sd2", "DDPMScheduler", TR),
    ("ddpm-smalllog-linspace", "sd15", "DDPMScheduler", {"variance_type": "fixed_small_log", **LS}),
    ("ddpm-large-clip", "sd15", "DDPMScheduler", {"variance_type": "fixed_large", "clip_sample": True}),
    ("ddim-from-pndm", "sd15", "DDIMScheduler", {}),
    ("ddim-trailing-zsnr", "sd15", "DDIMScheduler", ZSNR),
    ("pndm-plms-linspace", "sd2", "PNDMScheduler", {"skip_prk_steps": True, **LS}),
    ("pndm-prk", "sd15", "PNDMScheduler", {"skip_prk_steps": False}),
    ("lms", "sd15", "LMSDiscreteScheduler", {}),
    ("lms-karras", "sd15", "LMSDiscreteScheduler", K),
    ("lms-vpred-leading", "sd2", "LMSDiscreteScheduler", LD),
    ("heun", "sd15", "HeunDiscreteScheduler", {}),
    ("heun-karras", "sd15", "HeunDiscreteScheduler", K),
    ("heun-vpred-trailing", "sd2", "HeunDiscreteScheduler", TR),
    ("kdpm2", "sd15", "KDPM2DiscreteScheduler", {}),
    ("kdpm2-karras-vpred", "sd2", "KDPM2DiscreteScheduler", K),
    ("kdpm2-a", "sd15", "KDPM2AncestralDiscreteScheduler", {}),
    ("kdpm2-a-karras-leading", "sd15", "KDPM2AncestralDiscreteScheduler", {**K, **LD}),
    ("unipc", "sd15", "UniPCMultistepScheduler", {}),
    ("unipc-karras", "sd15", "UniPCMultistepScheduler", K),
    ("unipc-order3-bh1", "sd15", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1"}),
    ("unipc-vpred-trailing-noncorr", "sd2", "UniPCMultistepScheduler", {**TR, "disable_corrector": [0, 2]}),
    ("unipc-noisepred-sigmamin", "sd15", "UniPCMultistepScheduler",
     {"predict_x0": False, "final_sigmas_type": "sigma_min", "lower_order_final": False}),
    ("lcm", "sd15", "LCMScheduler", {}),
    ("lcm-trailing-vpred", "sd2", "LCMScheduler", TR),
    ("dpmpp2s", "sd15", "DPMSolverSinglestepScheduler", {}),
    ("dpmpp2s-karras", "sd15", "DPMSolverSinglestepScheduler", K),
    ("dpmpp3s", "sd15", "DPMSolverSinglestepScheduler", {"solver_order": 3, "lower_order_final": True}),
    ("dpmpp2s-sde-vpred", "sd2", "DPMSolverSinglestepScheduler", SDE),
    ("deis", "sd15", "DEISMultistepScheduler", {}),
    ("deis-karras-order3", "sd15", "DEISMultistepScheduler", {**K, "solver_order": 3}),
    ("deis-vpred", "sd2", "DEISMultistepScheduler", {}),
    ("tcd", "sd15", "TCDScheduler", {}),
    ("tcd-vpred", "sd2", "TCDScheduler", {}),
]

N_LIST = (1, 2, 3, 4, 5, 7, 10, 25)
I2I = ((5, 0.6), (4, 0.5), (10, 0.3), (7, 1.0), (3, 0.75))
TRAJ_STEPS = 6


def jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (tuple, list)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, np.floating):
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "-Infinity" if v < 0 else ("Infinity" if v > 0 else "NaN")
    if isinstance(v, np.integer):
        return int(v)
    return v


def base_scheduler(ckpt):
    path = os.path.join(DATA, CKPTS[ckpt], "scheduler", "scheduler_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cls = getattr(diffusers, cfg["_class_name"])
    return cls.from_config(cfg)


def make(ckpt, cls_name, overrides):
    return getattr(diffusers, cls_name).from_config(base_scheduler(ckpt).config, **overrides)


def step_kwargs(sched, gen):
    # What StableDiffusionPipeline.prepare_extra_step_kwargs passes (eta = 0.0, its default).
    params = inspect.signature(sched.step).parameters
    kw = {}
    if "eta" in params:
        kw["eta"] = 0.0
    if "generator" in params:
        kw["generator"] = gen
    return kw


def randn(seed):
    return torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(seed))


def trajectory(ckpt, cls_name, overrides, kind, rows):
    """Appends this trajectory's arrays to `rows` and returns its description."""
    sched = make(ckpt, cls_name, overrides)
    sched.set_timesteps(TRAJ_STEPS)
    gen = torch.Generator("cpu").manual_seed(5)
    out = {"x_init": len(rows), "steps": []}
    clean, noise = randn(7), randn(8)
    if kind == "t2i":
        x = randn(123) * sched.init_noise_sigma
        ts = sched.timesteps
    else:
        ns = types.SimpleNamespace(scheduler=sched)
        ts, _ = StableDiffusionImg2ImgPipeline.get_timesteps(ns, TRAJ_STEPS, 0.6, "cpu")
        out["begin_index"] = getattr(sched, "begin_index", None)
        out["clean"], out["noise"] = len(rows) + 1, len(rows) + 2
        x = sched.add_noise(clean, noise, ts[:1])
    rows.append(x)
    if kind != "t2i":
        rows.extend([clean, noise])
    out["timesteps"] = [float(t) for t in ts]
    for i, t in enumerate(ts):
        xin = sched.scale_model_input(x, t)
        eps = randn(1000 + i) * 0.8 + 0.1 * xin
        x = sched.step(eps, t, x, return_dict=False, **step_kwargs(sched, gen))[0]
        s = {"scaled": len(rows), "model_output": len(rows) + 1, "prev": len(rows) + 2}
        rows.extend([xin, eps, x])
        if kind != "t2i" and i + 1 < len(ts):
            s["add_noise_next"] = len(rows)
            rows.append(sched.add_noise(clean, noise, ts[i + 1: i + 2]))
        out["steps"].append(s)
    return out


def scheduler_case(name, ckpt, cls_name, overrides):
    sched = make(ckpt, cls_name, overrides)
    res = {"name": name, "base": CKPTS[ckpt], "class": cls_name, "overrides": overrides,
           "config": jsonable({k: v for k, v in dict(sched.config).items() if not k.startswith("_")}),
           "order": sched.order, "set_timesteps": {}, "img2img": []}
    for n in N_LIST:
        s = make(ckpt, cls_name, overrides)
        try:
            s.set_timesteps(n)
        except Exception as err:  # e.g. PNDM's Runge-Kutta warm-up needs n >= 4
            res["set_timesteps"][str(n)] = {"error": f"{type(err).__name__}: {err}"}
            continue
        e = {"timesteps": jsonable(s.timesteps), "init_noise_sigma": float(s.init_noise_sigma)}
        if getattr(s, "sigmas", None) is not None:
            e["sigmas"] = jsonable(s.sigmas)
        res["set_timesteps"][str(n)] = e
    for n, strength in I2I:
        s = make(ckpt, cls_name, overrides)
        try:
            s.set_timesteps(n)
        except Exception:
            continue
        ns = types.SimpleNamespace(scheduler=s)
        ts, n_eff = StableDiffusionImg2ImgPipeline.get_timesteps(ns, n, strength, "cpu")
        res["img2img"].append({"num_inference_steps": n, "strength": strength, "timesteps": jsonable(ts),
                               "effective_steps": n_eff, "begin_index": getattr(s, "begin_index", None)})
    rows = []
    res["trajectories"] = {k: trajectory(ckpt, cls_name, overrides, k, rows) for k in ("t2i", "i2i")}
    arr = torch.stack(rows).numpy().astype("<f4")
    res["arrays"] = f"{name}.npy"
    np.save(os.path.join(HERE, "cases", f"{name}.npy"), arr, allow_pickle=False)
    with open(os.path.join(HERE, "cases", f"{name}.json"), "w") as f:
        json.dump(res, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"  {name}: {arr.shape[0]} rows", flush=True)


# End-to-end runs on the tiny checkpoints: (id, checkpoint, task, scheduler class, overrides, steps, extra call
# kwargs). Text-to-image runs are 32x32 on sd15 and 64x64 on sdxl; the others start from a 64x64 image.
E2E = [
    ("t2i-dpmpp2m-karras", "sd15", "text2img", "DPMSolverMultistepScheduler", K, 6, {}),
    ("t2i-dpmpp2m-sde-karras", "sd15", "text2img", "DPMSolverMultistepScheduler", {**SDE, **K}, 5, {}),
    ("t2i-euler-a", "sd15", "text2img", "EulerAncestralDiscreteScheduler", {}, 5, {}),
    ("t2i-heun", "sd15", "text2img", "HeunDiscreteScheduler", {}, 4, {}),
    ("t2i-unipc", "sd15", "text2img", "UniPCMultistepScheduler", {}, 5, {}),
    ("t2i-lcm", "sd15", "text2img", "LCMScheduler", {}, 4, {"guidance_scale": 1.0}),
    ("t2i-ddpm", "sd15", "text2img", "DDPMScheduler", {}, 4, {}),
    ("t2i-kdpm2-a", "sd15", "text2img", "KDPM2AncestralDiscreteScheduler", {}, 4, {}),
    ("i2i-heun", "sd15", "img2img", "HeunDiscreteScheduler", {}, 5, {"strength": 0.6}),
    ("i2i-dpmpp2m-sde", "sd15", "img2img", "DPMSolverMultistepScheduler", SDE, 6, {"strength": 0.5}),
    ("inp-kdpm2", "sd15", "inpaint", "KDPM2DiscreteScheduler", {}, 4, {"strength": 0.75}),
    ("inp-euler-a", "sd15", "inpaint", "EulerAncestralDiscreteScheduler", {}, 4, {}),
    ("inp-dpmpp2m-karras", "sd15", "inpaint", "DPMSolverMultistepScheduler", K, 5, {"strength": 0.8}),
    ("t2i-dpmpp2s", "sd15", "text2img", "DPMSolverSinglestepScheduler", {}, 6, {}),
    ("t2i-dpmpp2s-sde-karras", "sd15", "text2img", "DPMSolverSinglestepScheduler", {**SDE, **K}, 5, {}),
    ("t2i-deis", "sd15", "text2img", "DEISMultistepScheduler", {}, 5, {}),
    ("i2i-dpmpp3s", "sd15", "img2img", "DPMSolverSinglestepScheduler", {"solver_order": 3}, 7, {"strength": 0.6}),
    ("i2i-deis-karras", "sd15", "img2img", "DEISMultistepScheduler", {**K, "solver_order": 3}, 6, {"strength": 0.7}),
    ("sdxl-t2i-dpmpp2m-karras", "sdxl", "text2img", "DPMSolverMultistepScheduler", K, 5, {}),
    ("sdxl-t2i-euler-a", "sdxl", "text2img", "EulerAncestralDiscreteScheduler", {}, 4, {}),
    ("sdxl-i2i-dpmpp2m-karras", "sdxl", "img2img", "DPMSolverMultistepScheduler", K, 5, {"strength": 0.6}),
    ("sdxl-i2i-euler-a", "sdxl", "img2img", "EulerAncestralDiscreteScheduler", {}, 5, {"strength": 0.7}),
]
T2I_SIZE = {"sd15": 32, "sdxl": 64}


def e2e():
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    auto = {"text2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
            "inpaint": AutoPipelineForInpainting}
    out = []
    for cid, base, task, cls_name, overrides, steps, extra in E2E:
        pipe = auto[task].from_pretrained(os.path.join(DATA, CKPTS[base]))
        pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)
        pipe.set_progress_bar_config(disable=True)
        kw = dict(prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=steps,
                  generator=torch.Generator("cpu").manual_seed(42), output_type="np")
        rec = {"id": cid, "checkpoint": CKPTS[base], "task": task, "scheduler": cls_name,
               "scheduler_config": overrides, "prompt": kw["prompt"], "negative_prompt": kw["negative_prompt"],
               "num_inference_steps": steps, "seed": 42}
        if task == "text2img":
            kw.update(width=T2I_SIZE[base], height=T2I_SIZE[base])
        if task != "text2img":
            rec["image"] = "images/init_64x64.png"
            kw["image"] = Image.open(os.path.join(DATA, rec["image"])).convert("RGB")
        if task == "inpaint":
            rec["mask_image"] = "images/mask_rect_64x64.png"
            kw["mask_image"] = Image.open(os.path.join(DATA, rec["mask_image"]))
        kw.update(extra)
        rec.update({k: kw.get(k) for k in ("width", "height", "strength", "guidance_scale")})
        ts = []
        h = pipe.unet.register_forward_pre_hook(lambda m, a, k: ts.append(float(a[1])), with_kwargs=True)
        img = pipe(**kw).images[0]
        h.remove()
        rec["unet_timesteps"] = ts
        rec["output"] = f"e2e/{cid}.npy"
        np.save(os.path.join(HERE, rec["output"]), np.asarray(img, dtype="<f4"), allow_pickle=False)
        out.append(rec)
        print(f"  e2e {cid}: {len(ts)} unet calls", flush=True)
    with open(os.path.join(HERE, "e2e.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


def class_keys():
    out = {}
    for c in CLASSES:
        cls = getattr(diffusers, c)
        keys = {k: jsonable(p.default) for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
        out[c] = {"order": cls.order, "keys": keys}
    with open(os.path.join(HERE, "class_keys.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    only = set(sys.argv[1:])
    os.makedirs(os.path.join(HERE, "cases"), exist_ok=True)
    os.makedirs(os.path.join(HERE, "e2e"), exist_ok=True)
    class_keys()
    for name, ckpt, cls_name, overrides in CASES:
        if not only or name in only:
            scheduler_case(name, ckpt, cls_name, overrides)
    if not only or "e2e" in only:
        e2e()
    with open(os.path.join(HERE, "versions.json"), "w") as f:
        import scipy
        json.dump({"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
                   "numpy": np.__version__, "scipy": scipy.__version__, "torch_threads": torch.get_num_threads()},
                  f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
