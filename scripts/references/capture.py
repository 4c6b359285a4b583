"""Shared machinery of the reference generators in this folder: records what a diffusers pipeline run
produced (every generator draw, the prompt embeddings, the first denoiser call, the latents after each
step, the image) in the case format of `tests/data/cases/<id>/` that `tests/common/cases.rs` reads.

Run the generators with a venv holding diffusers 0.42.1, transformers 5.24, torch 2.15 (CPU):
    python3 -m venv venv && venv/bin/pip install torch==2.15.0 diffusers==0.42.1 transformers==5.24.0 \
        accelerate safetensors pillow numpy
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image

torch.set_num_threads(2)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(REPO, "tests", "data")


def dump_json(path, obj):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


def save_npy(path, t):
    """Little-endian float32 .npy (the format `tests/common/mod.rs::read_npy` reads)."""
    a = t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    a = a.astype("<f4")
    np.save(path, np.ascontiguousarray(a), allow_pickle=False)
    return list(a.shape)


def jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


import diffusers.utils.torch_utils as _tu  # noqa: E402

_ORIG_RANDN = _tu.randn_tensor
_DRAWS = {"list": None}


def _recording_randn(*args, **kwargs):
    out = _ORIG_RANDN(*args, **kwargs)
    if _DRAWS["list"] is not None:
        _DRAWS["list"].append(out.detach().cpu().clone())
    return out


def install_randn_patch():
    """Pipelines and schedulers import `randn_tensor` by name: patch every loaded diffusers module."""
    for name, mod in list(sys.modules.items()):
        if name.startswith("diffusers") and mod is not None and getattr(mod, "randn_tensor", None) is _ORIG_RANDN:
            setattr(mod, "randn_tensor", _recording_randn)


def run_recorded(pipe, kwargs, seed):
    """Runs `pipe(**kwargs)` with `torch.Generator('cpu').manual_seed(seed)` and records the intermediates."""
    rec = {"noise": [], "encode": None, "t": [], "in0": None, "out0": None, "steps": []}
    denoiser = pipe.unet
    orig_encode = pipe.encode_prompt

    def enc(*a, **k):
        out = orig_encode(*a, **k)
        rec["encode"] = out
        return out

    def pre(mod, args, kw):
        sample = args[0] if args else kw["sample"]
        t = args[1] if len(args) > 1 else kw["timestep"]
        rec["t"].append(float(t))
        if rec["in0"] is None:
            rec["in0"] = sample.detach().clone()

    def post(mod, args, kw, output):
        if rec["out0"] is None:
            rec["out0"] = (output[0] if isinstance(output, (tuple, list)) else output.sample).detach().clone()

    def cb(p, i, t, kw):
        rec["steps"].append(kw["latents"].detach().clone())
        return kw

    pipe.encode_prompt = enc
    h1 = denoiser.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = denoiser.register_forward_hook(post, with_kwargs=True)
    install_randn_patch()
    _DRAWS["list"] = rec["noise"]
    try:
        out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                   callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"])
    finally:
        _DRAWS["list"] = None
        h1.remove()
        h2.remove()
        del pipe.encode_prompt
    rec["image"] = np.asarray(out.images[0], dtype=np.float32)
    return rec


def write_case(case_id, inputs, pipe, rec):
    """Writes `tests/data/cases/<case_id>/` from a recorded run."""
    d = os.path.join(DATA, "cases", case_id)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    img = rec["image"]
    inputs = dict(inputs)
    inputs["id"] = case_id
    inputs["generator"] = "torch.Generator('cpu').manual_seed(seed)"
    inputs["output_type"] = "np"
    inputs["resolved_class"] = type(pipe).__name__
    inputs["scheduler_class"] = type(pipe.scheduler).__name__
    inputs["status"] = "ok"
    inputs["output"] = {"npy": "output.npy", "png": "output.png", "shape": list(img.shape)}
    save_npy(os.path.join(d, "output.npy"), img)
    Image.fromarray((img * 255).round().astype("uint8")).save(os.path.join(d, "output.png"))
    inputs["randn_tensor_draws"] = [
        {"file": f"noise_{i:02d}.npy", "shape": save_npy(os.path.join(d, f"noise_{i:02d}.npy"), t)}
        for i, t in enumerate(rec["noise"])
    ]
    emb = {}
    for name, t in zip(["prompt_embeds", "negative_prompt_embeds"], rec["encode"]):
        if t is not None:
            emb[name] = {"file": name + ".npy", "shape": save_npy(os.path.join(d, name + ".npy"), t)}
    inputs["embeddings"] = emb
    inputs["unet_timesteps"] = rec["t"]
    inputs["scheduler_timesteps_after_run"] = jsonable(pipe.scheduler.timesteps)
    inputs["unet_input_step0"] = {"file": "unet_input_step0.npy",
                                  "shape": save_npy(os.path.join(d, "unet_input_step0.npy"), rec["in0"])}
    inputs["unet_output_step0"] = {"file": "unet_output_step0.npy",
                                   "shape": save_npy(os.path.join(d, "unet_output_step0.npy"), rec["out0"])}
    inputs["latents_per_step"] = {"file": "latents_per_step.npy",
                                  "shape": save_npy(os.path.join(d, "latents_per_step.npy"), torch.stack(rec["steps"]))}
    dump_json(os.path.join(d, "inputs.json"), inputs)
    print(f"  {case_id}: {type(pipe).__name__} {list(img.shape)} {len(rec['t'])} denoiser calls", flush=True)


def write_error_case(case_id, inputs, err):
    d = os.path.join(DATA, "cases", case_id)
    if os.path.exists(d):
        shutil.rmtree(d)
    inputs = dict(inputs)
    inputs["id"] = case_id
    inputs["status"] = "error"
    inputs["error"] = {"type": type(err).__name__, "message": str(err)}
    dump_json(os.path.join(d, "inputs.json"), inputs)
    print(f"  {case_id}: error {type(err).__name__}: {str(err)[:100]}", flush=True)
