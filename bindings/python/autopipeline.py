"""autopipeline for Python through ctypes (standard library only).

    import autopipeline as ap

    with ap.Pipeline.from_pretrained("runwayml/stable-diffusion-v1-5", "text2img") as pipe:
        images = pipe.run("a squirrel eating a burger", num_inference_steps=25, seed=42,
                          progress=lambda step, total: print(f"{step}/{total}"))
        images[0].save_png("out.png")

The native library is found from $AUTOPIPELINE_LIBRARY, next to this file, or the system search path.
Every argument left as None means "the pipeline's default", as in diffusers. Failures raise
AutopipelineError (with .status); a progress callback returning False cancels (status CANCELLED), and
an exception raised inside it cancels the work and is re-raised from the call. ctypes releases the GIL
during native calls, so several threads may run on one pipeline at once.
"""

import ctypes
import ctypes.util
import json
import os
import sys

__all__ = ["AutopipelineError", "Image", "Pipeline", "version", "TASKS", "LOG_LEVELS"]

OK, INVALID_ARGUMENT, NOT_FOUND, UNSUPPORTED, INVALID_MODEL, IO, CANCELLED, INTERNAL, TIMEOUT = range(9)
STATUS_NAMES = ["OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNSUPPORTED", "INVALID_MODEL", "IO", "CANCELLED", "INTERNAL",
                "TIMEOUT"]
TASKS = {"text2img": 0, "text-to-image": 0, "img2img": 1, "image-to-image": 1, "inpaint": 2, "inpainting": 2}

_PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)
_LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_char_p, ctypes.c_void_p)
LOG_LEVELS = ["debug", "info", "warn", "error"]  # AP_LOG_DEBUG .. AP_LOG_ERROR


class _LoadParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("device", ctypes.c_char_p),
        ("variant", ctypes.c_char_p),
        ("revision", ctypes.c_char_p),
        ("cache_dir", ctypes.c_char_p),
        ("token", ctypes.c_char_p),
        ("local_files_only", ctypes.c_int32),
        ("progress", _PROGRESS_FN),
        ("progress_user_data", ctypes.c_void_p),
        ("dtype", ctypes.c_char_p),
        ("preload", ctypes.c_int32),
    ]


class _Image(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_uint32),
        ("height", ctypes.c_uint32),
        ("channels", ctypes.c_uint32),
        ("stride", ctypes.c_uint32),
        ("data", ctypes.POINTER(ctypes.c_uint8)),
    ]


class _Images(ctypes.Structure):
    _fields_ = [("count", ctypes.c_size_t), ("images", ctypes.POINTER(_Image))]


class _RunParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("prompt", ctypes.c_char_p),
        ("negative_prompt", ctypes.c_char_p),
        ("prompt_2", ctypes.c_char_p),
        ("negative_prompt_2", ctypes.c_char_p),
        ("num_inference_steps", ctypes.c_int32),
        ("guidance_scale", ctypes.c_float),
        ("strength", ctypes.c_float),
        ("width", ctypes.c_int32),
        ("height", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("num_images_per_prompt", ctypes.c_int32),
        ("guidance_rescale", ctypes.c_float),
        ("clip_skip", ctypes.c_int32),
        ("output_channels", ctypes.c_int32),
        ("image", ctypes.POINTER(_Image)),
        ("mask", ctypes.POINTER(_Image)),
        ("padding_mask_crop", ctypes.c_int32),
        ("scheduler", ctypes.c_char_p),
        ("scheduler_config_json", ctypes.c_char_p),
        ("progress", _PROGRESS_FN),
        ("progress_user_data", ctypes.c_void_p),
        ("preview", ctypes.c_void_p),  # previews and jobs are not wrapped here (see the C# / C++ bindings)
        ("preview_user_data", ctypes.c_void_p),
        ("preview_every", ctypes.c_int32),
        ("preview_mode", ctypes.c_int32),
        ("vae_tiling", ctypes.c_int32),
        ("vae_slicing", ctypes.c_int32),
        ("rng", ctypes.c_char_p),
        # Added in 0.1.1 (read by the library only when struct_size covers them).
        ("timesteps", ctypes.POINTER(ctypes.c_double)),
        ("num_timesteps", ctypes.c_uint32),
        ("sigmas", ctypes.POINTER(ctypes.c_double)),
        ("num_sigmas", ctypes.c_uint32),
        # Added in 0.1.2.
        ("reserved0", ctypes.c_uint32),
        ("max_sequence_length", ctypes.c_int32),
        ("true_cfg_scale", ctypes.c_float),
        ("prompt_3", ctypes.c_char_p),
        ("negative_prompt_3", ctypes.c_char_p),
        ("skip_guidance_layers", ctypes.POINTER(ctypes.c_uint32)),
        ("num_skip_guidance_layers", ctypes.c_uint32),
        ("skip_layer_guidance_scale", ctypes.c_float),
        ("skip_layer_guidance_start", ctypes.c_float),
        ("skip_layer_guidance_stop", ctypes.c_float),
    ]


