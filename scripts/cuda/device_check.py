"""The GPU check of the CUDA build, run on a GPU machine with PyTorch (and the diffusers wheel, for the f16
and CUDA-generator references) but no Rust. Driven by scripts/cuda/device_check.sh; every section is
independent, prints what it measured and adds it to OUT/summary.json as it goes, so a run cut short still
reports what it got.

Sections:
  rng       torch.Generator("cuda") draws from torch vs ap_randn on the GPU (must be bit-exact) and on
            the host (Philox exact, normals within ~1e-5); saves the vectors (cuda_rng.npz).
  parity    every recorded diffusers case through the Python binding on `cuda` in f32: pixels vs the
            CPU diffusers output (≤ 2/255).
  f16/bf16  a few cases in half precision on the GPU against diffusers in fp16/bf16 on the same GPU, with
            diffusers' half vs its own f32 as the yardstick of half-precision drift. Both sides use a
            torch.Generator("cuda"): with a CPU generator, torch before 2.15 draws float16 noise from
            another stream than float32 (2.15 rounds the float32 draws, as we do; tests/dtype.rs).
  cudarng   text2img with generator=torch.Generator("cuda") in diffusers vs ours with rng="cuda", on
            the GPU and on the host; saves diffusers' outputs (cudarng_*.npy).
  jobs      async runs on the GPU: two at once, and one cancelled after its first step.

    python3 scripts/cuda/device_check.py OUT_DIR [section ...]
"""

import ctypes
import json
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
sys.path.insert(0, str(REPO / "bindings" / "python"))
import autopipeline as ap  # noqa: E402

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "/tmp"))
ONLY = set(sys.argv[2:])
SUMMARY = {}
DEVICE = os.environ.get("AP_CHECK_DEVICE", "cuda")  # "cpu" for a dry run without a GPU
TASKS = {"Text2Image": "text2img", "Image2Image": "img2img", "Inpainting": "inpaint"}


def record(section, value):
    SUMMARY[section] = value
    (OUT / "summary.json").write_text(json.dumps(SUMMARY, indent=1, default=str))
    print(f"== {section}: {json.dumps(value, default=str)[:1500]}", flush=True)


def pixels(img):
    return np.frombuffer(img.pixels, np.uint8).reshape(img.height, img.width, img.channels)[..., :3]


def load_png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def cases():
    out = []
    for d in sorted((DATA / "cases").iterdir()):
        c = json.loads((d / "inputs.json").read_text())
        c["dir"] = d
        out.append(c)
    return out


def source_task(case):
    """The task the pipeline was first loaded for (from_pipe cases name it in their call)."""
    m = re.search(r"AutoPipelineFor(\w+)\.from_pretrained", case["load"]["call"])
    return TASKS[m.group(1)] if m else case["task"]


class Pipes:
    """Loaded pipelines, one per (checkpoint, task, dtype, device), reused across cases."""

    def __init__(self, device):
        self.device, self.cache = device, {}

    def get(self, case, dtype=None):
        ckpt = DATA / case["checkpoint"]
        if case["load"]["route"] == "from_pipe":
            base = self._load(ckpt, source_task(case), dtype)
            return ap.Pipeline.from_pipe(base, case["task"], **case["load"].get("kwargs", {}))
        return self._load(ckpt, case["task"], dtype)

    def _load(self, ckpt, task, dtype):
        key = (ckpt, task, dtype)
        if key not in self.cache:
            self.cache[key] = ap.Pipeline.from_pretrained(ckpt, task, device=self.device, dtype=dtype)
        return self.cache[key]

    def close(self):
        for p in self.cache.values():
            p.close()


def run_case(pipe, case, **extra):
    kw = dict(
        negative_prompt=case["negative_prompt"], prompt_2=case["prompt_2"],
        negative_prompt_2=case["negative_prompt_2"], num_inference_steps=case["num_inference_steps"],
        guidance_scale=case["guidance_scale"], strength=case["strength"], width=case["width"],
        height=case["height"], seed=case["seed"],
    )
    if case["image"]:
        kw["image"] = ap.Image.load(DATA / case["image"])
    if case["mask_image"]:
        kw["mask_image"] = ap.Image.load(DATA / case["mask_image"])
    kw.update(extra)
    return pixels(pipe.run(case["prompt"], **kw)[0])


