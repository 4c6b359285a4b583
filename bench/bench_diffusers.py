"""The diffusers/PyTorch side of the benchmark: the same measurements, in the same order, as
`cargo run --release --example bench -- measure` (see bench/README.md). Prints one JSON object.

    python bench/bench_diffusers.py --model DIR --threads N [--quick] [--json OUT]
"""

import argparse
import gc
import json
import os
import re
import statistics
import sys
import time

PROMPT = "a photograph of an astronaut riding a horse on mars, detailed, 8k"
NEGATIVE = "blurry, low quality"


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def rss_mb() -> float:
    return status_kb("VmRSS") / 1024


def reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mb() -> float:
    return status_kb("VmHWM") / 1024


def timed(fn, warmup: int, runs: int):
    """Median wall seconds of `runs` calls after `warmup` calls, mean CPU seconds per call, and the
    wall seconds of the first call (the warm-up: it reads the pages of the memory-mapped weights)."""
    first = None
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        first = time.perf_counter() - t if first is None else first
    times = []
    cpu = time.process_time()
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), (time.process_time() - cpu) / runs, first


def put(res: dict, key: str, timing) -> None:
    res[f"{key}_s"], res[f"{key}_cpu_s"] = timing[0], timing[1]
    if len(timing) > 2 and timing[2] is not None:
        res[f"first_{key}_s"] = timing[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (one timed run each)")
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    runs = 1 if args.quick else 3
    big_runs = 1 if args.quick else 2
    res = {"impl": "diffusers", "threads": args.threads, "torch": torch.__version__}
    import diffusers

    res["diffusers"] = diffusers.__version__
    peaks = []

    def phase_peak(key: str):
        p = peak_mb()
        peaks.append(p)
        res[key] = p

    reset_peak()
    t, cpu = time.perf_counter(), time.process_time()
    pipe = AutoPipelineForText2Image.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    put(res, "load", (time.perf_counter() - t, time.process_time() - cpu))
    phase_peak("load_peak_mb")
    res["rss_after_load_mb"] = rss_mb()

    dev = torch.device("cpu")

    def encode():
        return pipe.encode_prompt(PROMPT, dev, 1, True, NEGATIVE)

    with torch.inference_mode():
        reset_peak()
        put(res, "text_encoder", timed(encode, 1, runs))
        phase_peak("text_encoder_peak_mb")
        cond, uncond = encode()
        context = torch.cat([uncond, cond])

        g = torch.Generator("cpu").manual_seed(0)
        for side, warm, n in [(256, 1, runs), (512, 1, big_runs)]:
            lat = side // 8
            x = torch.randn((2, 4, lat, lat), generator=g)
            t_step = torch.tensor(500)
            reset_peak()
            put(res, f"unet_step_{side}", timed(lambda: pipe.unet(x, t_step, encoder_hidden_states=context), warm, n))
            phase_peak(f"unet_step_{side}_peak_mb")

        z = torch.randn((1, 4, 64, 64), generator=g)
        reset_peak()
        put(res, "vae_decode_512", timed(lambda: pipe.vae.decode(z / pipe.vae.config.scaling_factor), 1, big_runs))
        phase_peak("vae_decode_512_peak_mb")

    def t2i():
        return pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            width=256,
            height=256,
            num_inference_steps=4,
            generator=torch.Generator("cpu").manual_seed(1),
        ).images

    reset_peak()
    put(res, "t2i_256x4", timed(t2i, 0, runs))
    phase_peak("t2i_256x4_peak_mb")

    gc.collect()
    before = rss_mb()
    reset_peak()
    i2i = AutoPipelineForImage2Image.from_pipe(pipe)
    gc.collect()
    res["from_pipe_added_mb"] = rss_mb() - before
    phase_peak("from_pipe_peak_mb")
    del i2i
    res["peak_rss_mb"] = max(peaks)
    # The load plus the first call of each model, where memory-mapped weights are actually read (the
    # same sum as the Rust side's).
    parts = ["load_s", "first_text_encoder_s", "first_unet_step_256_s", "first_vae_decode_512_s"]
    if all(k in res for k in parts):
        res["cold_start_s"] = sum(res[k] for k in parts)

    text = json.dumps(res, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