def _load_library():
    names = []
    if os.environ.get("AUTOPIPELINE_LIBRARY"):
        names.append(os.environ["AUTOPIPELINE_LIBRARY"])
    here = os.path.dirname(os.path.abspath(__file__))
    for n in ("libautopipeline.so", "libautopipeline.dylib", "autopipeline.dll"):
        names.append(os.path.join(here, n))
    found = ctypes.util.find_library("autopipeline")
    if found:
        names.append(found)
    for name in names:
        if os.path.isabs(name) and not os.path.exists(name):
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise OSError("libautopipeline not found: set AUTOPIPELINE_LIBRARY to its path")


_lib = _load_library()


def _sig(name, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_last_error = _sig("ap_last_error", ctypes.c_char_p)
_version = _sig("ap_version", ctypes.c_char_p)
try:
    # Defaults come through a pointer and this binding's struct size, so the structs can grow (the
    # by-value ap_*_default symbols stay frozen at the 0.1.0 layout for old binaries).
    _load_params_init = _sig("ap_load_params_init", ctypes.c_int32, ctypes.POINTER(_LoadParams), ctypes.c_size_t)
    _run_params_init = _sig("ap_run_params_init", ctypes.c_int32, ctypes.POINTER(_RunParams), ctypes.c_size_t)
except AttributeError:
    raise ImportError("libautopipeline " + _version().decode() + " is older than this binding (no ap_*_init): "
                      "use the autopipeline.py shipped with the library") from None
_from_pretrained = _sig("ap_from_pretrained", ctypes.c_int32, ctypes.c_char_p, ctypes.c_int32,
                        ctypes.POINTER(_LoadParams), ctypes.POINTER(ctypes.c_void_p))
_from_pipe = _sig("ap_from_pipe", ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p,
                  ctypes.POINTER(ctypes.c_void_p))
_pipeline_free = _sig("ap_pipeline_free", None, ctypes.c_void_p)
_run = _sig("ap_run", ctypes.c_int32, ctypes.c_void_p, ctypes.POINTER(_RunParams),
            ctypes.POINTER(ctypes.POINTER(_Images)))
_images_free = _sig("ap_images_free", None, ctypes.POINTER(_Images))
_image_save_png = _sig("ap_image_save_png", ctypes.c_int32, ctypes.POINTER(_Image), ctypes.c_char_p)
_image_load = _sig("ap_image_load", ctypes.c_int32, ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(_Image)))
_image_free = _sig("ap_image_free", None, ctypes.POINTER(_Image))
_set_log_callback = _sig("ap_pipeline_set_log_callback", ctypes.c_int32, ctypes.c_void_p, _LOG_FN, ctypes.c_void_p,
                         ctypes.c_int32)
_pipeline_info = _sig("ap_pipeline_info", ctypes.c_int32, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))
_pipeline_config_json = _sig("ap_pipeline_config_json", ctypes.c_int32, ctypes.c_void_p,
                             ctypes.POINTER(ctypes.c_void_p))
_supported_families = _sig("ap_supported_families", ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p))
_string_free = _sig("ap_string_free", None, ctypes.c_void_p)
_randn = _sig("ap_randn", ctypes.c_int32, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint64,
              ctypes.POINTER(ctypes.c_size_t), ctypes.c_size_t, ctypes.POINTER(ctypes.c_float))