def section_rng():
    import torch

    props = torch.cuda.get_device_properties(0)
    seeds = [0, 1, 42, 2**32 + 7, 123456789]
    # Latents of SD 1.5 at 512² and SDXL at 1024², a tiny tensor, and one past an H100's launch limit
    # (more than 1056 blocks × 256 threads = 270,336 elements: its layout depends on the GPU).
    sizes = [16384, 65536, 7, 300000]
    n_rand = 1000
    vectors, report = {}, {"device": props.name, "sms": props.multi_processor_count,
                           "threads_per_sm": props.max_threads_per_multi_processor}
    exact_gpu, host_diff, host_exact, total = 0, 0.0, 0, 0
    for seed in seeds:
        g = torch.Generator("cuda").manual_seed(seed)
        draws = [torch.randn(n, generator=g, device="cuda").cpu().numpy() for n in sizes]
        rand = torch.rand(n_rand, generator=g, device="cuda").cpu().numpy()
        for i, d in enumerate(draws):
            vectors[f"seed{seed}_randn{i}"] = d
        vectors[f"seed{seed}_rand"] = rand
        vectors[f"seed{seed}_offset"] = np.array([g.get_offset()], np.uint64)
        gpu = ap.randn(sizes, seed, rng="cuda", device="cuda")
        host = ap.randn(sizes, seed, rng="cuda")
        for d, a, b in zip(draws, gpu, host):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            exact_gpu += int((a.view(np.uint32) == d.view(np.uint32)).sum())
            host_exact += int((b.view(np.uint32) == d.view(np.uint32)).sum())
            host_diff = max(host_diff, float(np.abs(b - d).max()))
            total += d.size
    np.savez_compressed(OUT / "cuda_rng.npz", seeds=np.array(seeds, np.uint64),
                        sizes=np.array(sizes, np.uint64), **vectors)
    report.update(values=total, gpu_bit_exact=exact_gpu, host_bit_exact=host_exact,
                  host_max_abs_diff=host_diff)
    record("rng", report)


def section_parity():
    pipes, worst, rows, failures = Pipes(DEVICE), 0, [], []
    t0 = time.time()
    for case in cases():
        try:
            if case["status"] != "ok":
                try:
                    run_case(pipes.get(case), case)
                    failures.append(f"{case['id']}: expected an error, got an image")
                except ap.AutopipelineError:
                    rows.append((case["id"], "error as expected"))
                continue
            ours = run_case(pipes.get(case), case)
            want = load_png(case["dir"] / "output.png")
            d = int(np.abs(ours.astype(int) - want.astype(int)).max())
            worst = max(worst, d)
            rows.append((case["id"], d))
            if d > 2:
                failures.append(f"{case['id']}: {d}/255")
        except Exception as e:  # report every case, not only the first failure
            failures.append(f"{case['id']}: {e}")
    pipes.close()
    record("parity_f32_" + DEVICE, {"cases": len(rows), "worst_pixel_diff_255": worst, "failures": failures,
                               "seconds": round(time.time() - t0, 1), "per_case": rows})


def diffusers_run(case, dtype, device="cuda", generator_device="cpu", **override):
    import torch
    from PIL import Image
    import diffusers

    auto = {"text2img": diffusers.AutoPipelineForText2Image, "img2img": diffusers.AutoPipelineForImage2Image,
            "inpaint": diffusers.AutoPipelineForInpainting}
    pipe = auto[case["task"]].from_pretrained(DATA / case["checkpoint"], torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=case["prompt"], negative_prompt=case["negative_prompt"],
              num_inference_steps=case["num_inference_steps"], guidance_scale=case["guidance_scale"],
              output_type="np", generator=torch.Generator(generator_device).manual_seed(case["seed"]))
    for k in ("prompt_2", "negative_prompt_2"):
        if case[k] is not None:
            kw[k] = case[k]
    for k in ("strength", "width", "height"):
        if case[k] is not None:
            kw[k] = case[k]
    if case["image"]:
        kw["image"] = Image.open(DATA / case["image"]).convert("RGB")
    if case["mask_image"]:
        kw["mask_image"] = Image.open(DATA / case["mask_image"])
    kw.update(override)
    img = pipe(**kw).images[0]
    del pipe
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


HALF_CASES = ["sd15-t2i-cfg-neg", "sd15-i2i-cfg-neg", "sd15inp-inpaint-cfg", "sdxl-t2i-cfg-neg-prompt2",
              "sdxl-i2i-cfg-neg", "sdxl-inpaint4ch-cfg"]


