"""GPU benchmark: autopipeline's CUDA build against diffusers/PyTorch on the same GPU, fp16, 20 steps, on
the SD 1.5 architecture at 512² and the SDXL base architecture at 1024² (random weights written by
make_checkpoint.py). Each side runs in its own process; the parent samples the GPU's used memory through
NVML every 10 ms, so peak VRAM is measured the same way for both (context included). Driven by
bench/gpu.sh.

    python3 bench/gpu.py OUT_DIR CKPT_DIR [sd15 sdxl sd35m flux-schnell]   # the whole comparison
    python3 bench/gpu.py measure ours|diffusers MODEL SIZE [STEPS [f16|bf16]]   # one side (one JSON line)
    python3 bench/gpu.py profile ours|diffusers MODEL SIZE OUT.txt [cpu]   # kernel table of one side

With AP_PROFILE=sdxl (or sd15, or both, comma-separated), the comparison also writes
OUT_DIR/profile-ARCH-SIDE.txt for those architectures after measuring them (AP_PROFILE_SIDES=ours: only
that side). Our side's CUDA kernels follow AP_CUDA_KERNELS (see src/kernels/cuda/mod.rs); its
profile follows AP_PROFILE_KERNELS instead where that is set (to profile kernels that are off by default).
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = 20
# arch: (size, steps, dtype, checkpoint maker). sd35m and flux-schnell are the published SD 3.5 Medium and
# FLUX.1-schnell architectures in bfloat16 at their usual step counts (issues #22 / #23; prepared, not yet run
# on a GPU).
ARCHS = {
    "sd15": (512, STEPS, "f16", "make_checkpoint.py"),
    "sdxl": (1024, STEPS, "f16", "make_checkpoint.py"),
    "sd35m": (1024, 28, "bf16", "make_dit_checkpoint.py"),
    "flux-schnell": (1024, 4, "bf16", "make_dit_checkpoint.py"),
}
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


WARNINGS = []  # our side's log warnings in this process


def build(side, model, size, device="cuda", dtype="f16"):
    """Loads one side's pipeline on `device`; returns the load seconds and `run(steps, stamps=None)`, which
    generates with `steps` steps, appending a timestamp to `stamps` after each step (after a device
    synchronisation on both sides: ours synchronises before reporting progress)."""
    t = time.perf_counter()
    if side == "diffusers":
        import torch
        from diffusers import AutoPipelineForText2Image

        torch_dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[dtype] if device == "cuda" else torch.float32
        pipe = AutoPipelineForText2Image.from_pretrained(model, torch_dtype=torch_dtype).to(device)
        pipe.set_progress_bar_config(disable=True)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        load_s = time.perf_counter() - t

        def run(steps, stamps=None):
            def cb(_pipe, _i, _t, kw):
                sync()
                stamps.append(time.perf_counter())
                return kw

            pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, height=size, width=size,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="np",
                 callback_on_step_end=cb if stamps is not None else None)
            sync()
    else:
        sys.path.insert(0, str(REPO / "bindings" / "python"))
        import autopipeline as ap

        pipe = ap.Pipeline.from_pretrained(model, "text2img", device=device,
                                           dtype=dtype if device == "cuda" else None)
        load_s = time.perf_counter() - t
        # Warnings land in the result row: e.g. a CUDA graph capture that failed and ran eagerly.
        pipe.set_log_callback(lambda _level, message: WARNINGS.append(message), "warn")

        def run(steps, stamps=None):
            progress = (lambda s, n: (stamps.append(time.perf_counter()), True)[1]) if stamps is not None else None
            pipe.run(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, width=size, height=size,
                     seed=0, progress=progress)

    return load_s, run


def measure(side, model, size, steps=STEPS, dtype="f16"):
    """Load time, then a 2-step warm-up run and REPEATS timed 20-step runs (AP_BENCH_REPEATS, default 3);
    it/s over steps 2..20 of each (the first step includes one-off kernel loading), and the whole timed
    run's seconds. A side's `it_s` and `run_s` are its best over the runs (each run's it/s in `it_s_runs`): a single
    20-step run of diffusers on a lent H100 varied from 20 to 32 it/s (SD 1.5 512²) between processes,
    as host-bound Python does, and the best of each side is the comparison that favours neither."""
    out = {"side": side, "size": size, "steps": steps, "dtype": dtype}
    out["load_s"], run = build(side, model, size, dtype=dtype)
    run(2)
    runs = []
    for _ in range(max(1, int(os.environ.get("AP_BENCH_REPEATS", "3")))):
        stamps = []
        t = time.perf_counter()
        run(steps, stamps)
        runs.append((time.perf_counter() - t, (len(stamps) - 1) / (stamps[-1] - stamps[0])))
    out["run_s"] = min(r for r, _ in runs)
    out["it_s"] = max(i for _, i in runs)
    out["it_s_runs"] = [round(i, 2) for _, i in runs]
    if WARNINGS:
        out["warnings"] = sorted(set(WARNINGS))
    return out


def profile(side, model, size, out_path, device="cuda"):
    """After a 2-step warm-up, a 3-step run under torch.profiler, written to `out_path` as a table of
    kernels (or, on the CPU, ops) by total time. On a GPU this profiles ours too: the profiler's CUPTI
    tracing records every kernel the process launches, whichever library launches it (ours go through
    cudarc on the same primary context), so the two sides' tables compare kernel for kernel."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU]
    if device == "cuda":
        torch.cuda.init()
        activities.append(ProfilerActivity.CUDA)
    _, run = build(side, model, size, device)
    run(2)
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        run(3)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    # Kernel time against wall time says whether the side is bound by the GPU or by the host launching
    # its kernels (per-op overhead), which decides the next optimisation.
    busy, launches = 0.0, 0
    for e in events:
        if str(getattr(e, "device_type", "")).endswith("CUDA"):
            busy += (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)) / 1e6
            launches += e.count
    summary = (f"wall {wall:.3f} s for 3 steps (under the profiler); GPU kernels and copies {busy:.3f} s "
               f"({100 * busy / wall:.0f} % busy), {launches} launches ({launches / 3:.0f} per step)")
    for key in (["self_device_time_total", "self_cuda_time_total"] if device == "cuda" else []) + [
            "self_cpu_time_total"]:
        try:
            table = events.table(sort_by=key, row_limit=60, max_name_column_width=90)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    Path(out_path).write_text(f"{side} {model} {size}² {device}, 3 steps after a 2-step warm-up\n{summary}\n{table}\n")


