#!/usr/bin/env python3
"""Reference data for tests/schedulers_flow.rs: the flow-matching schedulers and custom schedules
(`set_timesteps(timesteps=, sigmas=, mu=)`), run by the real diffusers.

Not run by CI. Regenerate from the repository root with a venv holding torch 2.15, diffusers 0.42.1,
numpy 2.x and scipy (for beta sigmas):

    /work/venv/bin/python scripts/references/make_flow_schedulers.py

Writes tests/data/schedulers_flow/{flow,custom,errors}.json:
- flow.json: FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler configs (FLUX-dev-like dynamic
  shifting with `mu` from `calculate_shift`, SD3-like static shift, Karras / exponential / beta sigmas, inverted
  sigmas, a terminal shift, linear time shift, stochastic sampling, custom sigmas, custom timesteps, Heun): for
  each, `set_timesteps` results for a few requests, a trajectory over every timestep of one request with fixed fake
  model outputs on a [1, 4, 2, 2] latent (the step generator seeded with 5), and `scale_noise` at the img2img
  start (SD3 img2img's begin index for strength 0.6) and without a begin index.
- custom.json: custom timesteps / sigmas for the diffusion schedulers whose `set_timesteps` takes them, with a
  trajectory each.
- errors.json: diffusers' messages for requests it refuses (`mu` missing under dynamic shifting,
  `retrieve_timesteps` on a class without custom schedules, length mismatches, ...).
"""

import inspect
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import diffusers  # noqa: E402
from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # noqa: E402
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps  # noqa: E402

torch.set_num_threads(2)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "schedulers_flow")
SHAPE = (1, 4, 2, 2)  # 16 values: torch.randn's vectorised path, as for real latents


def f32s(t):
    """float32 values, written with 9 significant digits (enough to round-trip a float32)."""
    a = np.asarray(t.detach().cpu().numpy() if torch.is_tensor(t) else t, dtype=np.float32).reshape(-1)
    return [float(f"{v:.9g}") for v in a.tolist()]


def randn(seed):
    return torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(seed))


def make(cls_name, config):
    return getattr(diffusers, cls_name)(**config)


def call(sched, req):
    """`set_timesteps` with the request's keywords (a JSON-able dict)."""
    kw = {k: v for k, v in req.items() if v is not None}
    n = kw.pop("num_inference_steps", None)
    if n is not None:
        sched.set_timesteps(n, **kw)
    else:
        sched.set_timesteps(**kw)


def schedule(cls_name, config, req):
    sched = make(cls_name, config)
    try:
        call(sched, req)
    except Exception as e:  # noqa: BLE001
        return {"request": req, "error": f"{type(e).__name__}: {e}"}
    out = {"request": req, "timesteps": [float(t) for t in sched.timesteps.to(torch.float64)]}
    if hasattr(sched, "sigmas"):
        out["sigmas"] = f32s(sched.sigmas)
    return out


def step_kwargs(sched, gen):
    params = inspect.signature(sched.step).parameters
    kw = {}
    if "eta" in params:
        kw["eta"] = 0.0
    if "generator" in params:
        kw["generator"] = gen
    return kw


def trajectory(cls_name, config, req):
    sched = make(cls_name, config)
    call(sched, req)
    gen = torch.Generator("cpu").manual_seed(5)
    x = randn(123) * getattr(sched, "init_noise_sigma", 1.0)
    out = {"request": req, "x_init": f32s(x), "steps": []}
    has_scale = hasattr(sched, "scale_model_input")
    for i, t in enumerate(sched.timesteps):
        xin = sched.scale_model_input(x, t) if has_scale else x
        v = randn(1000 + i) * 0.8 + 0.1 * xin
        x = sched.step(v, t, x, return_dict=False, **step_kwargs(sched, gen))[0]
        st = {"t": float(t), "model_output": f32s(v), "prev": f32s(x)}
        if has_scale:
            st["scaled"] = f32s(xin)
        out["steps"].append(st)
    return out