def section_half(dtype_name):
    import torch

    tdtype = {"f16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    by_id = {c["id"]: c for c in cases()}
    pipes, rows = Pipes(DEVICE), []
    for cid in HALF_CASES:
        case = by_id[cid]
        try:
            ours = run_case(pipes.get(case, dtype_name), case, rng="cuda").astype(int)
            f32 = diffusers_run(case, torch.float32, generator_device="cuda").astype(int)
            ref = diffusers_run(case, tdtype, generator_device="cuda").astype(int)
            rows.append({"id": cid, "ours_vs_diffusers_half": int(np.abs(ours - ref).max()),
                         "diffusers_half_vs_f32": int(np.abs(ref - f32).max()),
                         "ours_half_vs_f32": int(np.abs(ours - f32).max()),
                         "mean_ours_vs_diffusers_half": round(float(np.abs(ours - ref).mean()), 3)})
        except Exception as e:
            rows.append({"id": cid, "error": f"{type(e).__name__}: {e}"})
    pipes.close()
    record(f"{dtype_name}_cuda", rows)


CUDARNG = [("sd15-t2i-cfg-neg", 7), ("sdxl-t2i-cfg-neg-prompt2", 11), ("sd15-i2i-cfg-neg", 3)]


def section_cudarng():
    import torch

    by_id = {c["id"]: c for c in cases()}
    rows = []
    for cid, seed in CUDARNG:
        case = dict(by_id[cid], seed=seed)
        try:
            ref = diffusers_run(case, torch.float32, generator_device="cuda")
            np.save(OUT / f"cudarng_{cid}_seed{seed}.npy", ref)
            row = {"id": cid, "seed": seed}
            for dev in ("cuda", "cpu"):
                with ap.Pipeline.from_pretrained(DATA / case["checkpoint"], case["task"], device=dev) as p:
                    ours = run_case(p, case, rng="cuda").astype(int)
                row[f"ours_{dev}_vs_diffusers"] = int(np.abs(ours - ref.astype(int)).max())
            rows.append(row)
        except Exception as e:
            rows.append({"id": cid, "error": f"{type(e).__name__}: {e}"})
    record("cuda_generator_pipeline", rows)


class _JobStatus(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("state", ctypes.c_int32), ("step", ctypes.c_uint32),
                ("total", ctypes.c_uint32), ("elapsed_seconds", ctypes.c_double)]


def section_jobs():
    lib = ap._lib
    lib.ap_run_async.argtypes = [ctypes.c_void_p, ctypes.POINTER(ap._RunParams), ctypes.POINTER(ctypes.c_void_p)]
    lib.ap_job_poll.argtypes = [ctypes.c_void_p, ctypes.POINTER(_JobStatus)]
    lib.ap_job_wait.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.ap_job_cancel.argtypes = [ctypes.c_void_p]
    lib.ap_job_take_result.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(ap._Images))]
    lib.ap_job_free.argtypes = [ctypes.c_void_p]
    lib.ap_job_free.restype = None
    report = {}
    with ap.Pipeline.from_pretrained(DATA / "checkpoints/sd15-tiny", "text2img", device=DEVICE) as pipe:
        def start(steps, seed):
            p = ap._run_params_default()
            p.struct_size = ctypes.sizeof(ap._RunParams)
            p.prompt, p.num_inference_steps, p.seed = b"a red house", steps, seed
            job = ctypes.c_void_p()
            ap._check(lib.ap_run_async(pipe._handle, ctypes.byref(p), ctypes.byref(job)))
            return job

        sync = pixels(pipe.run("a red house", num_inference_steps=20, seed=1)[0])
        a, b = start(20, 1), start(20, 2)
        polls = 0
        st = _JobStatus(ctypes.sizeof(_JobStatus))
        while True:
            lib.ap_job_poll(a, ctypes.byref(st))
            polls += 1
            if st.state >= 2:
                break
            time.sleep(0.002)
        results = []
        for job in (a, b):
            lib.ap_job_wait(job, -1)
            out = ctypes.POINTER(ap._Images)()
            status = lib.ap_job_take_result(job, ctypes.byref(out))
            results.append(status)
            if status == 0 and job is a:
                img = ap.Image._from_c(out.contents.images[0])
                report["async_equals_sync"] = bool((pixels(img) == sync).all())
            if status == 0:
                ap._images_free(out)
            lib.ap_job_free(job)
        report["two_concurrent_statuses"] = results
        report["polls_while_running"] = polls
        c = start(500, 3)
        while True:
            lib.ap_job_poll(c, ctypes.byref(st))
            if st.step >= 1 or st.state >= 2:
                break
            time.sleep(0.001)
        t = time.time()
        lib.ap_job_cancel(c)
        lib.ap_job_wait(c, -1)
        report["cancel_latency_ms"] = round((time.time() - t) * 1000, 1)
        out = ctypes.POINTER(ap._Images)()
        report["cancelled_status"] = lib.ap_job_take_result(c, ctypes.byref(out))  # 6 = AP_ERR_CANCELLED
        report["cancelled_at_step"] = st.step
        lib.ap_job_free(c)
        # The pipeline still works after a cancel.
        again = pipe.run("a red house", num_inference_steps=20, seed=1)[0]
        report["after_cancel_equals_sync"] = bool((pixels(again) == sync).all())
    record("jobs_" + DEVICE, report)


SECTIONS = [("rng", section_rng), ("parity", section_parity), ("f16", lambda: section_half("f16")),
            ("cudarng", section_cudarng), ("jobs", section_jobs), ("bf16", lambda: section_half("bf16"))]

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    record("library", {"version": ap.version(), "path": os.environ.get("AUTOPIPELINE_LIBRARY")})
    for name, fn in SECTIONS:
        if ONLY and name not in ONLY:
            continue
        t = time.time()
        try:
            fn()
        except Exception:
            record(name + "_error", traceback.format_exc())
        print(f"   ({name}: {time.time() - t:.1f} s)", flush=True)
