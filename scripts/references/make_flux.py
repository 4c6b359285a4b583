"""References for the `flux` family (FluxPipeline / FluxImg2ImgPipeline / FluxInpaintPipeline), made with diffusers
0.42.1, transformers 5.24.0, tokenizers 0.23.3 and torch 2.15 on CPU, without the hub:

    venv/bin/python scripts/references/make_flux.py     # ~15-35 s on 2 CPU cores; rewrites what it made, nothing else

What it writes (everything deterministic: running it twice gives byte-identical files):

* tests/data/checkpoints/flux-dev-tiny, tests/data/checkpoints/flux-schnell-tiny: tiny random FLUX checkpoints written
  by `FluxPipeline(...).save_pretrained(dir, safe_serialization=True)`:
  - text_encoder / tokenizer: the sd15-tiny CLIPTextModel (hidden 32) and its CLIP tokenizer; the tokenizer folder is
    a copy of sd15-tiny's (legacy vocab.json/merges.txt layout, as FLUX.1-dev ships it), not what transformers 5
    would write;
  - text_encoder_2: a random T5EncoderModel (d_model 32, 2 layers, 4 heads of 8, gated-gelu, 8 relative buckets),
    re-saved SHARDED (model.safetensors.index.json + 3 shards). transformers 5 forces `tie_word_embeddings: true` in
    T5Config and writes the embedding once, as `shared.weight` (no `encoder.embed_tokens.weight`);
  - tokenizer_2: the T5 tokenizer below;
  - transformer: a random FluxTransformer2DModel (2 double + 2 single blocks, 2 heads of 16, rope axes (4, 6, 6),
    guidance embedder for dev only) whose every parameter is re-drawn (diffusers' own init leaves the q/k RMSNorm
    scales at 1 and would hide a broken modulation): matrices N(0, 1/fan_in), 1-D parameters N(0, 0.3^2) (norm
    scales 1 + N(0, 0.3^2)); re-saved SHARDED (diffusion_pytorch_model.safetensors.index.json + 3 shards);
  - vae: a random AutoencoderKL (16/32/32 channels, 16 latent channels, no quant convs, shift 0.1159, scale 0.3611),
    VAE scale factor 4, the same weights in both;
  - scheduler: FlowMatchEulerDiscreteScheduler as FLUX.1-dev (shift 3, dynamic shifting) / FLUX.1-schnell (shift 1,
    no dynamic shifting) ship it.
* The T5 tokenizer (there is no hub here), `build_t5_tokenizer()`: tokenizers' UnigramTrainer (vocab_size 700 with
  the special tokens <pad> </s> <unk> first, RAYON_NUM_THREADS=1) picks the pieces from the fixed corpus of this file
  (`corpus()`), pre-tokenized as transformers' T5Tokenizer does (WhitespaceSplit + Metaspace "always"); the piece set
  is the same on every run (checked against a SHA-256 below) but the trainer's scores are not (they vary by ~2e-3 and
  reorder the ids), so the scores are recomputed deterministically in Python (ln substring frequency, then 4 rounds
  of Viterbi EM, rounded to 6 decimals). Then T5's vocabulary layout (<pad> 0, </s> 1, <unk> 2, the pieces by
  descending score, <extra_id_99> .. <extra_id_0> as the last 100 ids, as in real T5; 800 ids) and
  `T5TokenizerFast(vocab=..., model_max_length=512)` (transformers 5's T5Tokenizer: no normalizer, no byte fallback,
  post-processor "$A </s>"). save_pretrained writes tokenizer.json + tokenizer_config.json; we add the
  special_tokens_map.json real T5 folders carry.
* tests/data/cases/flux-*/: recorded runs (see `CASES`), in the case format of capture.py, with FLUX's extras:
  embeddings prompt_embeds (T5), pooled_prompt_embeds (CLIP pooler), text_ids (+ negative_* under true CFG);
  transformer_input_step0 (hidden_states packed, timestep as passed = t/1000, guidance or null, img_ids, txt_ids),
  transformer_output_step0 (+ _uncond under true CFG), transformer_calls (every call's timestep and branch),
  schedule (the mu and sigmas passed to retrieve_timesteps, scheduler.sigmas/timesteps right after set_timesteps),
  image_latents / mask / masked_image_latents for img2img and inpaint, latents_per_step (packed, as the callback gets
  them), the diffusers warnings of the call, and which pipeline method made each randn_tensor draw (`drawn_by`:
  noise / vae_encode_image_sample / vae_encode_masked_image_sample). Arrays above 65536 values (only in the two
  512x512 default-size cases) are stored sampled: the .npy holds `x.reshape(-1)[::stride]` and the json gives the
  full shape, the stride and stats; those two cases have no output.png (~700 KB each). padding_mask_crop needs
  output_type="pil": the two crop cases record the PIL image (after apply_overlay) as uint8 / 255.
* tests/data/tokenizers/t5-tiny-ids.json: ids as FluxPipeline._get_t5_prompt_embeds makes them.
* tests/data/flux_errors.json: diffusers' outcome for invalid or odd arguments.
"""

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before `tokenizers` loads: single-threaded Unigram training
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import diffusers  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (AutoencoderKL, AutoPipelineForImage2Image, AutoPipelineForInpainting,  # noqa: E402
                       AutoPipelineForText2Image, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                       FluxTransformer2DModel)
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast  # noqa: E402

import capture  # noqa: E402
from capture import DATA, dump_json, install_randn_patch, jsonable, save_npy, write_error_case  # noqa: E402