def scale_noise(cls_name, config, req):
    """SD3 img2img's start (strength 0.6): begin index t_start·order, then `scale_noise` at timesteps[begin];
    and without a begin index, at the third timestep (diffusers looks the timestep up)."""
    clean, noise = randn(7), randn(8)
    sched = make(cls_name, config)
    call(sched, req)
    n = len(sched.timesteps) if sched.order == 1 else (len(sched.timesteps) + 1) // 2
    init_timestep = min(n * 0.6, n)
    t_start = int(max(n - init_timestep, 0))
    begin = t_start * sched.order
    sched.set_begin_index(begin)
    t = sched.timesteps[begin:begin + 1]
    with_begin = sched.scale_noise(clean, t, noise)
    fresh = make(cls_name, config)
    call(fresh, req)
    t2 = fresh.timesteps[2:3]
    looked_up = fresh.scale_noise(clean, t2, noise)
    return {
        "request": req,
        "clean": f32s(clean),
        "noise": f32s(noise),
        "begin_index": begin,
        "timestep": float(t[0]),
        "result": f32s(with_begin),
        "lookup_timestep": float(t2[0]),
        "lookup_result": f32s(looked_up),
    }


FLUX = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
MU_1024 = calculate_shift(4096)  # 1024² FLUX: 64·64 tokens
MU_512 = calculate_shift(1024)
SD3 = {"shift": 3.0}


def flux_sigmas(n):
    """What FluxPipeline passes: np.linspace(1.0, 1 / n, n), as a list."""
    return np.linspace(1.0, 1 / n, n).tolist()


def req(n=None, sigmas=None, timesteps=None, mu=None):
    return {"num_inference_steps": n, "sigmas": sigmas, "timesteps": timesteps, "mu": mu}


E = "FlowMatchEulerDiscreteScheduler"
H = "FlowMatchHeunDiscreteScheduler"

