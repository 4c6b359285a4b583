"""References for the `sd3` family (StableDiffusion3Pipeline / StableDiffusion3Img2ImgPipeline /
StableDiffusion3InpaintPipeline, SD3-medium and SD3.5-medium (MMDiT-X) layouts), made with diffusers 0.42.1,
transformers 5.24.0, tokenizers 0.23.3 and torch 2.15 on CPU, without the hub:

    /work/venv/bin/python scripts/references/make_sd3.py     # ~65 s on 2 CPU cores; rewrites what it made only

Deterministic: two runs give byte-identical files (checked with sha256sum over everything it writes).
It imports make_flux.py for its helpers (make_flux's main() does not run on import).

What it writes, and why:

* tests/data/checkpoints/sd3-tiny (SD3-medium-like), written by `StableDiffusion3Pipeline(...).save_pretrained(dir,
  safe_serialization=True)`:
  - text_encoder: CLIPTextModelWithProjection (hidden 16, projection 16, 2 layers, 2 heads, intermediate 32,
    quick_gelu, eos_token_id 2 = transformers' legacy "argmax of the ids" pooling) over the sd15-tiny CLIP vocab;
    tokenizer: a copy of sd15-tiny's CLIP tokenizer folder (legacy vocab.json/merges.txt layout, pad <|endoftext|>);
  - text_encoder_2: CLIPTextModelWithProjection (hidden 32, projection 32, 2 layers, 4 heads, intermediate 64,
    gelu as CLIP-bigG); tokenizer_2: the same copy with pad_token "!" (id 0) in special_tokens_map.json and
    tokenizer_config.json, as SD3 ships CLIP-G's tokenizer;
  - text_encoder_3: T5EncoderModel (d_model 64, d_kv 16, d_ff 96, 2 layers, 4 heads, gated-gelu, 8 relative buckets,
    max distance 20, 800 ids); tokenizer_3: a byte-identical copy of checkpoints/flux-dev-tiny/tokenizer_2
    (make_flux.py's T5 tokenizer);
  - transformer: SD3Transformer2DModel(sample_size 32, patch 2, 16 -> 16 channels, 3 layers, 2 heads of 16,
    joint_attention_dim 64 (= T5 d_model: the CLIP concat 16+32=48 is zero-padded to 64 as SD3 pads 2048 to 4096),
    caption_projection_dim 32, pooled_projection_dim 48 (= 16+32 pooled), pos_embed_max_size 48, qk_norm None);
  - vae: AutoencoderKL (block_out_channels (8, 16, 16, 16): VAE scale factor 8, 16 latent channels, no quant convs,
    shift_factor 0.0609, scaling_factor 1.5305 as SD3's VAE);
  - scheduler: FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0) as SD3 ships it.
  Every parameter of the transformer AND of the three text encoders is re-drawn (the constructors' inits leave
  norm scales at 1, biases at 0 and CLIP at std 0.02, which would hide bugs): matrices N(0, 1/fan_in), 1-D
  parameters N(0, 0.3^2), norm scales 1 + N(0, 0.3^2). Buffers (the transformer's persistent sincos `pos_embed`,
  a 48x48 grid) are left as diffusers computes them. The VAE keeps torch's default init (as make_flux.py).
* tests/data/checkpoints/sd35-tiny (SD3.5-medium-like): the same files except transformer/ (qk_norm "rms_norm",
  dual_attention_layers (0,) = MMDiT-X in block 0, 3 layers, other weights); every other file is byte-identical to
  sd3-tiny's (checked), so git stores it once.
* tests/data/checkpoints/sd3-tiny-no-t5: sd3-tiny saved from a pipeline built with text_encoder_3=None,
  tokenizer_3=None (model_index.json holds [null, null] for both): SD3 without T5, as run on small cards; all its
  files but model_index.json are byte-identical to sd3-tiny's. diffusers only loads it with
  `from_pretrained(dir, text_encoder_3=None, tokenizer_3=None)` (the cases' `load` records the call).
  The three add ~2.9 MB of non-duplicate bytes (printed; the transformer files carry the persistent 48x48 sincos
  pos_embed buffer, 295 KB each).
* tests/data/cases/sd3-*, sd35-*/ (see `CASES`): recorded runs in make_flux.py's case format, with SD3's extras:
  embeddings prompt_embeds (the joint [CLIP-L | CLIP-G | zero pad] (77 tokens) ; T5 (max_sequence_length tokens)
  sequence), pooled_prompt_embeds (CLIP-L text_embeds | CLIP-G text_embeds), negative_* under CFG; the token ids each
  text encoder received (`text_encoder_input_ids`); transformer_input_step0 (hidden_states = the whole CFG batch,
  timestep as passed = scheduler timestep on the 0..1000 scale, shapes of encoder_hidden_states and
  pooled_projections), transformer_output_step0 (the whole batch as the transformer returns it, [uncond, cond] under
  CFG), transformer_calls (step, timestep, batch, skip_layers of every call), transformer_output_first_skip (the
  first skip-layer-guidance call's output), schedule (scheduler sigmas/timesteps right after set_timesteps, mu),
  get_timesteps (img2img/inpaint: the strength-trimmed timesteps), scale_noise_calls, image_latents, mask /
  masked_image_latents (inpaint), vae_decode_input (the latents the VAE decoder got: inpaint does NOT add
  shift_factor back), latents_per_step (callback), the diffusers warnings, and which pipeline method made each
  randn_tensor draw (`drawn_by`: noise / vae_encode_image_sample / vae_encode_masked_image_sample). Arrays above
  65536 values are stored sampled as in make_flux.py (none here: all cases are small). padding_mask_crop needs
  output_type "pil" (the crop case records the PIL image after apply_overlay as uint8 / 255).
* tests/data/sd3_errors.json: diffusers' outcome for invalid or odd arguments and components (`error_probes`).
* `torch_layout_spread` in the img2img/inpaint cases without a crop, as make_flux.py (~1e-5 here).
"""

import hashlib
import inspect
import json
import os
import re
import shutil
import sys

import numpy as np
import torch
from PIL import Image

import make_flux  # noqa: F401  (sets RAYON/TOKENIZERS env, asserts versions; its main() does not run)
import diffusers  # noqa: E402
import transformers  # noqa: E402
from make_flux import (capture_diffusers_log, folder_bytes, open_images, release_log,  # noqa: E402
                       save_arr)

import capture  # noqa: E402
from capture import DATA, dump_json, install_randn_patch, jsonable, write_error_case  # noqa: E402