assert diffusers.__version__ == "0.42.1", diffusers.__version__
assert transformers.__version__ == "5.24.0", transformers.__version__
assert tokenizers.__version__ == "0.23.3", tokenizers.__version__

DEV = "checkpoints/flux-dev-tiny"
SCHNELL = "checkpoints/flux-schnell-tiny"
SD15 = os.path.join(DATA, "checkpoints", "sd15-tiny")
T5_TRAINED_PIECES = 697  # + 3 specials trained in = 700, + 100 <extra_id_N> = 800 ids
T5_PIECES_SHA256 = "f7a968a660aaae7ba346b27e1625fa8016f208d7f7ca00d5c04765dbc9d27db8"  # the trained piece set
SAMPLE_ABOVE = 65536  # arrays with more values are stored sampled (prime stride)

# ----------------------------------------------------------------------------------------------- T5 tokenizer corpus

_SENTENCES = """\
A red fox jumps over the lazy dog near the old wooden fence.
The quick brown astronaut rides a white horse across the dusty plains of Mars.
An oil painting of a lighthouse on a rocky coast at sunset, dramatic clouds, warm light.
A watercolor landscape with rolling green hills, a winding river and a small stone bridge.
Portrait of an elderly fisherman with a grey beard, wearing a yellow raincoat, highly detailed.
A cozy café in Paris serving café au lait and crème brûlée on a rainy afternoon.
The naïve student admired the façade of the cathedral in Zürich.
She ordered jalapeño poppers, a piñata cake and a glass of lemonade.
Björk sang beside the fjord while Dvořák played softly on the radio.
Señor García walked through São Paulo with his fiancée and their déjà vu.
The smörgåsbord in Malmö had herring, rye bread and lingonberry jam.
Müller measured the wavelength in ångströms and wrote it on the blackboard.
A résumé, a coöperative spirit and a little élan will get you far.
The street is called Straße in German and rue in French.
Łódź and Kraków are cities in Poland; Reykjavík is the capital of Iceland.
A cyberpunk city at night, neon signs reflected in puddles, flying cars, cinematic lighting.
A macro photograph of a dew drop on a spider web, shallow depth of field, 100mm lens.
A bowl of ramen with a soft-boiled egg, green onions and nori, studio lighting.
An isometric illustration of a tiny island with palm trees and a wooden hut.
A medieval castle on a hill surrounded by a misty forest, fantasy art.
A cat wearing sunglasses sitting on a skateboard, cartoon style, bright colors.
The robot carefully watered the tomatoes in the greenhouse every morning.
Two children fly a kite on a windy beach while seagulls circle overhead.
A vintage car parked in front of a diner, 1950s style, chrome and pastel colors.
A snow-covered mountain cabin with smoke rising from the chimney at dawn.
A close-up of a hummingbird drinking nectar from a purple flower.
A futuristic train gliding over a glass bridge above the clouds.
The library was silent except for the ticking of a large brass clock.
An astronaut floating in space holding a bouquet of sunflowers.
A steaming cup of coffee on a wooden table next to an open book.
A herd of elephants crossing a golden savanna under a dramatic sky.
The chef sprinkled fresh basil over the margherita pizza.
A pixel art scene of a knight fighting a dragon in a dark cave.
A minimalist poster with a single orange circle on a blue background.
The old map showed islands, sea monsters and a compass rose.
A glass sculpture of a whale, backlit, transparent, intricate reflections.
Autumn leaves falling on a quiet park bench in the early morning fog.
A jazz band playing on a small stage, saxophone, double bass, warm spotlight.
A baby panda climbing a bamboo tree, soft fur, national geographic photo.
A lantern festival with thousands of paper lanterns floating into the night sky.
The scientist peered into the microscope and gasped at what she saw.
A sailboat on a calm lake reflecting pink and orange clouds.
A detailed pencil sketch of a hand holding a feather.
An ancient temple overgrown with vines deep in the jungle.
Fresh croissants and pain au chocolat cooling on a bakery rack.
A giant octopus wrapping its tentacles around a pirate ship.
A quiet street in Kyoto with cherry blossoms and a wooden teahouse.
The marathon runners crossed the finish line in 2 hours, 5 minutes and 37 seconds.
Version 3.14 of the software was released on 12/05/2023 at 10:30 a.m.
Please call 555-0199 or e-mail info@example.com for more information!
Is it 42? Maybe 7 + 8 = 15, or 3 x 4 = 12; who knows...
"Hello," she said, "it's nice to meet you (finally)."
Prices: $19.99, 20% off, 3 for 2; #1 best seller & award winner.
An ice cream cone with three scoops: vanilla, strawberry and pistachio.
A surreal painting of melting clocks draped over tree branches.
A group of friends hiking along a ridge with a view of the valley.
The thunderstorm rolled over the wheat fields, lightning in the distance.
A tiny mouse reading a book by candlelight in a hollow tree.
A neon-lit arcade full of retro game machines and excited teenagers.
A stained glass window depicting the sun, the moon and the stars.
The violinist tuned her instrument before the concert began.
A bright yellow submarine exploring a coral reef full of fish.
A rustic kitchen with copper pots hanging above a stone oven.
A polar bear standing on an ice floe under the northern lights.
The children built a sandcastle with towers, walls and a moat.
A steampunk airship with brass propellers flying over Victorian London.
A field of lavender in Provence under a clear summer sky.
A wizard casting a spell, glowing runes, swirling magical energy.
The bakery on the corner sells sourdough, bagels and cinnamon rolls.
A hot air balloon festival over Cappadocia at sunrise.
An abstract composition of geometric shapes in primary colors.
A fluffy golden retriever puppy playing in the autumn leaves.
A busy market in Marrakech with spices, carpets and lanterns.
The moon rose slowly above the silent desert dunes.
A delicate origami crane made of patterned paper.
A lone tree on a hill under a starry night sky, long exposure.
A cup of matcha tea next to a plate of mochi on a bamboo mat.
A detailed blueprint of a spaceship engine with annotations.
A koi pond with lily pads and a small red bridge.
The firefighters rescued a kitten from the top of the tall oak tree.
A crowded subway car during rush hour, people reading newspapers.
A glowing jellyfish drifting through the deep dark ocean.
A bouquet of roses, tulips and daisies in a blue ceramic vase.
The mountain road twisted and turned through the pine forest.
A friendly dragon sharing tea with a little girl in a garden.
An underwater city with domes, tunnels and glowing windows.
The clock tower struck midnight and the streets fell quiet.
A chess board in the middle of a game, dramatic side lighting.
A Viking longship sailing through a stormy sea.
A child's drawing of a house, a sun and a family of four.
The farmer's market opens at 8 o'clock every Saturday morning.
An empty swimming pool at dusk with long shadows and palm trees.
A photorealistic render of a sports car on a wet racetrack.
A bear catching salmon in a rushing waterfall.
A sunflower field stretching to the horizon under a blue sky.
The museum displayed dinosaur skeletons, fossils and meteorites.
A cottage garden full of foxgloves, hollyhocks and bees.
A thick fog rolled in from the harbor, hiding the fishing boats.
Crème fraîche, jalapeños, açaí bowls and piña coladas were on the menu.
El niño comió una manzana y bebió agua fría en la mañana.
Le garçon a mangé une pomme très sucrée à côté de la fenêtre.
Über den Wolken muss die Freiheit wohl grenzenlos sein.
Ça va très bien, merci beaucoup, à bientôt!
O coração da cidade bate mais forte à noite.
"""