def _defaults(struct, init):
    """`struct` of this binding's layout at the library's defaults; a library older than the layout
    refuses its size (ImportError-worthy, but only reported when used)."""
    p = struct()
    _check(init(ctypes.byref(p), ctypes.sizeof(struct)))
    return p


def _doubles(values):
    """A C array of `values` (kept alive by the returned tuple's first item), or (None, 0)."""
    if values is None:
        return None, 0
    values = [float(v) for v in values]
    arr = (ctypes.c_double * len(values))(*values)
    return arr, len(values)


def _json(call, *args):
    """Calls an ap_* function that hands out a JSON string; returns it parsed, freeing the string."""
    out = ctypes.c_void_p()
    status = call(*args, ctypes.byref(out))
    try:
        _check(status)
        return json.loads(ctypes.string_at(out.value).decode())
    finally:
        _string_free(out)


def supported_families():
    """diffusers' AutoPipeline families: a list of {family, text2img, img2img, inpaint, status}."""
    return _json(_supported_families)


def version():
    """The native library's version, e.g. "0.1.0"."""
    return _version().decode()


def randn(sizes, seed, rng="cpu", device=None):
    """Successive torch.randn draws of `sizes` elements from torch.Generator(rng).manual_seed(seed),
    as lists of floats (see ap_randn)."""
    sizes = [int(n) for n in sizes]
    c_sizes = (ctypes.c_size_t * len(sizes))(*sizes)
    out = (ctypes.c_float * max(1, sum(sizes)))()
    _check(_randn(_utf8(rng), _utf8(device), seed, c_sizes, len(sizes), out))
    draws, at = [], 0
    for n in sizes:
        draws.append(list(out[at:at + n]))
        at += n
    return draws


class AutopipelineError(Exception):
    """A failed call: .status (an int, see STATUS_NAMES) and the library's message."""

    def __init__(self, status, message):
        super().__init__(message or STATUS_NAMES[status])
        self.status = status
        self.status_name = STATUS_NAMES[status] if 0 <= status < len(STATUS_NAMES) else str(status)


def _check(status):
    if status != OK:
        # Read at once: the message is thread-local and overwritten by the next call.
        raise AutopipelineError(status, (_last_error() or b"").decode("utf-8", "replace"))


def _utf8(s):
    return None if s is None else os.fsencode(s) if isinstance(s, os.PathLike) else s.encode("utf-8")


class _Progress:
    """Wraps a Python callable as the C callback; exceptions are kept and re-raised after the call."""

    def __init__(self, fn):
        self.fn = fn
        self.error = None
        self.c = _PROGRESS_FN(self._call) if fn is not None else _PROGRESS_FN()

    def _call(self, step, total, _user_data):
        try:
            return 0 if self.fn(step, total) is False else 1
        except BaseException as e:  # never let it unwind into C
            self.error = e
            return 0

    def finish(self, status):
        if status != OK:
            message = (_last_error() or b"").decode("utf-8", "replace")
            if self.error is not None:
                raise self.error
            raise AutopipelineError(status, message)


class Image:
    """8-bit pixels with packed rows, top row first: RGBA8 (channels 4), RGB8 (3) or a mask (1)."""

    def __init__(self, width, height, channels, pixels):
        pixels = bytes(pixels)
        if len(pixels) != width * height * channels or channels not in (1, 3, 4):
            raise ValueError("pixels must hold width * height * channels bytes, channels 1, 3 or 4")
        self.width, self.height, self.channels, self.pixels = width, height, channels, pixels

    def __repr__(self):
        return f"Image({self.width}x{self.height}x{self.channels})"

    @classmethod
    def _from_c(cls, c):
        row = c.width * c.channels
        raw = ctypes.string_at(c.data, c.stride * c.height)
        if c.stride != row:
            raw = b"".join(raw[y * c.stride:y * c.stride + row] for y in range(c.height))
        return cls(c.width, c.height, c.channels, raw)

    def _to_c(self):
        buf = (ctypes.c_uint8 * len(self.pixels)).from_buffer_copy(self.pixels)
        img = _Image(self.width, self.height, self.channels, self.width * self.channels,
                     ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint8)))
        img._keep = buf
        return img

    @classmethod
    def load(cls, path):
        """Reads a PNG or JPEG file as RGB8."""
        out = ctypes.POINTER(_Image)()
        _check(_image_load(_utf8(path), ctypes.byref(out)))
        try:
            return cls._from_c(out.contents)
        finally:
            _image_free(out)

    def save_png(self, path):
        c = self._to_c()
        _check(_image_save_png(ctypes.byref(c), _utf8(path)))

    def to_pil(self):
        """A PIL.Image (needs Pillow)."""
        from PIL import Image as PILImage
        return PILImage.frombytes({1: "L", 3: "RGB", 4: "RGBA"}[self.channels], (self.width, self.height), self.pixels)