class MemorySampler(threading.Thread):
    """Peak used GPU memory (MiB) above the level before the process started."""

    def __init__(self):
        super().__init__(daemon=True)
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.base = self.used()
        self.peak, self.stop = self.base, False

    def used(self):
        return self.nvml.nvmlDeviceGetMemoryInfo(self.h).used / 2**20

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, self.used())
            time.sleep(0.01)


def side(name, model, size, log, steps=STEPS, dtype="f16"):
    sampler = MemorySampler()
    sampler.start()
    proc = subprocess.run([sys.executable, __file__, "measure", name, str(model), str(size), str(steps), dtype],
                          capture_output=True, text=True, timeout=int(os.environ.get("AP_SIDE_SECONDS", "240")))
    sampler.stop = True
    sampler.join()
    log.write(f"--- {name} {model} {size}\n{proc.stdout}\n{proc.stderr[-4000:]}\n")
    if proc.returncode != 0:
        return {"side": name, "size": size, "error": proc.stderr.strip().splitlines()[-1:]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["peak_vram_mib"] = round(sampler.peak - sampler.base)
    return res


def main(out_dir, ckpt_dir, archs):
    out_dir, ckpt_dir = Path(out_dir), Path(ckpt_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch

    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": STEPS, "rows": []}
    with open(out_dir / "gpu_bench.log", "w") as log:
        for arch, (size, steps, dtype, maker) in ARCHS.items():
            if arch not in archs:
                continue
            model = ckpt_dir / arch
            t = time.time()
            extra = ["--fp16"] if maker == "make_checkpoint.py" else []
            subprocess.run([sys.executable, str(REPO / "bench" / maker), str(model), "--arch", arch, *extra,
                            "--device", "cuda"], check=True, capture_output=True, timeout=900)
            print(f"{arch}: checkpoint in {time.time() - t:.0f} s", flush=True)
            subprocess.run(["sh", "-c", f"cat {model}/*/*.safetensors > /dev/null"])  # same page cache for both
            # AP_BENCH_SIDES=ours re-measures our side alone (compare with an earlier diffusers run on the
            # same GPU kind only).
            for name in os.environ.get("AP_BENCH_SIDES", "diffusers,ours").split(","):
                row = dict(side(name, model, size, log, steps, dtype), arch=arch)
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
                (out_dir / "gpu_bench.json").write_text(json.dumps(results, indent=1))
            if arch in os.environ.get("AP_PROFILE", "").split(","):
                sides = os.environ.get("AP_PROFILE_SIDES") or os.environ.get("AP_BENCH_SIDES", "diffusers,ours")
                for name in sides.split(","):
                    dest = out_dir / f"profile-{arch}-{name}.txt"
                    env = dict(os.environ)
                    if os.environ.get("AP_PROFILE_KERNELS"):
                        env["AP_CUDA_KERNELS"] = os.environ["AP_PROFILE_KERNELS"]
                    proc = subprocess.run([sys.executable, __file__, "profile", name, str(model), str(size), str(dest)],
                                          capture_output=True, text=True, timeout=240, env=env)
                    log.write(f"--- profile {name} {arch}\n{proc.stdout}\n{proc.stderr[-4000:]}\n")
                    print(f"{arch} {name}: profile {'written to ' + str(dest) if proc.returncode == 0 else 'failed'}",
                          flush=True)
    print(f"\n{results['gpu']}, torch {results['torch']} (sd15/sdxl: fp16, {STEPS} steps, CFG; sd35m: bf16, 28 "
          "steps, CFG; flux-schnell: bf16, 4 steps)")
    print(f"{'arch':6} {'size':>5} {'side':10} {'load s':>7} {'run s':>7} {'it/s':>7} {'peak MiB':>9}")
    by = {}
    for r in results["rows"]:
        by[(r["arch"], r["side"])] = r
        if "error" in r:
            print(f"{r['arch']:6} {r['size']:5} {r['side']:10} error: {r['error']}")
            continue
        print(f"{r['arch']:6} {r['size']:5} {r['side']:10} {r['load_s']:7.2f} {r['run_s']:7.2f} {r['it_s']:7.2f} "
              f"{r['peak_vram_mib']:9}")
    for arch in ARCHS:
        o, d = by.get((arch, "ours")), by.get((arch, "diffusers"))
        if o and d and "error" not in o and "error" not in d:
            print(f"{arch}: it/s ours/diffusers = {o['it_s'] / d['it_s']:.2f} (higher is better), "
                  f"peak VRAM ours/diffusers = {o['peak_vram_mib'] / d['peak_vram_mib']:.2f}, "
                  f"load ours/diffusers = {o['load_s'] / d['load_s']:.2f}")


if __name__ == "__main__":
    if sys.argv[1] == "measure":
        steps = int(sys.argv[5]) if len(sys.argv) > 5 else STEPS
        print(json.dumps(measure(sys.argv[2], sys.argv[3], int(sys.argv[4]), steps, *sys.argv[6:7])))
    elif sys.argv[1] == "profile":
        profile(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], *sys.argv[6:7])
    else:
        main(sys.argv[1], sys.argv[2], set(sys.argv[3:]) or {"sd15", "sdxl"})