_ADJ = ["red", "blue", "golden", "ancient", "tiny", "giant", "misty", "sunny", "frozen", "glowing", "quiet", "busy",
        "rustic", "modern", "colorful", "dark", "bright", "gentle", "wild", "elegant"]
_NOUN = ["castle", "forest", "river", "city", "garden", "robot", "dragon", "ship", "village", "mountain", "flower",
         "bird", "house", "bridge", "lake", "train", "tower", "cat", "dog", "horse", "island", "market", "temple"]
_PLACE = ["at sunset", "in the rain", "under the stars", "in winter", "by the sea", "in the desert", "at dawn",
          "in a dream", "on a hill", "in the fog", "near a waterfall", "in the jungle", "on the moon"]
_STYLE = ["oil painting", "watercolor", "photograph", "digital art", "pencil sketch", "3d render", "anime style",
          "concept art", "illustration", "cinematic still", "pastel drawing", "woodcut print"]
_EXTRA = ["highly detailed", "soft lighting", "8k", "trending on artstation", "wide angle", "bokeh",
          "vibrant colors", "muted tones", "dramatic shadows", "award winning", "sharp focus", "film grain"]


def corpus():
    """The fixed training corpus: ~100 written sentences plus 300 prompt-like ones made by index arithmetic."""
    lines = [s for s in _SENTENCES.splitlines() if s.strip()]
    for i in range(300):
        a, n, p = _ADJ[i % len(_ADJ)], _NOUN[(i * 7) % len(_NOUN)], _PLACE[(i * 5) % len(_PLACE)]
        s, e = _STYLE[(i * 11) % len(_STYLE)], _EXTRA[(i * 3) % len(_EXTRA)]
        article = "an" if a[0] in "aeiou" else "a"
        lines.append(f"{s.capitalize()} of {article} {a} {n} {p}, {e}, number {i}.")
    return lines


def _viterbi(word, scores, max_len):
    """Best segmentation of `word` into pieces under unigram log-probabilities `scores` (ties: shorter first piece)."""
    n = len(word)
    best, back = [0.0] + [-math.inf] * n, [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - max_len), i):
            sc = scores.get(word[j:i])
            if sc is not None and best[j] + sc > best[i]:
                best[i], back[i] = best[j] + sc, j
    if best[n] == -math.inf:
        return None
    out, i = [], n
    while i > 0:
        out.append(word[back[i]:i])
        i = back[i]
    return out[::-1]


