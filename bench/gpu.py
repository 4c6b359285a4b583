"""GPU benchmark: autopipeline's CUDA build against diffusers/PyTorch on the same GPU, fp16, 20 steps, on
the SD 1.5 architecture at 512² and the SDXL base architecture at 1024² (random weights written by
make_checkpoint.py). Each side runs in its own process; the parent samples the GPU's used memory through
NVML every 10 ms, so peak VRAM is measured the same way for both (context included). Driven by
bench/gpu.sh.

    python3 bench/gpu.py OUT_DIR CKPT_DIR [sd15 sdxl]            # the whole comparison
    python3 bench/gpu.py measure ours|diffusers MODEL SIZE       # one side (prints one JSON line)
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
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


def measure(side, model, size):
    """Load time, then a 2-step warm-up run and a timed 20-step run; it/s over steps 2..20 (the first step
    includes one-off kernel loading), and the whole timed run's seconds."""
    stamps, out = [], {"side": side, "size": size}
    t = time.perf_counter()
    if side == "diffusers":
        import torch
        from diffusers import AutoPipelineForText2Image

        pipe = AutoPipelineForText2Image.from_pretrained(model, torch_dtype=torch.float16).to("cuda")
        pipe.set_progress_bar_config(disable=True)
        torch.cuda.synchronize()
        out["load_s"] = time.perf_counter() - t

        def cb(_pipe, _i, _t, kw):
            torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            return kw

        def run(steps, cb=None):
            pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, height=size, width=size,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="np", callback_on_step_end=cb)
            torch.cuda.synchronize()
    else:
        sys.path.insert(0, str(REPO / "bindings" / "python"))
        import autopipeline as ap

        pipe = ap.Pipeline.from_pretrained(model, "text2img", device="cuda", dtype="f16")
        out["load_s"] = time.perf_counter() - t

        def run(steps, cb=None):
            progress = (lambda s, n: (stamps.append(time.perf_counter()), True)[1]) if cb else None
            pipe.run(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, width=size, height=size,
                     seed=0, progress=progress)

        cb = True
    run(2)
    t = time.perf_counter()
    run(STEPS, cb)
    out["run_s"] = time.perf_counter() - t
    out["it_s"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return out


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


def side(name, model, size, log):
    sampler = MemorySampler()
    sampler.start()
    proc = subprocess.run([sys.executable, __file__, "measure", name, str(model), str(size)],
                          capture_output=True, text=True, timeout=240)
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
        for arch, size in (("sd15", 512), ("sdxl", 1024)):
            if arch not in archs:
                continue
            model = ckpt_dir / arch
            t = time.time()
            subprocess.run([sys.executable, str(REPO / "bench" / "make_checkpoint.py"), str(model), "--arch", arch,
                            "--fp16", "--device", "cuda"], check=True, capture_output=True, timeout=300)
            print(f"{arch}: checkpoint in {time.time() - t:.0f} s", flush=True)
            subprocess.run(["sh", "-c", f"cat {model}/*/*.safetensors > /dev/null"])  # same page cache for both
            # AP_BENCH_SIDES=ours re-measures our side alone (compare with an earlier diffusers run on the
            # same GPU kind only).
            for name in os.environ.get("AP_BENCH_SIDES", "diffusers,ours").split(","):
                row = dict(side(name, model, size, log), arch=arch)
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
                (out_dir / "gpu_bench.json").write_text(json.dumps(results, indent=1))
    print(f"\n{results['gpu']}, torch {results['torch']}, fp16, {STEPS} steps, CFG")
    print(f"{'arch':6} {'size':>5} {'side':10} {'load s':>7} {'run s':>7} {'it/s':>7} {'peak MiB':>9}")
    by = {}
    for r in results["rows"]:
        by[(r["arch"], r["side"])] = r
        if "error" in r:
            print(f"{r['arch']:6} {r['size']:5} {r['side']:10} error: {r['error']}")
            continue
        print(f"{r['arch']:6} {r['size']:5} {r['side']:10} {r['load_s']:7.2f} {r['run_s']:7.2f} {r['it_s']:7.2f} "
              f"{r['peak_vram_mib']:9}")
    for arch in ("sd15", "sdxl"):
        o, d = by.get((arch, "ours")), by.get((arch, "diffusers"))
        if o and d and "error" not in o and "error" not in d:
            print(f"{arch}: it/s ours/diffusers = {o['it_s'] / d['it_s']:.2f} (higher is better), "
                  f"peak VRAM ours/diffusers = {o['peak_vram_mib'] / d['peak_vram_mib']:.2f}, "
                  f"load ours/diffusers = {o['load_s'] / d['load_s']:.2f}")


if __name__ == "__main__":
    if sys.argv[1] == "measure":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        main(sys.argv[1], sys.argv[2], set(sys.argv[3:]) or {"sd15", "sdxl"})