from diffusers import (AutoencoderKL, AutoPipelineForImage2Image, AutoPipelineForInpainting,  # noqa: E402
                       AutoPipelineForText2Image, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       StableDiffusion3Pipeline)
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,  # noqa: E402
                          T5EncoderModel, T5TokenizerFast)

SD3 = "checkpoints/sd3-tiny"
SD35 = "checkpoints/sd35-tiny"
NOT5 = "checkpoints/sd3-tiny-no-t5"
SD15_TOK = os.path.join(DATA, "checkpoints", "sd15-tiny", "tokenizer")
T5_TOK = os.path.join(DATA, "checkpoints", "flux-dev-tiny", "tokenizer_2")
CLIP_VOCAB = 1514
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()

# ------------------------------------------------------------------------------------------------------- checkpoints


def rerandomise(model, seed):
    """Every parameter re-drawn: matrices N(0, 1/fan_in), 1-D N(0, 0.3^2), norm scales 1 + N(0, 0.3^2)."""
    g = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / float(np.sqrt(p[0].numel())))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def clip_encoder(hidden, heads, inter, act, seed):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=hidden, projection_dim=hidden, num_hidden_layers=2,
                         num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=77,
                         hidden_act=act, bos_token_id=0, eos_token_id=2, pad_token_id=1, layer_norm_eps=1e-5)
    return rerandomise(CLIPTextModelWithProjection(cfg), seed + 1000)


def t5_encoder(vocab_size, seed=63):
    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, layer_norm_epsilon=1e-6, tie_word_embeddings=False))
    return rerandomise(t5, seed + 1000)


def sd3_transformer(seed, qk_norm=None, dual_attention_layers=(), joint_attention_dim=64):
    torch.manual_seed(seed)
    tr = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=joint_attention_dim,
                               caption_projection_dim=32, pooled_projection_dim=48, out_channels=16,
                               pos_embed_max_size=48, dual_attention_layers=tuple(dual_attention_layers),
                               qk_norm=qk_norm)
    return rerandomise(tr, seed + 1000)


def tiny_vae():
    torch.manual_seed(71)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=(8, 16, 16, 16),
                         layers_per_block=1, latent_channels=16, norm_num_groups=8, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305,
                         sample_size=64).eval()


def sd3_scheduler():
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # SD3 / SD3.5's scheduler_config