def build_t5_tokenizer():
    """The pieces come from tokenizers' UnigramTrainer; their scores from a deterministic re-estimation here.

    UnigramTrainer picks the same piece set on every run, but its scores differ by up to ~2e-3 from run to run (and so
    does the order of the ids), even single-threaded: rounding cannot make that stable. So the scores are recomputed
    in plain Python: start from ln(substring frequency), then 3 rounds of Viterbi EM over the pre-tokenized corpus
    (score = ln(count / total); unused pieces get the lowest score - 1), rounded to 6 decimals; ids ordered by
    descending score, then by piece.
    """
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
    trainer = trainers.UnigramTrainer(vocab_size=T5_TRAINED_PIECES + 3, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    trained = json.loads(tok.to_str())["model"]["vocab"]
    specials = ["<pad>", "</s>", "<unk>"]
    assert [p for p, _ in trained[:3]] == specials, trained[:3]
    pieces = sorted(p for p, _ in trained[3:])
    digest = hashlib.sha256("\n".join(pieces).encode()).hexdigest()
    assert digest == T5_PIECES_SHA256, f"UnigramTrainer chose another piece set ({digest}): the ids would change"
    words = {}
    for line in corpus():
        for w, _ in tok.pre_tokenizer.pre_tokenize_str(line):
            words[w] = words.get(w, 0) + 1
    words = sorted(words.items())
    max_len = max(len(p) for p in pieces)
    piece_set = set(pieces)
    counts = dict.fromkeys(pieces, 0)
    for w, c in words:
        for i in range(len(w)):
            for j in range(i + 1, min(len(w), i + max_len) + 1):
                if w[i:j] in piece_set:
                    counts[w[i:j]] += c
    for _ in range(4):
        total = sum(counts.values())
        used = {p: math.log(c / total) for p, c in counts.items() if c > 0}
        floor = min(used.values()) - 1.0
        scores = {p: used.get(p, floor) for p in pieces}
        counts = dict.fromkeys(pieces, 0)
        for w, c in words:
            for p in _viterbi(w, scores, max_len) or []:
                counts[p] += c
    vocab = [(p, 0.0) for p in specials]
    vocab += sorted(((p, round(scores[p], 6)) for p in pieces), key=lambda x: (-x[1], x[0]))
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    t5 = T5TokenizerFast(vocab=vocab, model_max_length=512)
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5.convert_tokens_to_ids("<extra_id_0>") == len(vocab) - 1 and len(t5) == len(vocab) == 800, len(t5)
    return t5


def write_special_tokens_map(folder):
    tok = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    dump_json(os.path.join(folder, "special_tokens_map.json"), {
        "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)],
        "eos_token": {"content": "</s>", **tok}, "pad_token": {"content": "<pad>", **tok},
        "unk_token": {"content": "<unk>", **tok}})


# ------------------------------------------------------------------------------------------------------- checkpoints

def t5_encoder(vocab_size):
    torch.manual_seed(21)
    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, layer_norm_epsilon=1e-6, tie_word_embeddings=False)).eval()


def flux_transformer(guidance_embeds, seed):
    torch.manual_seed(seed)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6))
    g = torch.Generator("cpu").manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in tr.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return tr.eval()


def tiny_vae():
    torch.manual_seed(31)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                         up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
                         latent_channels=16, norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
                         shift_factor=0.1159, scaling_factor=0.3611, sample_size=64).eval()


def resave_sharded(model, folder, max_shard_size):
    """Replaces the single weights file save_pretrained wrote with shards + index."""
    for f in os.listdir(folder):
        if f.endswith(".safetensors") or f.endswith(".safetensors.index.json"):
            os.remove(os.path.join(folder, f))
    if isinstance(model, transformers.PreTrainedModel):
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    else:
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    assert len(shards) >= 2 and any(f.endswith(".index.json") for f in os.listdir(folder)), shards
    return shards


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def build_checkpoints():
    t5_tok = build_t5_tokenizer()
    vae = tiny_vae()
    clip = CLIPTextModel.from_pretrained(os.path.join(SD15, "text_encoder")).eval()
    clip_tok = CLIPTokenizer.from_pretrained(os.path.join(SD15, "tokenizer"))
    t5 = t5_encoder(len(t5_tok))
    for ckpt, dev in [(DEV, True), (SCHNELL, False)]:
        out = os.path.join(DATA, ckpt)
        if os.path.exists(out):
            shutil.rmtree(out)
        if dev:  # FLUX.1-dev's scheduler_config.json
            sched = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                    max_shift=1.15, num_train_timesteps=1000, shift=3.0,
                                                    use_dynamic_shifting=True)
        else:  # FLUX.1-schnell's
            sched = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                    max_shift=1.15, num_train_timesteps=1000, shift=1.0,
                                                    use_dynamic_shifting=False)
        tr = flux_transformer(guidance_embeds=dev, seed=41 if dev else 42)
        pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                            tokenizer_2=t5_tok, transformer=tr)
        pipe.save_pretrained(out, safe_serialization=True)
        # FLUX.1-dev/-schnell ship the CLIP tokenizer in the legacy layout (vocab.json, merges.txt, ...): use
        # sd15-tiny's files as they are instead of the tokenizer.json layout transformers 5 writes.
        shutil.rmtree(os.path.join(out, "tokenizer"))
        shutil.copytree(os.path.join(SD15, "tokenizer"), os.path.join(out, "tokenizer"))
        write_special_tokens_map(os.path.join(out, "tokenizer_2"))
        s1 = resave_sharded(t5, os.path.join(out, "text_encoder_2"), "64KB")
        s2 = resave_sharded(tr, os.path.join(out, "transformer"), "200KB")
        print(f"  {ckpt}: {folder_bytes(out)} bytes; text_encoder_2 {len(s1)} shards, transformer {len(s2)} shards",
              flush=True)
    return t5_tok


# --------------------------------------------------------------------------------------------------------- recording

class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def capture_diffusers_log():
    h = LogCapture()
    logging.getLogger("diffusers").addHandler(h)
    return h


def release_log(h):
    logging.getLogger("diffusers").removeHandler(h)