# (name, class, config, set_timesteps requests, trajectory / scale_noise request)
FLOW_CASES = [
    ("flux-dev", E, FLUX,
     [req(4, mu=MU_1024), req(28, mu=MU_512), req(sigmas=flux_sigmas(4), mu=MU_1024),
      req(sigmas=flux_sigmas(28), mu=MU_512)],
     req(sigmas=flux_sigmas(5), mu=MU_1024)),
    ("flux-dev-steps", E, FLUX, [req(1, mu=MU_1024), req(5, mu=MU_512)], req(5, mu=MU_512)),
    ("sd3", E, SD3, [req(1), req(4), req(28)], req(5)),
    ("default", E, {}, [req(4), req(28)], req(5)),
    ("karras", E, {**SD3, "use_karras_sigmas": True}, [req(4), req(28)], req(5)),
    ("exponential", E, {**SD3, "use_exponential_sigmas": True}, [req(4), req(28)], req(5)),
    ("beta", E, {**SD3, "use_beta_sigmas": True}, [req(4), req(28)], req(5)),
    ("beta-flux", E, {**FLUX, "use_beta_sigmas": True}, [req(sigmas=flux_sigmas(8), mu=MU_1024)],
     req(sigmas=flux_sigmas(5), mu=MU_1024)),
    ("invert", E, {**SD3, "invert_sigmas": True}, [req(4), req(sigmas=[0.9, 0.6, 0.3])], req(5)),
    ("terminal", E, {**FLUX, "shift_terminal": 0.1}, [req(4, mu=MU_1024), req(sigmas=flux_sigmas(6), mu=MU_512)],
     req(5, mu=MU_1024)),
    ("linear-shift", E, {**FLUX, "time_shift_type": "linear", "base_shift": 0.95, "max_shift": 2.05},
     [req(4, mu=2.05), req(sigmas=flux_sigmas(6), mu=0.95)], req(5, mu=2.05)),
    ("stochastic", E, {**SD3, "stochastic_sampling": True}, [req(4)], req(5)),
    ("custom-sigmas", E, SD3, [req(sigmas=[1.0, 0.75, 0.5, 0.25]), req(4, sigmas=[1.0, 0.8, 0.4, 0.1])],
     req(sigmas=[1.0, 0.8, 0.6, 0.3, 0.1])),
    ("custom-timesteps", E, SD3, [req(timesteps=[1000.0, 750.0, 500.0, 250.0]), req(timesteps=[999.0, 800.5, 3.0])],
     req(timesteps=[1000.0, 800.0, 600.0, 400.0, 200.0])),
    ("custom-both", E, SD3, [req(sigmas=[1.0, 0.5, 0.2], timesteps=[900.0, 500.0, 100.0])],
     req(sigmas=[0.95, 0.7, 0.5, 0.3, 0.15], timesteps=[950.0, 700.0, 500.0, 300.0, 150.0])),
    ("heun-sd3", H, SD3, [req(1), req(4), req(28)], req(5)),
    ("heun-default", H, {}, [req(4)], req(5)),
]

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
TS = [999.0, 850.0, 600.0, 350.0, 100.0]
CUSTOM_CASES = [
    ("ddpm", "DDPMScheduler", SD, [req(timesteps=TS), req(timesteps=[999.7, 500.2, 0.0])], req(timesteps=TS)),
    ("euler-timesteps", "EulerDiscreteScheduler", SD, [req(timesteps=TS), req(timesteps=[999.5, 500.25, 10.0])],
     req(timesteps=TS)),
    ("euler-sigmas", "EulerDiscreteScheduler", SD,
     [req(sigmas=[14.6, 6.0, 2.5, 0.8, 0.2, 0.0]), req(sigmas=[10.0, 1.0, 0.03])],
     req(sigmas=[14.6, 6.0, 2.5, 0.8, 0.2, 0.0])),
    ("euler-sigmas-vpred", "EulerDiscreteScheduler", {**SD, "prediction_type": "v_prediction"},
     [req(sigmas=[7.0, 3.0, 1.0, 0.0])], req(sigmas=[7.0, 3.0, 1.0, 0.0])),
    ("euler-timesteps-sigma-min", "EulerDiscreteScheduler", {**SD, "final_sigmas_type": "sigma_min"},
     [req(timesteps=TS)], req(timesteps=TS)),
    ("dpm-multistep", "DPMSolverMultistepScheduler", SD, [req(timesteps=TS), req(timesteps=[999.9, 400.5])],
     req(timesteps=TS)),
    ("dpm-multistep-sde", "DPMSolverMultistepScheduler", {**SD, "algorithm_type": "sde-dpmsolver++"},
     [req(timesteps=TS)], req(timesteps=TS)),
    ("dpm-singlestep", "DPMSolverSinglestepScheduler", SD, [req(timesteps=TS)], req(timesteps=TS)),
    ("heun", "HeunDiscreteScheduler", SD, [req(timesteps=TS), req(timesteps=[999.5, 500.25, 10.0])],
     req(timesteps=TS)),
    ("lcm", "LCMScheduler", SD, [req(timesteps=[999.0, 759.0, 499.0, 259.0]), req(timesteps=[999.0, 500.0, 1.0])],
     req(timesteps=[999.0, 759.0, 499.0, 259.0])),
    ("tcd", "TCDScheduler", SD, [req(timesteps=[999.0, 759.0, 499.0, 259.0])],
     req(timesteps=[999.0, 759.0, 499.0, 259.0])),
    ("unipc-mu", "UniPCMultistepScheduler", SD, [req(4, mu=0.7)], req(4, mu=0.7)),
    ("deis-dynamic-mu", "DEISMultistepScheduler", {**SD, "use_dynamic_shifting": True}, [req(4, mu=0.7)],
     req(4, mu=0.7)),
    ("dpm-dynamic-mu", "DPMSolverMultistepScheduler", {**SD, "use_dynamic_shifting": True}, [req(4, mu=0.7)],
     req(4, mu=0.7)),
]


def case(name, cls_name, config, requests, traj_req, flow):
    c = {
        "name": name,
        "class": cls_name,
        "config": config,
        "order": make(cls_name, config).order,
        "set_timesteps": [schedule(cls_name, config, r) for r in requests],
        "trajectory": trajectory(cls_name, config, traj_req),
    }
    if flow:
        c["scale_noise"] = scale_noise(cls_name, config, traj_req)
    return c


