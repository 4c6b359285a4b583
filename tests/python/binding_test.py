"""The ctypes binding (bindings/python/autopipeline.py) on the tiny SD 1.5 checkpoint.

    AUTOPIPELINE_LIBRARY=target/debug/libautopipeline.so PYTHONPATH=bindings/python \
        python3 tests/python/binding_test.py tests/data OUT_DIR
"""
import os
import sys

import autopipeline as ap

data, out = sys.argv[1], sys.argv[2]
sd15 = os.path.join(data, "checkpoints", "sd15-tiny")
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL", what, file=sys.stderr)


def expect_error(status, fn, what):
    try:
        fn()
        check(False, what + ": no error")
    except ap.AutopipelineError as e:
        check(e.status == status, f"{what}: status {e.status_name} ({e})")
        return str(e)
    return ""


class Boom(Exception):
    pass


def boom(step, total):
    if step == 2:
        raise Boom()


# The binding's structs have the C layouts (sizes and offsets from the Rust test, AP_LAYOUTS).
_structs = {"ap_load_params": ap._LoadParams, "ap_run_params": ap._RunParams}
_layout = os.environ.get("AP_LAYOUTS", "").split()
check(len(_layout) >= 2, "AP_LAYOUTS is set")
for name, want in zip(_layout[::2], _layout[1::2]):
    struct, _, field = name.partition(".")
    if struct not in _structs:
        continue  # not wrapped here (jobs)
    got = getattr(_structs[struct], field).offset if field else ap.ctypes.sizeof(_structs[struct])
    check(got == int(want), f"{name} is {got} in Python, {want} in C")

loaded = []
with ap.Pipeline.from_pretrained(sd15, "text2img", local_files_only=True, preload=True,
                                 progress=lambda s, t: loaded.append((s, t))) as pipe:
    check(loaded and loaded[-1][0] == loaded[-1][1], "load progress reached its total")
    check(ap.version().count(".") == 2, "version")
    steps = []
    images = pipe.run("A painting of a squirrel eating a burger", negative_prompt="blurry, low quality",
                      seed=42, num_inference_steps=4, guidance_scale=7.5, width=64, height=64,
                      progress=lambda s, t: steps.append(s))
    check(len(images) == 1 and (images[0].width, images[0].height, images[0].channels) == (64, 64, 4), "64x64 RGBA8")
    check(steps == [1, 2, 3, 4, 5], f"progress steps {steps}")
    images[0].save_png(os.path.join(out, "t2i.png"))

    logs = []
    pipe.set_log_callback(lambda level, message: logs.append((level, message)), "debug")
    pipe.run("x", num_inference_steps=2, width=64, height=64)
    check(any(level == "debug" and "run finished" in m for level, m in logs), f"debug log messages: {logs}")
    pipe.set_log_callback(None)
    count = len(logs)
    pipe.run("x", num_inference_steps=2, width=64, height=64)
    check(len(logs) == count, "no log messages once the callback is removed")
    try:
        pipe.set_log_callback(print, "loud")
        check(False, "an unknown log level was accepted")
    except ValueError:
        pass

    expect_error(ap.CANCELLED, lambda: pipe.run("x", num_inference_steps=4, width=64, height=64,
                                                progress=lambda s, t: s < 2), "cancel")
    try:
        pipe.run("x", num_inference_steps=4, width=64, height=64, progress=boom)
        check(False, "callback exception not raised")
    except Boom:
        pass
    check(len(pipe.run("euler", num_inference_steps=2, width=64, height=64, scheduler="euler_a",
                       scheduler_config={"timestep_spacing": "trailing"})) == 1, "scheduler by alias with overrides")
    expect_error(ap.INVALID_ARGUMENT, lambda: pipe.run("x", scheduler="no-such-scheduler"), "unknown scheduler")
    # Introspection.
    info = pipe.info()
    check((info["class_name"], info["task"], info["dtype"]) == ("StableDiffusionPipeline", "text2img", "f32"),
          f"info {info}")
    check([c["name"] for c in info["components"]] == ["text_encoder", "tokenizer", "unet", "vae", "scheduler"],
          f"components {info['components']}")
    check(pipe.config()["requires_safety_checker"] is False, f"config {pipe.config()}")
    with ap.Pipeline.from_pipe(pipe, "img2img", requires_safety_checker=True) as i2i:
        check(i2i.config()["requires_safety_checker"] is True, "config after from_pipe overrides")
        check(i2i.info()["class_name"] == "StableDiffusionImg2ImgPipeline", "from_pipe class")
    families = {f["family"]: f for f in ap.supported_families()}
    check(families["stable-diffusion"]["status"] == "supported", "SD supported")
    check(any(f["status"] == "not supported yet" for f in families.values()), "some families not supported yet")

    # Custom timesteps / sigmas reach the library, which reads every value.
    msg = expect_error(ap.INVALID_ARGUMENT, lambda: pipe.run("x", num_inference_steps=1, width=64, height=64,
                                                             timesteps=[999, float("nan")]), "NaN timestep")
    check("timesteps[1]" in msg, f"the message names the timestep: {msg}")
    msg = expect_error(ap.INVALID_ARGUMENT, lambda: pipe.run("x", num_inference_steps=1, width=64, height=64,
                                                             sigmas=[1.0, 0.5, float("inf")]), "infinite sigma")
    check("sigmas[2]" in msg, f"the message names the sigma: {msg}")
    msg = expect_error(ap.INVALID_ARGUMENT, lambda: pipe.run("x", width=60, height=64), "width 60")
    check("divisible by 8" in msg, "diffusers' message")
    expect_error(ap.NOT_FOUND, lambda: ap.Pipeline.from_pretrained(os.path.join(data, "unsupported", "nope")), "missing")
    expect_error(ap.UNSUPPORTED, lambda: ap.Pipeline.from_pretrained(os.path.join(data, "unsupported", "shap-e-img2img")),
                 "shap-e")

    with ap.Pipeline.from_pipe(pipe, "img2img", requires_safety_checker=True) as i2i:
        init = ap.Image.load(os.path.join(data, "images", "init_48x64.png"))
        check((init.width, init.height, init.channels) == (48, 64, 3), "Image.load")
        res = i2i.run("an oil painting of a house", negative_prompt="ugly", seed=5, num_inference_steps=4,
                      guidance_scale=7.5, strength=0.8, image=init, output_channels=3)
        check(len(res) == 1 and (res[0].width, res[0].height, res[0].channels) == (48, 64, 3), "img2img RGB8")
try:
    pipe.run("closed")
    check(False, "run after close")
except ValueError:
    pass

if failures:
    sys.exit(1)
print("python binding: all checks passed")