def _prime_at_least(n):
    n = max(2, n)
    while any(n % k == 0 for k in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def save_arr(d, name, t):
    """Saves a tensor as <name>.npy; above SAMPLE_ABOVE values, every stride-th value of the flattened array."""
    a = t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)
    entry = {"file": name + ".npy", "shape": list(a.shape)}
    if a.size > SAMPLE_ABOVE:
        stride = _prime_at_least(-(-a.size // 4096))
        flat = a.reshape(-1).astype(np.float64)
        save_npy(os.path.join(d, name + ".npy"), a.reshape(-1)[::stride])
        entry["sampled"] = {"stride": stride, "count": int(len(range(0, a.size, stride))),
                            "how": "the file holds x.reshape(-1)[::stride] (C order) of the array of `shape`",
                            "mean": float(flat.mean()), "std": float(flat.std()), "min": float(flat.min()),
                            "max": float(flat.max())}
    else:
        save_npy(os.path.join(d, name + ".npy"), a)
    return entry


DRAW_SITES = {"_encode_vae_image": "vae_encode_image_sample", "prepare_mask_latents": "vae_encode_masked_image_sample",
              "prepare_latents": "noise"}


class TaggedDraws(list):
    """capture.py's randn patch appends every draw here; we note which pipeline method drew it."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def append(self, x):
        super().append(x)
        f, tag = sys._getframe(1), None
        while f is not None and tag is None:
            tag = DRAW_SITES.get(f.f_code.co_name)
            f = f.f_back
        self.tags.append(tag)


def run_flux(pipe, call_kwargs, seed, output_type="np"):
    """Runs `pipe(**call_kwargs)` with `torch.Generator('cpu').manual_seed(seed)`, recording FLUX's intermediates."""
    rec = {"noise": TaggedDraws(), "encodes": [], "calls": [], "in0": None, "out0": None, "out0_uncond": None,
           "steps": [], "schedule": [], "image_latents": None, "mask_latents": None}
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

    def pre(m, args, kw):
        branch = "cond" if kw["encoder_hidden_states"] is rec["encodes"][0][0] else "uncond"
        rec["calls"].append({"timestep": float(kw["timestep"][0]), "branch": branch})
        if rec["in0"] is None:
            rec["in0"] = {k: (None if kw.get(k) is None else kw[k].detach().clone())
                          for k in ["hidden_states", "timestep", "guidance", "img_ids", "txt_ids"]}

    def post(m, args, kw, output):
        o = output[0] if isinstance(output, (tuple, list)) else output.sample
        if rec["out0"] is None:
            rec["out0"] = o.detach().clone()
        elif rec["out0_uncond"] is None and rec["calls"][-1]["branch"] == "uncond" and len(rec["calls"]) == 2:
            rec["out0_uncond"] = o.detach().clone()

    def cb(p, i, t, kw):
        rec["steps"].append(kw["latents"].detach().clone())
        return kw

    patched = {}
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

    pipe.encode_prompt = enc
    for k, v in patched.items():
        setattr(pipe, k, v)
    mod.retrieve_timesteps = rt
    h1 = pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = pipe.transformer.register_forward_hook(post, with_kwargs=True)
    install_randn_patch()
    log = capture_diffusers_log()
    capture._DRAWS["list"] = rec["noise"]
    try:
        out = pipe(**call_kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type,
                   callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"])
    finally:
        capture._DRAWS["list"] = None
        release_log(log)
        h1.remove()
        h2.remove()
        mod.retrieve_timesteps = orig_rt
        del pipe.encode_prompt
        for k in patched:
            delattr(pipe, k)
    img = out.images[0]
    rec["image"] = (np.asarray(img, dtype=np.float32) / 255.0 if isinstance(img, Image.Image)
                    else np.asarray(img, dtype=np.float32))
    rec["warnings"] = log.messages
    return rec


ARG_NAMES = ["prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "guidance_scale",
             "num_inference_steps", "width", "height", "strength", "max_sequence_length", "image", "mask_image",
             "padding_mask_crop"]


def write_flux_case(case_id, inputs, pipe, rec):
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
        out["sampled"] = o["sampled"]
    if "sampled" in o:  # a 512x512 PNG of a random model is ~700 KB: left out, output.npy has the samples
        out["png"] = None
    else:
        Image.fromarray((img * 255).round().astype("uint8")).save(os.path.join(d, "output.png"))
    inputs["output"] = out
    inputs["randn_tensor_draws"] = [dict(save_arr(d, f"noise_{i:02d}", t), drawn_by=tag)
                                    for i, (t, tag) in enumerate(zip(rec["noise"], rec["noise"].tags))]
    emb = {}
    names = ["prompt_embeds", "pooled_prompt_embeds", "text_ids"]
    for j, e in enumerate(rec["encodes"][:2]):
        for name, t in zip(names, e):
            name = name if j == 0 else "negative_" + name
            emb[name] = save_arr(d, name, t)
    inputs["embeddings"] = emb
    inputs["encode_prompt_calls"] = len(rec["encodes"])
    inputs["schedule"] = rec["schedule"][0] if len(rec["schedule"]) == 1 else rec["schedule"]
    inputs["scheduler_timesteps_after_run"] = jsonable(pipe.scheduler.timesteps)
    inputs["transformer_calls"] = rec["calls"]
    inputs["transformer_timesteps"] = [c["timestep"] for c in rec["calls"]]
    i0 = {}
    for k, t in rec["in0"].items():
        if t is None:
            i0[k] = None
        elif k in ("timestep", "guidance"):
            i0[k] = jsonable(t)
        else:
            i0[k] = save_arr(d, "transformer_input_step0_" + k, t)
    inputs["transformer_input_step0"] = i0
    inputs["transformer_output_step0"] = save_arr(d, "transformer_output_step0", rec["out0"])
    if rec["out0_uncond"] is not None:
        inputs["transformer_output_step0_uncond"] = save_arr(d, "transformer_output_step0_uncond",
                                                             rec["out0_uncond"])
    if rec["image_latents"] is not None:
        inputs["image_latents"] = save_arr(d, "image_latents", rec["image_latents"])
        inputs["image_latents"]["what"] = "pipe._encode_vae_image(...): (sample - shift_factor) * scaling_factor"
    if rec["mask_latents"] is not None:
        inputs["mask_latents"] = save_arr(d, "mask_latents", rec["mask_latents"][0])
        inputs["mask_latents"]["what"] = "prepare_mask_latents(...)[0]: the mask at latent size, packed"
        inputs["masked_image_latents"] = save_arr(d, "masked_image_latents", rec["mask_latents"][1])
        inputs["masked_image_latents"]["what"] = "prepare_mask_latents(...)[1]: VAE latents of image*(mask<0.5), packed"
    inputs["latents_per_step"] = save_arr(d, "latents_per_step", torch.stack(rec["steps"]))
    dump_json(os.path.join(d, "inputs.json"), inputs)
    n_calls = len(rec["calls"])
    print(f"  {case_id}: {type(pipe).__name__} {list(img.shape)} {n_calls} transformer calls, "
          f"{len(rec['noise'])} draws, warnings {len(rec['warnings'])}", flush=True)


# ------------------------------------------------------------------------------------------------------------- cases

AUTO = {"text2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
        "inpaint": AutoPipelineForInpainting}

LONG_PROMPT = ("A very long and detailed prompt describing an ancient castle on a misty mountain at sunset, with "
               "golden light on the towers, a winding river in the valley, a small village with red roofs, "
               "dragons circling above the clouds, a knight riding a white horse across the stone bridge, and "
               "thousands of glowing lanterns floating into the dark blue sky")

CASES = [
    # id, checkpoint, task, from_pipe_of, seed, kwargs (left out = the pipeline's default)
    ("flux-dev-t2i", DEV, "text2img", None, 0,
     dict(prompt="a red fox in the snow, oil painting", width=64, height=64, num_inference_steps=4,
          guidance_scale=3.5)),
    ("flux-schnell-t2i", SCHNELL, "text2img", None, 1,
     dict(prompt="a lighthouse on a rocky coast at sunset", width=64, height=48, num_inference_steps=4,
          guidance_scale=0.0, max_sequence_length=64)),
    ("flux-dev-t2i-truecfg", DEV, "text2img", None, 2,
     dict(prompt="a cozy café in Paris", prompt_2="a watercolor of a café au lait and a crème brûlée",
          negative_prompt="blurry, low quality", true_cfg_scale=4.0, width=64, height=64, num_inference_steps=3,
          max_sequence_length=32)),
    ("flux-dev-t2i-maxseq-short", DEV, "text2img", None, 3,
     dict(prompt=LONG_PROMPT, width=64, height=64, num_inference_steps=2, max_sequence_length=16)),
    ("flux-dev-t2i-oddsize", DEV, "text2img", None, 4,
     dict(prompt="a small robot watering tomatoes", width=72, height=60, num_inference_steps=2)),
    ("flux-dev-t2i-default-size", DEV, "text2img", None, 5,
     dict(prompt="a koi pond with lily pads", num_inference_steps=2, max_sequence_length=16)),
    ("flux-dev-i2i", DEV, "img2img", None, 6,
     dict(prompt="a watercolor landscape", image="images/init_64x64.png", strength=0.6, num_inference_steps=4,
          width=64, height=64)),
    ("flux-dev-i2i-frompipe", DEV, "img2img", "text2img", 7,
     dict(prompt="an oil painting of a harbor", image="images/init_48x64.png", width=48, height=64, strength=0.75,
          num_inference_steps=4)),
    ("flux-dev-inpaint", DEV, "inpaint", None, 8,
     dict(prompt="a bouquet of roses", image="images/init_64x64.png", mask_image="images/mask_rect_64x64.png",
          width=64, height=64, strength=0.9, num_inference_steps=4)),
    ("flux-dev-inpaint-crop", DEV, "inpaint", None, 9,
     dict(prompt="a bouquet of roses", image="images/init_64x64.png", mask_image="images/mask_soft_64x64.png",
          width=64, height=64, strength=0.9, num_inference_steps=4, padding_mask_crop=8)),
    ("flux-dev-inpaint-crop-rect", DEV, "inpaint", None, 11,  # crop region (6, 10, 54, 58): a real crop
     dict(prompt="a bouquet of roses", image="images/init_64x64.png", mask_image="images/mask_rect_64x64.png",
          width=64, height=64, strength=0.9, num_inference_steps=4, padding_mask_crop=8)),
    ("flux-schnell-i2i", SCHNELL, "img2img", None, 10,
     dict(prompt="a watercolor landscape", image="images/init_64x64.png", strength=0.5, num_inference_steps=4)),
]


def load_pipe(ckpt, task, of):
    path = os.path.join(DATA, ckpt)
    if of is None:
        pipe = AUTO[task].from_pretrained(path)
        load = {"route": "from_pretrained", "call": f"{AUTO[task].__name__}.from_pretrained(checkpoint)"}
    else:
        pipe = AUTO[task].from_pipe(AUTO[of].from_pretrained(path))
        load = {"route": "from_pipe", "kwargs": {},
                "call": f"{AUTO[task].__name__}.from_pipe({AUTO[of].__name__}.from_pretrained(checkpoint))"}
    pipe.set_progress_bar_config(disable=True)
    return pipe, load


def open_images(kw):
    call = dict(kw)
    for k in ("image", "mask_image"):
        if k in call:
            im = Image.open(os.path.join(DATA, call[k]))
            call[k] = im.convert("L") if k == "mask_image" else im.convert("RGB")
    return call


def defaults_of(pipe):
    sig = inspect.signature(type(pipe).__call__)
    return {k: sig.parameters[k].default for k in ARG_NAMES if k in sig.parameters}


def run_cases():
    for case_id, ckpt, task, of, seed, kw in CASES:
        pipe, load = load_pipe(ckpt, task, of)
        call = open_images(kw)
        for k in ("image", "mask_image"):
            if k in kw:
                w, h = call[k].size
                if k == "image" and "width" in kw:
                    assert (w, h) == (kw["width"], kw["height"]), (case_id, w, h)
        output_type = "pil" if kw.get("padding_mask_crop") else "np"
        inputs = {"checkpoint": ckpt, "task": task, "seed": seed}
        inputs.update({k: kw.get(k) for k in ARG_NAMES})
        inputs["kwargs_passed"] = sorted(kw)
        defaults = defaults_of(pipe)
        inputs["pipeline_defaults"] = {k: v for k, v in defaults.items() if k not in kw and v is not None}
        inputs["load"] = load
        inputs["output_type"] = output_type
        if output_type == "pil":
            inputs["output_note"] = ("padding_mask_crop requires output_type='pil' (diffusers raises for 'np'); "
                                     "output.npy = the returned PIL image (after apply_overlay) as uint8 / 255")
            mask = call["mask_image"]
            inputs["crop_coords"] = list(VaeImageProcessor.get_crop_region(
                mask, kw.get("width"), kw.get("height"), pad=kw["padding_mask_crop"]))
        try:
            rec = run_flux(pipe, call, seed, output_type=output_type)
        except Exception as e:  # noqa: BLE001
            write_error_case(case_id, inputs, e)
            continue
        write_flux_case(case_id, inputs, pipe, rec)


# ----------------------------------------------------------------------------------------------- tokenizer ids file

T5_STRINGS = [
    "",
    "a cat",
    "A cozy café in Paris serving crème brûlée; naïve façade, jalapeño, Zürich, São Paulo.",
    "emoji 😀🎨 and CJK 日本語の文章 and 中文 and Ελληνικά",
    "   extra    spaces\tand\ttabs\nand newlines   ",
    "digits 1234567890, 3.14159 and punctuation!?.,;:'\"()[]{}<>@#$%^&*-_=+~/\\|",
    "the end</s> and a sentinel <extra_id_3> in the middle",
    "<extra_id_0>",
    "  leading and trailing spaces  ",
    "UPPER lower MiXeD",
    " ".join(f"word{i} castle river" for i in range(200)),
]


def t5_ids_file(tok_folder_rel):
    tok = T5TokenizerFast.from_pretrained(os.path.join(DATA, tok_folder_rel))
    raw = Tokenizer.from_file(os.path.join(DATA, tok_folder_rel, "tokenizer.json"))
    cases = []
    for s in T5_STRINGS:
        c = {"text": s}
        for n in (512, 16):
            c[f"ids_max_length_{n}"] = tok(s, padding="max_length", max_length=n, truncation=True,
                                           add_special_tokens=True).input_ids
        c["ids_untruncated"] = tok(s, padding="longest").input_ids
        assert raw.encode(s).ids == c["ids_untruncated"], s  # tokenizer.json alone gives the same ids
        c["tokens_untruncated"] = tok.convert_ids_to_tokens(c["ids_untruncated"])
        cases.append(c)
    assert len(cases[-1]["ids_untruncated"]) > 512
    dump_json(os.path.join(DATA, "tokenizers", "t5-tiny-ids.json"), {
        "description": ("T5TokenizerFast.from_pretrained(tokenizer)(text, padding='max_length', max_length=N, "
                        "truncation=True, add_special_tokens=True).input_ids as FluxPipeline._get_t5_prompt_embeds "
                        "calls it, for N = 512 and 16; ids_untruncated = (text, padding='longest') (the untruncated "
                        "ids diffusers compares against to warn). <pad> 0, </s> 1, <unk> 2."),
        "tokenizer": tok_folder_rel, "vocab_size": len(tok), "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__, "cases": cases})
    print(f"  tokenizers/t5-tiny-ids.json: {len(cases)} strings", flush=True)


# ------------------------------------------------------------------------------------------------------ error probes

def probe(name, pipe, kw, seed=0, count_calls=False, output_type="np", note=None):
    entry = {"pipeline": type(pipe).__name__, "kwargs": {k: v for k, v in kw.items()}}
    if note:
        entry["note"] = note
    call = open_images(kw)
    calls = []
    h = pipe.transformer.register_forward_pre_hook(lambda m, a, k: calls.append(float(k["timestep"][0])),
                                                   with_kwargs=True)
    log = capture_diffusers_log()
    try:
        out = pipe(**call, generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type)
        img = out.images[0]
        entry["outcome"] = "ok"
        entry["output_shape"] = list(np.asarray(img).shape)
    except Exception as e:  # noqa: BLE001
        entry["outcome"] = "error"
        entry["error"] = {"type": type(e).__name__, "message": str(e)}
    finally:
        release_log(log)
        h.remove()
    entry["warnings"] = log.messages
    if count_calls or entry["outcome"] == "ok":
        entry["transformer_calls"] = len(calls)
        entry["transformer_timesteps"] = calls
    print(f"  probe {name}: {entry['outcome']} {entry.get('error', {}).get('message', '')[:90]}", flush=True)
    return entry


def error_probes():
    dev = os.path.join(DATA, DEV)
    t2i = AutoPipelineForText2Image.from_pretrained(dev)
    i2i = AutoPipelineForImage2Image.from_pretrained(dev)
    inp = AutoPipelineForInpainting.from_pretrained(dev)
    for p in (t2i, i2i, inp):
        p.set_progress_bar_config(disable=True)
    base = dict(prompt="a cat", width=64, height=64)
    e = {}
    e["max_sequence_length_600"] = probe("max_sequence_length_600", t2i,
                                         dict(base, num_inference_steps=1, max_sequence_length=600))
    e["size_not_divisible"] = probe("size_not_divisible", t2i,
                                    dict(prompt="a cat", width=36, height=44, num_inference_steps=1,
                                         max_sequence_length=16))
    e["true_cfg_without_negative_prompt"] = probe(
        "true_cfg_without_negative_prompt", t2i,
        dict(base, num_inference_steps=2, true_cfg_scale=4.0, max_sequence_length=16), count_calls=True,
        note="no error, no warning; true CFG needs a negative prompt: one transformer call per step")
    e["true_cfg_with_negative_prompt"] = probe(
        "true_cfg_with_negative_prompt", t2i,
        dict(base, num_inference_steps=2, true_cfg_scale=4.0, negative_prompt="blurry", max_sequence_length=16),
        count_calls=True)
    e["true_cfg_1_with_negative_prompt"] = probe(
        "true_cfg_1_with_negative_prompt", t2i,
        dict(base, num_inference_steps=2, true_cfg_scale=1.0, negative_prompt="blurry", max_sequence_length=16),
        count_calls=True)
    img = dict(base, image="images/init_64x64.png", num_inference_steps=4, max_sequence_length=16)
    e["img2img_strength_0"] = probe("img2img_strength_0", i2i, dict(img, strength=0.0))
    e["img2img_strength_1.5"] = probe("img2img_strength_1.5", i2i, dict(img, strength=1.5))
    e["img2img_strength_0.1_4_steps"] = probe("img2img_strength_0.1_4_steps", i2i, dict(img, strength=0.1))
    e["inpaint_mask_size_differs"] = probe(
        "inpaint_mask_size_differs", inp,
        dict(img, mask_image="images/mask_rect_48x64.png", strength=0.9),
        note=("no error: mask_processor.preprocess resizes the 48x64 mask to height x width (64x64, PIL lanczos, "
              "aspect not kept) like the image, then binarizes it at 0.5"))
    e["inpaint_strength_1.5"] = probe("inpaint_strength_1.5", inp,
                                      dict(img, mask_image="images/mask_rect_64x64.png", strength=1.5))
    e["inpaint_padding_mask_crop_output_type_np"] = probe(
        "inpaint_padding_mask_crop_output_type_np", inp,
        dict(img, mask_image="images/mask_rect_64x64.png", strength=0.9, padding_mask_crop=8))
    dump_json(os.path.join(DATA, "flux_errors.json"), {
        "description": ("diffusers 0.42.1 outcomes on checkpoints/flux-dev-tiny (seed 0, output_type np unless "
                        "stated): error type/message, or 'ok' with the output shape, the transformer calls and "
                        "the diffusers warnings logged."),
        "checkpoint": DEV, "probes": e})


def torch_layout_spreads():
    """For every case that VAE-encodes an image: how far diffusers disagrees with itself there. The
    pipeline hands the VAE a channels-last view (`numpy_to_pt` transposes without copying), and torch's
    channels-last convolutions round differently from its contiguous ones: at 512x512 on the random VAE the
    encoded latents move by ~1e-4 between the two layouts. Recorded as `torch_layout_spread` (max |image
    latents, as the pipeline lays the image out - contiguous|), the floor of any comparison right after the
    encode."""
    for case_id in sorted(os.listdir(os.path.join(DATA, "cases"))):
        if not case_id.startswith("flux-"):
            continue
        path = os.path.join(DATA, "cases", case_id, "inputs.json")
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        if case.get("status") != "ok" or not case.get("image"):
            continue
        vae = AutoencoderKL.from_pretrained(os.path.join(DATA, case["checkpoint"], "vae"))
        proc = VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1) * 2)
        h, w = case["output"]["shape"][:2]
        crop = case.get("padding_mask_crop")
        image = Image.open(os.path.join(DATA, case["image"]))
        if crop:
            continue  # the crop path copies (resize_and_fill), so no layout question arises
        x = proc.preprocess(image, height=h, width=w)
        latents = []
        for t in (x, x.contiguous()):
            with torch.no_grad():
                d = vae.encode(t).latent_dist
            latents.append(d.mean + d.std * torch.randn(d.mean.shape, generator=torch.Generator("cpu").manual_seed(0)))
        spread = float(((latents[0] - latents[1]) * vae.config.scaling_factor).abs().max())
        case["torch_layout_spread"] = spread
        dump_json(path, case)
        print(f"  {case_id}: torch_layout_spread {spread:.3g}", flush=True)


def main():
    torch.manual_seed(0)
    build_checkpoints()
    t5_ids_file(DEV + "/tokenizer_2")
    run_cases()
    error_probes()
    torch_layout_spreads()


if __name__ == "__main__":
    main()