def error_of(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    raise AssertionError("expected an error")


ERRORS = [
    ("mu missing under dynamic shifting", E, FLUX, req(4)),
    ("mu missing under dynamic shifting (UniPC)", "UniPCMultistepScheduler", {**SD, "use_dynamic_shifting": True}, req(4)),
    ("sigmas and timesteps of different lengths", E, SD3, req(sigmas=[1.0, 0.5], timesteps=[900.0])),
    ("sigmas longer than num_inference_steps", E, SD3, req(3, sigmas=[1.0, 0.5])),
    ("euler: timesteps and sigmas", "EulerDiscreteScheduler", SD, req(sigmas=[1.0, 0.0], timesteps=[900.0])),
    ("euler: steps and sigmas", "EulerDiscreteScheduler", SD, req(4, sigmas=[1.0, 0.0])),
    ("euler: timesteps with karras", "EulerDiscreteScheduler", {**SD, "use_karras_sigmas": True}, req(timesteps=TS)),
    ("ddpm: ascending", "DDPMScheduler", SD, req(timesteps=[10.0, 500.0])),
    ("ddpm: beyond training", "DDPMScheduler", SD, req(timesteps=[1000.0, 500.0])),
    ("ddpm: steps and timesteps", "DDPMScheduler", SD, req(4, timesteps=TS)),
    ("dpm: timesteps with karras", "DPMSolverMultistepScheduler", {**SD, "use_karras_sigmas": True}, req(timesteps=TS)),
    ("dpm: timesteps with lu lambdas", "DPMSolverMultistepScheduler", {**SD, "use_lu_lambdas": True}, req(timesteps=TS)),
    ("dpm singlestep: timesteps with karras", "DPMSolverSinglestepScheduler", {**SD, "use_karras_sigmas": True},
     req(timesteps=TS)),
    ("heun: timesteps with karras", "HeunDiscreteScheduler", {**SD, "use_karras_sigmas": True}, req(timesteps=TS)),
    ("unipc: sigmas without flow sigmas", "UniPCMultistepScheduler", SD, req(sigmas=[1.0, 0.5])),
    ("lcm: ascending", "LCMScheduler", SD, req(timesteps=[259.0, 499.0])),
]


def retrieve_errors():
    out = []
    for cls_name, kw in [
        ("PNDMScheduler", {"timesteps": TS}),
        ("DDIMScheduler", {"sigmas": [1.0, 0.5, 0.0]}),
        ("FlowMatchHeunDiscreteScheduler", {"sigmas": [1.0, 0.5]}),
        ("DDPMScheduler", {"sigmas": [1.0, 0.5, 0.0]}),
        ("EulerDiscreteScheduler", {"timesteps": TS, "sigmas": [1.0, 0.0]}),
    ]:
        sched = make(cls_name, {})
        out.append({
            "class": cls_name,
            "request": {"timesteps": kw.get("timesteps"), "sigmas": kw.get("sigmas")},
            "error": error_of(lambda s=sched, k=kw: retrieve_timesteps(s, None, "cpu", **k)),
        })
    # What retrieve_timesteps returns as num_inference_steps for a custom schedule (len(timesteps)).
    counts = []
    for cls_name, config, kw in [
        ("HeunDiscreteScheduler", SD, {"timesteps": TS}),
        ("EulerDiscreteScheduler", SD, {"sigmas": [14.6, 6.0, 2.5, 0.0]}),
        (E, FLUX, {"sigmas": flux_sigmas(6), "mu": MU_1024}),
        (E, FLUX, {"mu": MU_1024}),
    ]:
        sched = make(cls_name, config)
        n = None if ("timesteps" in kw or "sigmas" in kw) else 7
        _, steps = retrieve_timesteps(sched, n, "cpu", **kw)
        counts.append({"class": cls_name, "config": config, "request": req(n, kw.get("sigmas"), kw.get("timesteps"),
                                                                            kw.get("mu")), "num_inference_steps": steps})
    return out, counts


def main():
    os.makedirs(OUT, exist_ok=True)
    flow = {
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__},
        "calculate_shift": {str(n): calculate_shift(n) for n in [256, 1024, 3600, 4096, 6000]},
        "cases": [case(*c, flow=True) for c in FLOW_CASES],
        "class_keys": {
            cls_name: {k: p.default for k, p in inspect.signature(getattr(diffusers, cls_name).__init__).parameters.items()
                       if k != "self"}
            for cls_name in [E, H]
        },
    }
    custom = {"cases": [case(*c, flow=False) for c in CUSTOM_CASES]}
    retrieve, counts = retrieve_errors()
    errors = {
        "set_timesteps": [
            {"name": name, "class": cls_name, "config": config, "request": r,
             "error": schedule(cls_name, config, r).get("error")}
            for name, cls_name, config, r in ERRORS
        ],
        "retrieve_timesteps": retrieve,
        "retrieve_counts": counts,
    }
    for e in errors["set_timesteps"]:
        assert e["error"], e["name"]
    for name, data in [("flow", flow), ("custom", custom), ("errors", errors)]:
        text = json.dumps(data, indent=1)
        # One line per list of numbers keeps the files small and their diffs readable.
        text = re.sub(r"\[\s*([-0-9.e, \n]+?)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