def copy_clip_tokenizer(dst, pad=None):
    """sd15-tiny's legacy CLIP tokenizer folder; pad="!" sets CLIP-G's pad token in both json files."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(SD15_TOK, dst)
    if pad is not None:
        for f in ("special_tokens_map.json", "tokenizer_config.json"):
            path = os.path.join(dst, f)
            with open(path, encoding="utf-8") as fh:
                cfg = json.load(fh)
            cfg["pad_token"] = pad
            dump_json(path, cfg)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def files_of(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def build_checkpoints():
    clip_tok = CLIPTokenizer.from_pretrained(SD15_TOK)
    clip_tok_2 = CLIPTokenizer.from_pretrained(SD15_TOK, pad_token="!")
    t5_tok = T5TokenizerFast.from_pretrained(T5_TOK)
    assert len(clip_tok) == CLIP_VOCAB and clip_tok_2.pad_token_id == 0, (len(clip_tok), clip_tok_2.pad_token_id)
    te1 = clip_encoder(16, 2, 32, "quick_gelu", 61)
    te2 = clip_encoder(32, 4, 64, "gelu", 62)
    te3 = t5_encoder(len(t5_tok))
    vae = tiny_vae()
    tr3 = sd3_transformer(81)
    tr35 = sd3_transformer(82, qk_norm="rms_norm", dual_attention_layers=(0,))
    for ckpt, tr, with_t5 in [(SD3, tr3, True), (SD35, tr35, True), (NOT5, tr3, False)]:
        out = os.path.join(DATA, ckpt)
        if os.path.exists(out):
            shutil.rmtree(out)
        pipe = StableDiffusion3Pipeline(transformer=tr, scheduler=sd3_scheduler(), vae=vae, text_encoder=te1,
                                        tokenizer=clip_tok, text_encoder_2=te2, tokenizer_2=clip_tok_2,
                                        text_encoder_3=te3 if with_t5 else None,
                                        tokenizer_3=t5_tok if with_t5 else None)
        pipe.save_pretrained(out, safe_serialization=True)
        # SD3 ships the CLIP tokenizers in the legacy layout: sd15-tiny's files (tokenizer_2 with pad "!") instead
        # of what transformers 5 writes; tokenizer_3 is flux-dev-tiny's T5 folder as it is.
        copy_clip_tokenizer(os.path.join(out, "tokenizer"))
        copy_clip_tokenizer(os.path.join(out, "tokenizer_2"), pad="!")
        if with_t5:
            shutil.rmtree(os.path.join(out, "tokenizer_3"))
            shutil.copytree(T5_TOK, os.path.join(out, "tokenizer_3"))
        print(f"  {ckpt}: {folder_bytes(out)} bytes", flush=True)
    # identical files between the three (git stores them once), and what is new to the repository
    ref = os.path.join(DATA, SD3)
    for ckpt in (SD35, NOT5):
        root = os.path.join(DATA, ckpt)
        same = [f for f in files_of(root) if os.path.exists(os.path.join(ref, f))
                and sha(os.path.join(root, f)) == sha(os.path.join(ref, f))]
        differ = [f for f in files_of(root) if f not in same]
        expect = ({"model_index.json"} if ckpt == NOT5 else
                  {"transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"})
        assert set(differ) == expect, (ckpt, differ)
    known = set()
    for d, _, fs in os.walk(os.path.join(DATA, "checkpoints")):
        if any(d.startswith(os.path.join(DATA, c)) for c in (SD3, SD35, NOT5)):
            continue
        known.update(sha(os.path.join(d, f)) for f in fs)
    new = {}
    for c in (SD3, SD35, NOT5):
        for f in files_of(os.path.join(DATA, c)):
            p = os.path.join(DATA, c, f)
            h = sha(p)
            if h not in known:
                new[h] = os.path.getsize(p)
    print(f"  new non-duplicate checkpoint bytes: {sum(new.values())} in {len(new)} files", flush=True)


# --------------------------------------------------------------------------------------------------------- recording

def draw_site():
    """Which pipeline method made the randn_tensor draw now being recorded (frames above the recorder)."""
    names, f = [], sys._getframe(2)
    while f is not None:
        names.append(f.f_code.co_name)
        f = f.f_back
    if "sample" in names[:3]:  # DiagonalGaussianDistribution.sample: a VAE encode
        return "vae_encode_masked_image_sample" if "prepare_mask_latents" in names else "vae_encode_image_sample"
    return "noise" if "prepare_latents" in names else "other:" + "/".join(names[:4])


class TaggedDraws(list):
    def __init__(self):
        super().__init__()
        self.tags = []

    def append(self, x):
        super().append(x)
        self.tags.append(draw_site())


def run_sd3(pipe, call_kwargs, seed, output_type="np"):
    """Runs `pipe(**call_kwargs)` with `torch.Generator('cpu').manual_seed(seed)`, recording SD3's intermediates."""
    rec = {"noise": TaggedDraws(), "encodes": [], "calls": [], "in0": None, "out0": None, "skip_out0": None,
           "steps": [], "schedule": [], "get_timesteps": [], "scale_noise": [], "image_latents": None,
           "mask_latents": None, "te_ids": [], "decode_in": None, "encode_vae": None}
    mod = sys.modules[type(pipe).__module__]
    orig_rt = mod.retrieve_timesteps

    def rt(scheduler, *a, **k):
        out = orig_rt(scheduler, *a, **k)
        rec["schedule"].append({
            "num_inference_steps": a[0] if a else k.get("num_inference_steps"),
            "mu": k.get("mu"),
            "sigmas_passed": None if k.get("sigmas") is None else [float(x) for x in k["sigmas"]],
            "scheduler_sigmas": jsonable(scheduler.sigmas),
            "scheduler_timesteps": jsonable(scheduler.timesteps)})
        return out

    orig_encode = pipe.encode_prompt

    def enc(*a, **k):
        out = orig_encode(*a, **k)
        rec["encodes"].append(out)
        return out

    patched = {"encode_prompt": enc}
    if hasattr(pipe, "get_timesteps"):
        orig_gt = pipe.get_timesteps

        def gt(num_inference_steps, strength, device):
            ts, n = orig_gt(num_inference_steps, strength, device)
            rec["get_timesteps"].append({"num_inference_steps_in": num_inference_steps, "strength": strength,
                                         "timesteps": jsonable(ts), "num_inference_steps_out": n,
                                         "begin_index": pipe.scheduler.begin_index})
            return ts, n
        patched["get_timesteps"] = gt
    if hasattr(pipe, "_encode_vae_image"):
        orig_vae_enc = pipe._encode_vae_image

        def vae_enc(*a, **k):
            out = orig_vae_enc(*a, **k)
            rec["image_latents"] = out.detach().clone()
            return out
        patched["_encode_vae_image"] = vae_enc
    if hasattr(pipe, "prepare_mask_latents"):
        orig_pml = pipe.prepare_mask_latents

        def pml(*a, **k):
            out = orig_pml(*a, **k)
            rec["mask_latents"] = (out[0].detach().clone(), out[1].detach().clone())
            return out
        patched["prepare_mask_latents"] = pml

    sched = pipe.scheduler
    orig_sn = sched.scale_noise

    def sn(sample, timestep, noise=None):
        out = orig_sn(sample, timestep, noise)
        rec["scale_noise"].append({"timestep": jsonable(timestep), "step_index": sched.step_index,
                                   "begin_index": sched.begin_index})
        if len(rec["scale_noise"]) == 1:
            rec["scale_noise_first"] = (sample.detach().clone(), out.detach().clone())
        return out

    def pre(m, args, kw):
        skip = kw.get("skip_layers")
        hs = kw["hidden_states"]
        branch = "skip_layers" if skip is not None else ("cfg_batch" if hs.shape[0] == 2 else "cond")
        rec["calls"].append({"step": len(rec["steps"]), "timestep": float(kw["timestep"][0]),
                             "timestep_passed": jsonable(kw["timestep"]), "batch": int(hs.shape[0]),
                             "branch": branch, "skip_layers": None if skip is None else list(skip)})
        if rec["in0"] is None:
            rec["in0"] = {"hidden_states": hs.detach().clone(), "timestep": jsonable(kw["timestep"]),
                          "encoder_hidden_states_shape": list(kw["encoder_hidden_states"].shape),
                          "pooled_projections_shape": list(kw["pooled_projections"].shape)}

    def post(m, args, kw, output):
        o = output[0] if isinstance(output, (tuple, list)) else output.sample
        if rec["out0"] is None:
            rec["out0"] = o.detach().clone()
        if kw.get("skip_layers") is not None and rec["skip_out0"] is None:
            rec["skip_out0"] = o.detach().clone()
            rec["skip_in0"] = kw["hidden_states"].detach().clone()

    def te_pre(name):
        def f(m, args, kw):
            ids = args[0] if args else kw["input_ids"]
            rec["te_ids"].append({"encoder": name, "ids": ids.tolist()})
        return f

    def dec_pre(m, args, kw):
        if rec["decode_in"] is None:
            rec["decode_in"] = (args[0] if args else kw["z"]).detach().clone()

    def cb(p, i, t, kw):
        rec["steps"].append(kw["latents"].detach().clone())
        return kw

    for k, v in patched.items():
        setattr(pipe, k, v)
    sched.scale_noise = sn
    mod.retrieve_timesteps = rt
    hooks = [pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True),
             pipe.transformer.register_forward_hook(post, with_kwargs=True)]
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        te = getattr(pipe, name)
        if te is not None:
            hooks.append(te.register_forward_pre_hook(te_pre(name), with_kwargs=True))
    orig_decode = pipe.vae.decode

    def decode(z, *a, **k):
        if rec["decode_in"] is None:
            rec["decode_in"] = z.detach().clone()
        return orig_decode(z, *a, **k)
    pipe.vae.decode = decode
    install_randn_patch()
    log = capture_diffusers_log()
    capture._DRAWS["list"] = rec["noise"]
    try:
        out = pipe(**call_kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type,
                   callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"])
    finally:
        capture._DRAWS["list"] = None
        release_log(log)
        for h in hooks:
            h.remove()
        mod.retrieve_timesteps = orig_rt
        del sched.scale_noise
        del pipe.vae.decode
        for k in patched:
            delattr(pipe, k)
    img = out.images[0]
    rec["image"] = (np.asarray(img, dtype=np.float32) / 255.0 if isinstance(img, Image.Image)
                    else np.asarray(img, dtype=np.float32))
    rec["warnings"] = log.messages
    return rec


ARG_NAMES = ["prompt", "prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3",
             "guidance_scale", "num_inference_steps", "width", "height", "strength", "max_sequence_length",
             "clip_skip", "skip_guidance_layers", "skip_layer_guidance_scale", "skip_layer_guidance_start",
             "skip_layer_guidance_stop", "image", "mask_image", "padding_mask_crop"]


def stats(a):
    a = np.asarray(a, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def write_sd3_case(case_id, inputs, pipe, rec):
    d = os.path.join(DATA, "cases", case_id)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    img = rec["image"]
    inputs = dict(inputs)
    inputs["id"] = case_id
    inputs["generator"] = "torch.Generator('cpu').manual_seed(seed)"
    inputs["resolved_class"] = type(pipe).__name__
    inputs["scheduler_class"] = type(pipe.scheduler).__name__
    inputs["status"] = "ok"
    inputs["warnings"] = rec["warnings"]
    out = {"npy": "output.npy", "png": "output.png", "shape": list(img.shape)}
    o = save_arr(d, "output", img)
    if "sampled" in o:
        out["sampled"], out["png"] = o["sampled"], None
    else:
        Image.fromarray((img * 255).round().astype("uint8")).save(os.path.join(d, "output.png"))
    out["stats"] = stats(img)
    out["saturated_fraction"] = float(((img <= 0.0) | (img >= 1.0)).mean())
    inputs["output"] = out
    inputs["randn_tensor_draws"] = [dict(save_arr(d, f"noise_{i:02d}", t), drawn_by=tag)
                                    for i, (t, tag) in enumerate(zip(rec["noise"], rec["noise"].tags))]
    emb = {}
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    assert len(rec["encodes"]) == 1, len(rec["encodes"])
    for name, t in zip(names, rec["encodes"][0]):
        if t is not None:
            emb[name] = save_arr(d, name, t)
    emb["layout"] = ("prompt_embeds[b, :77, :16] = CLIP-L hidden_states[-(clip_skip or 0) - 2], [b, :77, 16:48] = "
                     "CLIP-G's, [b, :77, 48:] = 0 (pad to T5 width), [b, 77:, :] = T5 last_hidden_state "
                     "(zeros without text_encoder_3); pooled = [CLIP-L text_embeds | CLIP-G text_embeds]")
    inputs["embeddings"] = emb
    inputs["text_encoder_input_ids"] = rec["te_ids"]
    inputs["schedule"] = rec["schedule"][0] if len(rec["schedule"]) == 1 else rec["schedule"]
    if rec["get_timesteps"]:
        inputs["get_timesteps"] = rec["get_timesteps"][0]
    inputs["scheduler_timesteps_after_run"] = jsonable(pipe.scheduler.timesteps)
    inputs["transformer_calls"] = rec["calls"]
    inputs["transformer_timesteps"] = [c["timestep"] for c in rec["calls"]]
    inputs["skip_layer_steps"] = [c["step"] for c in rec["calls"] if c["branch"] == "skip_layers"]
    i0 = dict(rec["in0"])
    i0["hidden_states"] = save_arr(d, "transformer_input_step0_hidden_states", i0["hidden_states"])
    inputs["transformer_input_step0"] = i0
    inputs["transformer_output_step0"] = save_arr(d, "transformer_output_step0", rec["out0"])
    inputs["transformer_output_step0"]["stats"] = stats(rec["out0"])
    if rec["skip_out0"] is not None:
        inputs["transformer_input_first_skip"] = save_arr(d, "transformer_input_first_skip", rec["skip_in0"])
        inputs["transformer_input_first_skip"]["what"] = (
            "hidden_states of the first skip_layers call (= the latents, batch 1; encoder_hidden_states / "
            "pooled_projections = the positive prompt_embeds / pooled_prompt_embeds)")
        inputs["transformer_output_first_skip"] = save_arr(d, "transformer_output_first_skip", rec["skip_out0"])
    inputs["scale_noise_calls"] = rec["scale_noise"]
    if rec["image_latents"] is not None:
        inputs["image_latents"] = save_arr(d, "image_latents", rec["image_latents"])
        inputs["image_latents"]["what"] = "pipe._encode_vae_image(...): (sample - shift_factor) * scaling_factor"
    elif rec["scale_noise"] and "image" in inputs and inputs["image"]:
        sample, noised = rec["scale_noise_first"]
        inputs["image_latents"] = save_arr(d, "image_latents", sample)
        inputs["image_latents"]["what"] = ("img2img prepare_latents: (vae.encode(image).latent_dist.sample(generator) "
                                           "- shift_factor) * scaling_factor, the `sample` of scheduler.scale_noise")
        inputs["initial_latents"] = save_arr(d, "initial_latents", noised)
        inputs["initial_latents"]["what"] = "scheduler.scale_noise(image_latents, latent_timestep, noise)"
    if rec["mask_latents"] is not None:
        inputs["mask_latents"] = save_arr(d, "mask_latents", rec["mask_latents"][0])
        inputs["mask_latents"]["what"] = ("prepare_mask_latents(...)[0]: the preprocessed mask, nearest-interpolated "
                                          "to latent size, doubled along the batch under CFG")
        inputs["masked_image_latents"] = save_arr(d, "masked_image_latents", rec["mask_latents"][1])
        inputs["masked_image_latents"]["what"] = (
            "prepare_mask_latents(...)[1]: (vae.encode(image * (mask < 0.5)).sample - shift) * scale, doubled under "
            "CFG; unused by a 16-channel transformer but its draw is made")
    inputs["vae_decode_input"] = save_arr(d, "vae_decode_input", rec["decode_in"])
    inputs["vae_decode_input"]["what"] = (
        "latents / scaling_factor - NO shift_factor added (StableDiffusion3InpaintPipeline)"
        if type(pipe).__name__ == "StableDiffusion3InpaintPipeline"
        else "latents / scaling_factor + shift_factor")
    inputs["latents_per_step"] = save_arr(d, "latents_per_step", torch.stack(rec["steps"]))
    dump_json(os.path.join(d, "inputs.json"), inputs)
    o0 = rec["out0"]
    assert torch.isfinite(o0).all() and np.isfinite(img).all(), case_id
    assert out["saturated_fraction"] < 0.5, (case_id, out["saturated_fraction"])
    print(f"  {case_id}: {type(pipe).__name__} {list(img.shape)} {len(rec['calls'])} transformer calls "
          f"(skip steps {inputs['skip_layer_steps']}), {len(rec['noise'])} draws {rec['noise'].tags}, "
          f"out0 std {float(o0.std()):.3f}, image std {out['stats']['std']:.3f} sat {out['saturated_fraction']:.3f}, "
          f"warnings {len(rec['warnings'])}", flush=True)


# ------------------------------------------------------------------------------------------------------------- cases

AUTO = {"text2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
        "inpaint": AutoPipelineForInpainting}

LONG_PROMPT_3 = ("A very long and detailed prompt describing an ancient castle on a misty mountain at sunset, with "
                 "golden light on the towers, a winding river in the valley, a small village with red roofs, "
                 "dragons circling above the clouds, a knight riding a white horse across the stone bridge, and "
                 "thousands of glowing lanterns floating into the dark blue sky, while fishermen in yellow raincoats "
                 "pull their nets from the cold water and children fly kites on the windy beach below the cliffs, "
                 "oil painting, highly detailed, dramatic clouds, warm light, trending on artstation")

CASES = [
    # id, checkpoint, task, from_pipe_of, seed, kwargs (left out = the pipeline's default)
    ("sd3-t2i", SD3, "text2img", None, 20,
     dict(prompt="a red fox in the snow, oil painting", negative_prompt="blurry, low quality", guidance_scale=5.0,
          num_inference_steps=4, width=64, height=64, max_sequence_length=32)),
    ("sd3-t2i-defaults-nocfg", SD3, "text2img", None, 21,
     dict(prompt="a lighthouse on a rocky coast at sunset", guidance_scale=1.0, num_inference_steps=3, width=64,
          height=64)),
    ("sd3-t2i-prompts-123", SD3, "text2img", None, 22,
     dict(prompt="a cozy café in Paris", prompt_2="a watercolor of a café au lait and a crème brûlée",
          prompt_3=LONG_PROMPT_3, negative_prompt="blurry", negative_prompt_2="low quality, jpeg artifacts",
          negative_prompt_3="ugly, deformed, watermark", guidance_scale=4.0, num_inference_steps=3, width=64,
          height=64, max_sequence_length=16)),
    ("sd3-t2i-clip-skip", SD3, "text2img", None, 23,
     dict(prompt="a small robot watering tomatoes", negative_prompt="cartoon", clip_skip=1, guidance_scale=3.0,
          num_inference_steps=2, width=48, height=80, max_sequence_length=32)),
    ("sd3-t2i-slg", SD3, "text2img", None, 24,
     dict(prompt="a koi pond with lily pads", skip_guidance_layers=[1], skip_layer_guidance_scale=2.8,
          skip_layer_guidance_start=0.0, skip_layer_guidance_stop=0.8, guidance_scale=4.5, num_inference_steps=5,
          width=64, height=64, max_sequence_length=32)),
    ("sd35-t2i", SD35, "text2img", None, 25,
     dict(prompt="a glass sculpture of a whale, backlit", negative_prompt="blurry", guidance_scale=4.0,
          num_inference_steps=4, width=64, height=64, max_sequence_length=32)),
    # SD3.5-medium's recommended layers are [7, 8, 9] of 24; here the last block (context_pre_only). With the
    # default window (start 0.01, stop 0.2) 4 steps would run no skip pass at all (see sd3_errors.json), so stop 0.6:
    # steps i with 0.04 < i < 2.4 -> 1 and 2.
    ("sd35-t2i-slg", SD35, "text2img", None, 26,
     dict(prompt="a glass sculpture of a whale, backlit", skip_guidance_layers=[2], skip_layer_guidance_stop=0.6,
          num_inference_steps=4, width=64, height=64, max_sequence_length=32)),
    ("sd3-no-t5-t2i", NOT5, "text2img", None, 27,
     dict(prompt="a steaming cup of coffee next to an open book", negative_prompt="low quality",
          guidance_scale=5.0, num_inference_steps=3, width=64, height=64)),
    ("sd3-i2i", SD3, "img2img", None, 28,
     dict(prompt="a watercolor landscape", image="images/init_64x64.png", strength=0.6, num_inference_steps=4,
          guidance_scale=5.0, width=64, height=64, max_sequence_length=32)),
    ("sd3-i2i-frompipe", SD3, "img2img", "text2img", 29,
     dict(prompt="an oil painting of a harbor", image="images/init_48x64.png", width=48, height=64, strength=0.75,
          num_inference_steps=4, max_sequence_length=32)),
    ("sd3-inpaint", SD3, "inpaint", None, 30,
     dict(prompt="a bouquet of roses", image="images/init_64x64.png", mask_image="images/mask_rect_64x64.png",
          strength=0.9, num_inference_steps=4, guidance_scale=5.0, width=64, height=64, max_sequence_length=32)),
    ("sd3-inpaint-crop", SD3, "inpaint", None, 31,  # crop region (6, 10, 54, 58) of the rect mask: a real crop
     dict(prompt="a bouquet of roses", image="images/init_64x64.png", mask_image="images/mask_rect_64x64.png",
          strength=0.9, num_inference_steps=4, guidance_scale=5.0, width=64, height=64, max_sequence_length=32,
          padding_mask_crop=8)),
    ("sd35-inpaint-frompipe", SD35, "inpaint", "text2img", 32,
     dict(prompt="a bouquet of tulips", image="images/init_64x64.png", mask_image="images/mask_rect_64x64.png",
          strength=1.0, num_inference_steps=3, width=64, height=64, max_sequence_length=32)),
]


def load_kwargs(ckpt):
    """A checkpoint whose model_index.json holds [null, null] for text_encoder_3 / tokenizer_3 only loads when they
    are passed as None (see sd3_errors.json, no_t5_from_pretrained_without_none_kwargs)."""
    return dict(text_encoder_3=None, tokenizer_3=None) if ckpt == NOT5 else {}


def load_pipe(ckpt, task, of):
    path = os.path.join(DATA, ckpt)
    lk = load_kwargs(ckpt)
    lks = "".join(f", {k}=None" for k in lk)
    if of is None:
        pipe = AUTO[task].from_pretrained(path, **lk)
        load = {"route": "from_pretrained", "kwargs": {k: None for k in lk},
                "call": f"{AUTO[task].__name__}.from_pretrained(checkpoint{lks})"}
    else:
        pipe = AUTO[task].from_pipe(AUTO[of].from_pretrained(path, **lk))
        load = {"route": "from_pipe", "kwargs": {},
                "call": f"{AUTO[task].__name__}.from_pipe({AUTO[of].__name__}.from_pretrained(checkpoint{lks}))"}
    pipe.set_progress_bar_config(disable=True)
    return pipe, load


EXPECTED_CLASS = {"text2img": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
                  "inpaint": "StableDiffusion3InpaintPipeline"}


def defaults_of(pipe):
    sig = inspect.signature(type(pipe).__call__)
    return {k: sig.parameters[k].default for k in ARG_NAMES if k in sig.parameters}


def run_cases():
    for case_id, ckpt, task, of, seed, kw in CASES:
        pipe, load = load_pipe(ckpt, task, of)
        assert type(pipe).__name__ == EXPECTED_CLASS[task], (case_id, type(pipe).__name__)
        call = open_images(kw)
        if "image" in kw and "width" in kw:
            assert call["image"].size == (kw["width"], kw["height"]), (case_id, call["image"].size)
        output_type = "pil" if kw.get("padding_mask_crop") else "np"
        inputs = {"checkpoint": ckpt, "task": task, "seed": seed}
        inputs.update({k: kw.get(k) for k in ARG_NAMES})
        inputs["kwargs_passed"] = sorted(kw)
        defaults = defaults_of(pipe)
        inputs["pipeline_defaults"] = {k: v for k, v in defaults.items() if k not in kw and v is not None}
        inputs["load"] = load
        inputs["components"] = {k: (None if v is None else type(v).__name__) for k, v in pipe.components.items()}
        inputs["output_type"] = output_type
        if output_type == "pil":
            inputs["output_note"] = ("padding_mask_crop: output_type 'pil' (apply_overlay pastes into PIL images); "
                                     "output.npy = the returned PIL image (after apply_overlay) as uint8 / 255")
            inputs["crop_coords"] = list(VaeImageProcessor.get_crop_region(
                call["mask_image"], kw.get("width"), kw.get("height"), pad=kw["padding_mask_crop"]))
        try:
            rec = run_sd3(pipe, call, seed, output_type=output_type)
        except Exception as e:  # noqa: BLE001
            write_error_case(case_id, inputs, e)
            continue
        write_sd3_case(case_id, inputs, pipe, rec)


# ------------------------------------------------------------------------------------------------------ error probes

def probe(name, pipe, kw, seed=0, output_type="np", note=None, compare_to=None):
    """diffusers' outcome for `pipe(**kw)`; compare_to: kwargs of a second run whose output is diffed."""
    entry = {"pipeline": type(pipe).__name__, "kwargs": dict(kw)}
    if note:
        entry["note"] = note
    call = open_images(kw)
    calls = []

    def pre(m, a, k):
        calls.append({"timestep": float(k["timestep"][0]), "batch": int(k["hidden_states"].shape[0]),
                      "skip_layers": None if k.get("skip_layers") is None else list(k["skip_layers"])})
    h = pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)
    log = capture_diffusers_log()
    img = None
    try:
        out = pipe(**call, generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type)
        img = np.asarray(out.images[0], dtype=np.float32)
        entry["outcome"] = "ok"
        entry["output_shape"] = list(img.shape)
    except Exception as e:  # noqa: BLE001
        entry["outcome"] = "error"
        entry["error"] = {"type": type(e).__name__, "message": str(e)}
    finally:
        release_log(log)
        h.remove()
    entry["warnings"] = log.messages
    entry["transformer_calls"] = calls
    if compare_to is not None and img is not None:
        other = pipe(**open_images(compare_to), generator=torch.Generator("cpu").manual_seed(seed),
                     output_type=output_type).images[0]
        entry["compared_to_kwargs"] = compare_to
        entry["max_abs_output_diff"] = float(np.abs(img - np.asarray(other, dtype=np.float32)).max())
    print(f"  probe {name}: {entry['outcome']} {entry.get('error', {}).get('message', '')[:100]} "
          f"calls {len(calls)} diff {entry.get('max_abs_output_diff')}", flush=True)
    return entry


def embeds_probe(name, pipe, kw_a, kw_b, note):
    """encode_prompt twice; max |difference| of the four outputs."""
    base = dict(device="cpu", num_images_per_prompt=1, max_sequence_length=16, prompt_2=None, prompt_3=None)
    with torch.no_grad():
        a = pipe.encode_prompt(**{**base, **kw_a})
        b = pipe.encode_prompt(**{**base, **kw_b})
    diffs = [None if x is None else float((x - y).abs().max()) for x, y in zip(a, b)]
    entry = {"call": "pipe.encode_prompt(device='cpu', num_images_per_prompt=1, max_sequence_length=16, ...)",
             "kwargs_a": kw_a, "kwargs_b": kw_b, "note": note,
             "max_abs_diff": dict(zip(["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                                       "negative_pooled_prompt_embeds"], diffs))}
    print(f"  probe {name}: {entry['max_abs_diff']}", flush=True)
    return entry


def sorted_set_repr(msg):
    """A `{'a', 'b'}` set literal in a message, with its items sorted (set order changes from run to run)."""
    return re.sub(r"\{('[^{}]*')\}", lambda m: "{" + ", ".join(sorted(m.group(1).split(", "))) + "}", msg)


def error_probes():
    path = os.path.join(DATA, SD3)
    t2i = AutoPipelineForText2Image.from_pretrained(path)
    i2i = AutoPipelineForImage2Image.from_pretrained(path)
    inp = AutoPipelineForInpainting.from_pretrained(path)
    t35 = AutoPipelineForText2Image.from_pretrained(os.path.join(DATA, SD35))
    not5 = AutoPipelineForText2Image.from_pretrained(os.path.join(DATA, NOT5), **load_kwargs(NOT5))
    for p in (t2i, i2i, inp, t35, not5):
        p.set_progress_bar_config(disable=True)
    base = dict(prompt="a cat", width=64, height=64, max_sequence_length=16)
    e = {}
    try:
        AutoPipelineForText2Image.from_pretrained(os.path.join(DATA, NOT5))
        e["no_t5_from_pretrained_without_none_kwargs"] = {"outcome": "ok"}
    except Exception as err:  # noqa: BLE001
        e["no_t5_from_pretrained_without_none_kwargs"] = {
            "call": "AutoPipelineForText2Image.from_pretrained('checkpoints/sd3-tiny-no-t5')", "outcome": "error",
            "error": {"type": type(err).__name__, "message": sorted_set_repr(str(err))},
            "note": ("model_index.json's [null, null] entries are dropped and text_encoder_3 / tokenizer_3 are not "
                     "optional components: loading needs text_encoder_3=None, tokenizer_3=None passed. diffusers "
                     "prints the passed names as a Python set (hash order, varies by run): sorted here")}
    e["size_not_divisible_72x60"] = probe("size_not_divisible_72x60", t2i,
                                          dict(base, width=72, height=60, num_inference_steps=1))
    e["size_divisible_by_8_not_16"] = probe("size_divisible_by_8_not_16", t2i,
                                            dict(base, width=64, height=56, num_inference_steps=1),
                                            note="the check is vae_scale_factor * patch_size = 16, not 8")
    e["max_sequence_length_600"] = probe("max_sequence_length_600", t2i,
                                         dict(base, num_inference_steps=1, max_sequence_length=600))
    e["t2i_default_size"] = probe("t2i_default_size", t2i,
                                  dict(prompt="a cat", num_inference_steps=1, guidance_scale=1.0,
                                       max_sequence_length=16),
                                  note="height/width default to transformer.config.sample_size * vae_scale_factor "
                                       "= 32 * 8 = 256")
    e["pos_embed_max_size_exceeded"] = probe(
        "pos_embed_max_size_exceeded", t2i, dict(base, width=800, height=64, num_inference_steps=1),
        note="800 / 8 / 2 = 50 patches > pos_embed_max_size 48: PatchEmbed.cropped_pos_embed raises at the first "
             "transformer call (check_inputs does not know the limit)")
    e["clip_skip_too_large"] = probe("clip_skip_too_large", t2i, dict(base, num_inference_steps=1, clip_skip=2),
                                     note="hidden_states has num_hidden_layers + 1 = 3 entries; clip_skip=2 "
                                          "indexes hidden_states[-4]")
    e["clip_long_prompt"] = probe(
        "clip_long_prompt", t2i, dict(base, prompt=LONG_PROMPT_3, num_inference_steps=1, guidance_scale=1.0),
        note="CLIP truncation warnings (one per CLIP tokenizer) and the T5 one; the T5 warning decodes "
             "untruncated_ids[:, tokenizer_max_length - 1 : -1] with tokenizer_max_length = CLIP's 77, not "
             "max_sequence_length")
    slg = dict(base, num_inference_steps=5, guidance_scale=4.5, skip_layer_guidance_start=0.0,
               skip_layer_guidance_stop=0.8)
    e["slg_layer_out_of_range"] = probe(
        "slg_layer_out_of_range", t2i, dict(slg, skip_guidance_layers=[7]),
        compare_to=slg,
        note="no error: `index_block in skip_layers` is never true, so the skip pass runs the full model on the "
             "cond half (batch 1) and adds (noise_pred_text - that) * 2.8 ~ 0")
    e["slg_defaults_4_steps"] = probe(
        "slg_defaults_4_steps", t35, dict(base, num_inference_steps=4, skip_guidance_layers=[2]),
        note="default window start 0.01 / stop 0.2: a skip pass runs at step i iff i > 4 * 0.01 and i < 4 * 0.2, "
             "i.e. never for 4 steps")
    e["slg_defaults_10_steps"] = probe(
        "slg_defaults_10_steps", t35, dict(base, num_inference_steps=10, skip_guidance_layers=[2]),
        note="i > 0.1 and i < 2.0: step 1 only")
    e["slg_without_cfg"] = probe(
        "slg_without_cfg", t2i, dict(slg, guidance_scale=1.0, skip_guidance_layers=[1]),
        note="skip-layer guidance lives inside `if do_classifier_free_guidance`: silently off at guidance <= 1")
    e["no_t5_prompt_3_ignored"] = probe(
        "no_t5_prompt_3_ignored", not5, dict(base, num_inference_steps=2, prompt_3="a dog"),
        compare_to=dict(base, num_inference_steps=2),
        note="without text_encoder_3 prompt_3 is never tokenized: the T5 part is zeros either way")
    e["prompt_2_empty_string"] = embeds_probe(
        "prompt_2_empty_string", t2i,
        dict(prompt="a cat", prompt_2="", prompt_3="", prompt_embeds=None, negative_prompt="blurry",
             negative_prompt_2="", negative_prompt_3="", do_classifier_free_guidance=True),
        dict(prompt="a cat", prompt_2=None, prompt_3=None, negative_prompt="blurry", negative_prompt_2=None,
             negative_prompt_3=None, do_classifier_free_guidance=True),
        note="`prompt_2 = prompt_2 or prompt`: an empty prompt_2 / prompt_3 / negative_prompt_2 / negative_prompt_3 "
             "falls back to prompt / negative_prompt (all diffs 0)")
    e["negative_prompt_none_is_empty_string"] = embeds_probe(
        "negative_prompt_none_is_empty_string", t2i,
        dict(prompt="a cat", negative_prompt=None, do_classifier_free_guidance=True),
        dict(prompt="a cat", negative_prompt="", do_classifier_free_guidance=True),
        note="under CFG a missing negative prompt is encoded as \"\" (real text-encoder output, not zeros)")
    e["clip_skip_not_applied_to_negative"] = embeds_probe(
        "clip_skip_not_applied_to_negative", t2i,
        dict(prompt="a cat", negative_prompt="blurry", clip_skip=1, do_classifier_free_guidance=True),
        dict(prompt="a cat", negative_prompt="blurry", clip_skip=None, do_classifier_free_guidance=True),
        note="encode_prompt passes clip_skip=None for the negative prompt: only prompt_embeds change")
    # components that disagree
    comps = {k: v for k, v in t2i.components.items()}
    tr48 = sd3_transformer(91, joint_attention_dim=48)
    bad = StableDiffusion3Pipeline(**{**comps, "transformer": tr48})
    bad.set_progress_bar_config(disable=True)
    e["joint_attention_dim_48_with_t5_64"] = probe(
        "joint_attention_dim_48_with_t5_64", bad, dict(base, num_inference_steps=1),
        note="transformer joint_attention_dim 48 != T5 d_model 64: CLIP is padded to the T5 width (64), then "
             "context_embedder (Linear 48 -> 32) fails; nothing checks it before")
    n5 = {k: v for k, v in not5.components.items()}
    for jd in (32, 96):
        p = StableDiffusion3Pipeline(**{**n5, "transformer": sd3_transformer(92, joint_attention_dim=jd)})
        p.set_progress_bar_config(disable=True)
        entry = probe(f"no_t5_joint_attention_dim_{jd}", p, dict(base, num_inference_steps=1, guidance_scale=1.0),
                      note=("without T5 the zeros take transformer.config.joint_attention_dim as width and the CLIP "
                            "concat (48) is F.pad-ed to it: " + (
                                "a negative pad CROPS the CLIP embeddings to their first 32 columns, silently"
                                if jd < 48 else "zero-padded to 96")))
        with torch.no_grad():
            pe = p.encode_prompt(prompt="a cat", prompt_2=None, prompt_3=None, device="cpu",
                                 do_classifier_free_guidance=False, max_sequence_length=16)[0]
        entry["prompt_embeds_shape"] = list(pe.shape)
        e[f"no_t5_joint_attention_dim_{jd}"] = entry
    img = dict(base, image="images/init_64x64.png", num_inference_steps=4)
    e["img2img_strength_1.5"] = probe("img2img_strength_1.5", i2i, dict(img, strength=1.5))
    e["img2img_strength_0"] = probe("img2img_strength_0", i2i, dict(img, strength=0.0))
    e["img2img_strength_0.1_4_steps"] = probe("img2img_strength_0.1_4_steps", i2i, dict(img, strength=0.1))
    e["img2img_no_size"] = probe(
        "img2img_no_size", i2i, dict(prompt="a cat", image="images/init_48x64.png", num_inference_steps=2,
                                     guidance_scale=1.0, max_sequence_length=16),
        note="img2img does not take its size from the image: height/width default to "
             "default_sample_size * vae_scale_factor = 256 and the image is resized to 256x256")
    e["inpaint_strength_1.5"] = probe("inpaint_strength_1.5", inp,
                                      dict(img, mask_image="images/mask_rect_64x64.png", strength=1.5))
    e["inpaint_strength_0"] = probe("inpaint_strength_0", inp,
                                    dict(img, mask_image="images/mask_rect_64x64.png", strength=0.0))
    e["inpaint_mask_size_differs"] = probe(
        "inpaint_mask_size_differs", inp, dict(img, mask_image="images/mask_rect_48x64.png", strength=0.9),
        note="no error: the mask is resized to height x width like the image")
    e["inpaint_padding_mask_crop_output_type_np"] = probe(
        "inpaint_padding_mask_crop_output_type_np", inp,
        dict(img, mask_image="images/mask_rect_64x64.png", strength=0.9, padding_mask_crop=8))
    e["inpaint_no_size"] = probe(
        "inpaint_no_size", inp, dict(prompt="a cat", image="images/init_48x64.png",
                                     mask_image="images/mask_rect_48x64.png", num_inference_steps=2,
                                     guidance_scale=1.0, max_sequence_length=16),
        note="inpaint: height/width default to transformer.config.sample_size * vae_scale_factor = 256")
    dump_json(os.path.join(DATA, "sd3_errors.json"), {
        "description": ("diffusers 0.42.1 outcomes on checkpoints/sd3-tiny (sd35-tiny / sd3-tiny-no-t5 / in-memory "
                        "pipelines where stated; seed 0, output_type np): error type/message, or 'ok' with the "
                        "output shape, every transformer call (timestep, batch, skip_layers) and the diffusers "
                        "warnings; `embeds` probes compare two encode_prompt calls."),
        "checkpoint": SD3, "probes": e})


def torch_layout_spreads():
    """As make_flux.py: max |image latents with the image as the pipeline lays it out (a channels-last view) - the
    same with a contiguous copy| for every case that VAE-encodes an image without a crop."""
    for case_id, ckpt, task, _, _, kw in CASES:
        if task == "text2img" or kw.get("padding_mask_crop"):
            continue
        path = os.path.join(DATA, "cases", case_id, "inputs.json")
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        vae = AutoencoderKL.from_pretrained(os.path.join(DATA, ckpt, "vae"))
        proc = VaeImageProcessor(vae_scale_factor=8, vae_latent_channels=16)
        x = proc.preprocess(Image.open(os.path.join(DATA, kw["image"])).convert("RGB"), height=kw["height"],
                            width=kw["width"])
        lat = []
        for t in (x, x.contiguous()):
            with torch.no_grad():
                dist = vae.encode(t).latent_dist
            lat.append(dist.mean + dist.std * torch.randn(dist.mean.shape,
                                                          generator=torch.Generator("cpu").manual_seed(0)))
        case["torch_layout_spread"] = float(((lat[0] - lat[1]) * vae.config.scaling_factor).abs().max())
        dump_json(path, case)
        print(f"  {case_id}: torch_layout_spread {case['torch_layout_spread']:.3g}", flush=True)


def embedding_f32_errors():
    """For every text-to-image case: how far torch's own float32 prompt embeddings are from the exact (float64)
    ones, recorded as `embeddings_torch_f32_error` (max over prompt_embeds and negative_prompt_embeds). The
    randomised T5 over 256 tokens is off by ~3e-5 (of values ~4) in float32 in torch, and any float32
    implementation by about as much in its own direction, so no comparison of embeddings is tighter than that."""
    for case_id in sorted(os.listdir(os.path.join(DATA, "cases"))):
        if not case_id.startswith("sd3"):
            continue
        path = os.path.join(DATA, "cases", case_id, "inputs.json")
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        if case.get("status") != "ok":
            continue
        pipe, _ = load_pipe(case["checkpoint"], "text2img", None)
        kw = dict(prompt=case["prompt"], prompt_2=case.get("prompt_2"), prompt_3=case.get("prompt_3"),
                  negative_prompt=case.get("negative_prompt"), negative_prompt_2=case.get("negative_prompt_2"),
                  negative_prompt_3=case.get("negative_prompt_3"), clip_skip=case.get("clip_skip"),
                  do_classifier_free_guidance=(case.get("guidance_scale") or 7.0) > 1,
                  max_sequence_length=case.get("max_sequence_length") or 256)
        outs = []
        for dtype in (torch.float32, torch.float64):
            for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
                m = getattr(pipe, name, None)
                if m is not None:
                    m.to(dtype)
            with torch.no_grad():
                outs.append(pipe.encode_prompt(**kw))
        err = 0.0
        for a, b in zip(outs[0][:2], outs[1][:2]):
            if a is not None:
                err = max(err, float((a.double() - b).abs().max()))
        case["embeddings_torch_f32_error"] = err
        dump_json(path, case)
        print(f"  {case_id}: embeddings_torch_f32_error {err:.3g}", flush=True)


def main():
    torch.manual_seed(0)
    build_checkpoints()
    run_cases()
    error_probes()
    torch_layout_spreads()
    embedding_f32_errors()


if __name__ == "__main__":
    main()