def _task(task):
    if isinstance(task, int):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"task must be one of {sorted(TASKS)}") from None


class Pipeline:
    """A loaded pipeline; close() it (or use `with`). Pipelines made by from_pipe share the models."""

    def __init__(self, handle, task):
        self._handle = handle
        self.task = task
        self._log = None  # the C callback object, alive as long as the pipeline may call it

    @classmethod
    def from_pretrained(cls, model, task="text2img", *, device=None, variant=None, revision=None,
                        cache_dir=None, token=None, local_files_only=False, dtype=None, preload=False,
                        progress=None):
        """diffusers' AutoPipelineFor<Task>.from_pretrained(model): a local folder or a hub id.

        preload=True reads every weight now; by default float32 CPU weights are read on first use."""
        p = _defaults(_LoadParams, _load_params_init)
        p.device, p.variant, p.revision = _utf8(device), _utf8(variant), _utf8(revision)
        p.cache_dir, p.token = _utf8(cache_dir), _utf8(token)
        p.local_files_only = 1 if local_files_only else 0
        p.dtype = _utf8(dtype)
        p.preload = 1 if preload else 0
        cb = _Progress(progress)
        p.progress = cb.c
        out = ctypes.c_void_p()
        cb.finish(_from_pretrained(_utf8(os.fspath(model)), _task(task), ctypes.byref(p), ctypes.byref(out)))
        return cls(out.value, _task(task))

    @classmethod
    def from_pipe(cls, pipe, task, **overrides):
        """diffusers' AutoPipelineFor<Task>.from_pipe(pipe, **overrides)."""
        out = ctypes.c_void_p()
        js = json.dumps(overrides).encode() if overrides else None
        _check(_from_pipe(pipe._live(), _task(task), js, ctypes.byref(out)))
        return cls(out.value, _task(task))

    def run(self, prompt="", *, negative_prompt=None, prompt_2=None, negative_prompt_2=None,
            num_inference_steps=None, guidance_scale=None, strength=None, width=None, height=None,
            seed=0, num_images_per_prompt=None, guidance_rescale=None, clip_skip=None,
            output_channels=None, image=None, mask_image=None, padding_mask_crop=None, scheduler=None,
            scheduler_config=None, progress=None, vae_tiling=False, vae_slicing=False, rng=None,
            timesteps=None, sigmas=None, max_sequence_length=None, true_cfg_scale=None, prompt_3=None,
            negative_prompt_3=None, skip_guidance_layers=None, skip_layer_guidance_scale=None,
            skip_layer_guidance_start=None, skip_layer_guidance_stop=None):
        """Generates images (a list of Image). `progress(step, total)` returning False cancels.

        `scheduler`: a diffusers scheduler class name or alias ("euler_a", "dpm++2m_karras", …);
        `scheduler_config`: a dict of scheduler config overrides, e.g. {"use_karras_sigmas": True}.
        `vae_tiling` / `vae_slicing`: diffusers' enable_vae_tiling() / enable_vae_slicing().
        `rng`: "cpu" (default) or "cuda": which torch.Generator `seed` is for.
        `timesteps` / `sigmas`: custom descending lists (diffusers' timesteps= / sigmas=), for
        schedulers that take them.
        `max_sequence_length` / `true_cfg_scale`: FLUX's (and SD3's) T5 prompt length, FLUX's true CFG scale.
        `prompt_3` / `negative_prompt_3` / `skip_guidance_layers` / `skip_layer_guidance_*`: SD3's.
        """
        p = _defaults(_RunParams, _run_params_init)
        p.prompt = _utf8(prompt)
        p.negative_prompt, p.prompt_2 = _utf8(negative_prompt), _utf8(prompt_2)
        p.negative_prompt_2 = _utf8(negative_prompt_2)
        for name, value in (("num_inference_steps", num_inference_steps), ("guidance_scale", guidance_scale),
                            ("strength", strength), ("width", width), ("height", height),
                            ("num_images_per_prompt", num_images_per_prompt),
                            ("guidance_rescale", guidance_rescale), ("clip_skip", clip_skip),
                            ("output_channels", output_channels), ("padding_mask_crop", padding_mask_crop),
                            ("max_sequence_length", max_sequence_length), ("true_cfg_scale", true_cfg_scale),
                            ("skip_layer_guidance_scale", skip_layer_guidance_scale),
                            ("skip_layer_guidance_start", skip_layer_guidance_start),
                            ("skip_layer_guidance_stop", skip_layer_guidance_stop)):
            if value is not None:
                setattr(p, name, value)
        p.seed = seed
        p.scheduler = _utf8(scheduler)
        p.scheduler_config_json = json.dumps(scheduler_config).encode() if scheduler_config is not None else None
        p.vae_tiling, p.vae_slicing = int(bool(vae_tiling)), int(bool(vae_slicing))
        p.rng = _utf8(rng)
        p.prompt_3, p.negative_prompt_3 = _utf8(prompt_3), _utf8(negative_prompt_3)
        keep = []
        if skip_guidance_layers:
            layers = (ctypes.c_uint32 * len(skip_guidance_layers))(*skip_guidance_layers)
            keep.append(layers)
            p.skip_guidance_layers = ctypes.cast(layers, ctypes.POINTER(ctypes.c_uint32))
            p.num_skip_guidance_layers = len(skip_guidance_layers)
        for name, values in (("timesteps", timesteps), ("sigmas", sigmas)):
            arr, n = _doubles(values)
            if arr is not None:
                keep.append(arr)
                setattr(p, name, ctypes.cast(arr, ctypes.POINTER(ctypes.c_double)))
                setattr(p, "num_" + name, n)
        for name, img in (("image", image), ("mask", mask_image)):
            if img is not None:
                c = img._to_c()
                keep.append(c)
                setattr(p, name, ctypes.pointer(c))
        cb = _Progress(progress)
        p.progress = cb.c
        out = ctypes.POINTER(_Images)()
        status = _run(self._live(), ctypes.byref(p), ctypes.byref(out))
        try:
            cb.finish(status)
            return [Image._from_c(out.contents.images[i]) for i in range(out.contents.count)]
        finally:
            _images_free(out)

    def set_log_callback(self, fn, min_level="warn"):
        """Sends the messages of runs started afterwards (warnings such as a truncated prompt, failures,
        timings at "debug") at `min_level` ("debug", "info", "warn", "error") and above to
        `fn(level, message)`, level as one of those names; None turns logging off. `fn` may be called
        from several threads at once (runs in parallel); an exception in it is printed and ignored:
        logging never fails a run. Pipelines made by from_pipe start without one."""
        if min_level not in LOG_LEVELS:
            raise ValueError(f"min_level must be one of {LOG_LEVELS}, not {min_level!r}")

        def call(level, message, _user_data):
            try:
                name = LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS) else str(level)
                fn(name, message.decode("utf-8", "replace"))
            except BaseException:  # never let it unwind into C
                import traceback
                traceback.print_exc()

        c = _LOG_FN(call) if fn is not None else _LOG_FN()
        _check(_set_log_callback(self._live(), c, None, LOG_LEVELS.index(min_level)))
        # The previous callback may still serve a run in progress on another thread: keep it too.
        self._log = (c, self._log) if fn is not None else self._log

    def info(self):
        """What this pipeline is (family, class_name, task, default size, latent channels, VAE scale
        factor, device, dtype, scheduler, components), as a dict (ap_pipeline_info)."""
        return _json(_pipeline_info, self._live())

    def config(self):
        """diffusers' pipe.config after from_pipe overrides, as a dict (ap_pipeline_config_json)."""
        return _json(_pipeline_config_json, self._live())

    def _live(self):
        if not self._handle:
            raise ValueError("the pipeline is closed")
        return self._handle

    def close(self):
        handle, self._handle = self._handle, None
        if handle:
            _pipeline_free(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if not sys.is_finalizing():
            self.close()
