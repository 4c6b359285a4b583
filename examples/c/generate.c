/*
 * generate — text-to-image, image-to-image and inpainting from the command line, through the
 * autopipeline C API only. Copy from it freely.
 *
 *   generate --model DIR|ID --task text2img|img2img|inpaint --prompt S [--negative-prompt S]
 *            [--prompt-2 S] [--negative-prompt-2 S] [--steps N] [--guidance F] [--strength F]
 *            [--seed N] [--width N] [--height N] [--image PNG] [--mask PNG] [--from-pipe]
 *            [--preview-every N --preview-dir DIR] [--scheduler NAME] [--scheduler-config JSON]
 *            [--vae-tiling] [--vae-slicing] [--rng cpu|cuda] [--device cpu|cuda[:N]]
 *            [--dtype f32|f16|bf16] [--preload] [--timesteps T,T,...] [--sigmas S,S,...]
 *            [--max-sequence-length N] [--true-cfg F] [--padding-mask-crop N]
 *            [--prompt-3 S] [--negative-prompt-3 S] [--skip-layers L,L,... [--slg-scale F]
 *             [--slg-start F] [--slg-stop F]] [--clip-skip N] --out PNG
 *
 * --scheduler switches the scheduler for this run (a diffusers class name or an alias such as
 * euler_a, dpm++2m_karras, dpm++2m_sde_karras, dpm++2s, deis, heun, unipc, lcm); --scheduler-config adds config
 * overrides as a JSON object, e.g. '{"use_karras_sigmas": true}'. --vae-tiling decodes in tiles (large
 * images in the memory of one tile, as diffusers' enable_vae_tiling); --vae-slicing one image at a time.
 * --rng cuda makes --seed a torch.Generator("cuda") seed, for seeds first run on a GPU. --device runs
 * on a GPU (CUDA builds), --dtype sets the UNet / text encoder precision. --preload reads every weight
 * while loading (by default the first run reads them as it first uses them). --timesteps / --sigmas
 * pass custom descending schedules as comma lists (diffusers' timesteps= / sigmas=, e.g.
 * --timesteps 999,500,1), for schedulers that take them. FLUX: --prompt-2 goes to T5,
 * --max-sequence-length sets T5's prompt length (default 512), --true-cfg F > 1 with --negative-prompt
 * runs true classifier-free guidance (--guidance is [dev]'s distilled guidance). --padding-mask-crop N
 * inpaints only the mask's box grown by N pixels, at full size, and pastes it back. SD3: --prompt-3 /
 * --negative-prompt-3 go to T5, --skip-layers turns on skip-layer guidance over those blocks.
 *
 * An omitted flag means the pipeline's default, as in diffusers. Prints a progress bar to stderr,
 * exits 0 on success and 1 (with ap_last_error()) on any error. With --preview-every N, writes a cheap
 * preview of the latents after every N-th denoising step to DIR/step-NNNN.png (DIR must exist).
 */
#include "autopipeline.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: generate --model DIR|ID --task text2img|img2img|inpaint --prompt S\n"
            "                [--negative-prompt S] [--prompt-2 S] [--negative-prompt-2 S]\n"
            "                [--steps N] [--guidance F] [--strength F] [--seed N]\n"
            "                [--width N] [--height N] [--image PNG] [--mask PNG] [--from-pipe]\n"
            "                [--preview-every N --preview-dir DIR]\n"
            "                [--scheduler NAME] [--scheduler-config JSON]\n"
            "                [--vae-tiling] [--vae-slicing] [--rng cpu|cuda]\n"
            "                [--device cpu|cuda[:N]] [--dtype f32|f16|bf16] [--preload]\n"
            "                [--timesteps T,T,...] [--sigmas S,S,...]\n"
            "                [--max-sequence-length N] [--true-cfg F] [--padding-mask-crop N]\n"
            "                [--prompt-3 S] [--negative-prompt-3 S] [--skip-layers L,L,...]\n"
            "                [--slg-scale F] [--slg-start F] [--slg-stop F] [--clip-skip N]\n"
            "                --out PNG\n");
}

static int fail(const char *what) {
    fprintf(stderr, "\nerror: %s: %s\n", what, ap_last_error());
    return 1;
}

static int bad_arg(const char *flag, const char *value) {
    fprintf(stderr, "error: invalid value for %s: '%s'\n", flag, value ? value : "(missing)");
    usage(stderr);
    return 1;
}

static int parse_long(const char *s, long min, long max, long *out) {
    char *end = NULL;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) return 0;
    *out = v;
    return 1;
}

static int parse_u64(const char *s, uint64_t *out) {
    char *end = NULL;
    unsigned long long v;
    if (s[0] == '-') return 0;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') return 0;
    *out = (uint64_t)v;
    return 1;
}

static int parse_float(const char *s, float *out) {
    char *end = NULL;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || v != v) return 0;
    *out = (float)v;
    return 1;
}

/* A comma list of numbers ("999,500,1") into `out` (room for `cap`); NaN and empty items refused. */
#define MAX_LIST 1000
#define MAX_LAYERS 64
static int parse_list(const char *s, double *out, uint32_t cap, uint32_t *n) {
    *n = 0;
    for (;;) {
        char *end = NULL;
        double v;
        errno = 0;
        v = strtod(s, &end);
        if (errno != 0 || end == s || v != v || *n == cap) return 0;
        out[(*n)++] = v;
        if (*end == '\0') return 1;
        if (*end != ',') return 0;
        s = end + 1;
    }
}

/* Draws a progress bar; returning nonzero lets the work continue. */
static int32_t on_progress(uint32_t step, uint32_t total, void *user_data) {
    const char *label = (const char *)user_data;
    int width = 30, filled = total ? (int)((uint64_t)step * width / total) : width, i;
    fprintf(stderr, "\r%-8s [", label);
    for (i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %u/%u", step, total);
    if (step == total) fputc('\n', stderr);
    fflush(stderr);
    return 1;
}

/* Writes each preview (one per image of the batch) as DIR/step-NNNN[-I].png. */
static void on_preview(uint32_t step, uint32_t total, const ap_images *images, void *user_data) {
    const char *dir = (const char *)user_data;
    char path[4096];
    size_t i;
    (void)total;
    for (i = 0; i < images->count; i++) {
        if (images->count == 1) snprintf(path, sizeof path, "%s/step-%04u.png", dir, step);
        else snprintf(path, sizeof path, "%s/step-%04u-%u.png", dir, step, (unsigned)i);
        if (ap_image_save_png(&images->images[i], path) != AP_OK)
            fprintf(stderr, "\nwarning: preview %s: %s\n", path, ap_last_error());
    }
}

/* The run's warnings (e.g. a truncated prompt) arrive through the pipeline's log callback. */
static void on_log(int32_t level, const char *message, void *user_data) {
    (void)user_data;
    fprintf(stderr, "\n%s: %s\n", level >= AP_LOG_ERROR ? "error" : "warning", message);
}

static int task_of(const char *name, int32_t *task) {
    if (strcmp(name, "text2img") == 0) *task = AP_TASK_TEXT2IMAGE;
    else if (strcmp(name, "img2img") == 0) *task = AP_TASK_IMAGE2IMAGE;
    else if (strcmp(name, "inpaint") == 0) *task = AP_TASK_INPAINT;
    else return 0;
    return 1;
}

int main(int argc, char **argv) {
    const char *model = NULL, *task_name = "text2img", *out_path = NULL;
    const char *image_path = NULL, *mask_path = NULL, *preview_dir = NULL;
    int from_pipe = 0, have_prompt = 0, rc = 1, i;
    int32_t task;
    static double timesteps[MAX_LIST], sigmas[MAX_LIST], layer_values[MAX_LAYERS];
    static uint32_t skip_layers[MAX_LAYERS];
    ap_run_params run = ap_run_params_default();
    ap_load_params load = ap_load_params_default();
    ap_pipeline *pipe = NULL, *base = NULL;
    ap_image *image = NULL, *mask = NULL;
    ap_images *images = NULL;

    for (i = 1; i < argc; i++) {
        const char *flag = argv[i];
        const char *val = (i + 1 < argc) ? argv[i + 1] : NULL;
        long n;
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(flag, "--from-pipe") == 0) {
            from_pipe = 1;
            continue;
        } else if (strcmp(flag, "--vae-tiling") == 0) {
            run.vae_tiling = 1;
            continue;
        } else if (strcmp(flag, "--vae-slicing") == 0) {
            run.vae_slicing = 1;
            continue;
        } else if (strcmp(flag, "--preload") == 0) {
            load.preload = 1;
            continue;
        }
        if (!val) return bad_arg(flag, NULL);
        i++;
        if (strcmp(flag, "--model") == 0) model = val;
        else if (strcmp(flag, "--task") == 0) task_name = val;
        else if (strcmp(flag, "--prompt") == 0) { run.prompt = val; have_prompt = 1; }
        else if (strcmp(flag, "--negative-prompt") == 0) run.negative_prompt = val;
        else if (strcmp(flag, "--prompt-2") == 0) run.prompt_2 = val;
        else if (strcmp(flag, "--negative-prompt-2") == 0) run.negative_prompt_2 = val;
        else if (strcmp(flag, "--prompt-3") == 0) run.prompt_3 = val;
        else if (strcmp(flag, "--negative-prompt-3") == 0) run.negative_prompt_3 = val;
        else if (strcmp(flag, "--skip-layers") == 0) {
            uint32_t k;
            if (!parse_list(val, layer_values, MAX_LAYERS, &run.num_skip_guidance_layers)) return bad_arg(flag, val);
            for (k = 0; k < run.num_skip_guidance_layers; k++) {
                if (layer_values[k] < 0 || layer_values[k] > 1023 || layer_values[k] != (double)(uint32_t)layer_values[k])
                    return bad_arg(flag, val);
                skip_layers[k] = (uint32_t)layer_values[k];
            }
            run.skip_guidance_layers = skip_layers;
        } else if (strcmp(flag, "--clip-skip") == 0) {
            if (!parse_long(val, 1, 64, &n)) return bad_arg(flag, val);
            run.clip_skip = (int32_t)n;
        } else if (strcmp(flag, "--slg-scale") == 0) {
            if (!parse_float(val, &run.skip_layer_guidance_scale)) return bad_arg(flag, val);
        } else if (strcmp(flag, "--slg-start") == 0) {
            if (!parse_float(val, &run.skip_layer_guidance_start)) return bad_arg(flag, val);
        } else if (strcmp(flag, "--slg-stop") == 0) {
            if (!parse_float(val, &run.skip_layer_guidance_stop)) return bad_arg(flag, val);
        }
        else if (strcmp(flag, "--steps") == 0) {
            if (!parse_long(val, 1, 1000, &n)) return bad_arg(flag, val);
            run.num_inference_steps = (int32_t)n;
        } else if (strcmp(flag, "--guidance") == 0) {
            if (!parse_float(val, &run.guidance_scale)) return bad_arg(flag, val);
        } else if (strcmp(flag, "--strength") == 0) {
            if (!parse_float(val, &run.strength) || run.strength < 0.0f || run.strength > 1.0f)
                return bad_arg(flag, val);
        } else if (strcmp(flag, "--seed") == 0) {
            if (!parse_u64(val, &run.seed)) return bad_arg(flag, val);
        } else if (strcmp(flag, "--width") == 0) {
            if (!parse_long(val, 1, 1 << 20, &n)) return bad_arg(flag, val);
            run.width = (int32_t)n;
        } else if (strcmp(flag, "--height") == 0) {
            if (!parse_long(val, 1, 1 << 20, &n)) return bad_arg(flag, val);
            run.height = (int32_t)n;
        } else if (strcmp(flag, "--image") == 0) image_path = val;
        else if (strcmp(flag, "--mask") == 0) mask_path = val;
        else if (strcmp(flag, "--out") == 0) out_path = val;
        else if (strcmp(flag, "--preview-every") == 0) {
            if (!parse_long(val, 1, 1000, &n)) return bad_arg(flag, val);
            run.preview_every = (int32_t)n;
        } else if (strcmp(flag, "--preview-dir") == 0) preview_dir = val;
        else if (strcmp(flag, "--scheduler") == 0) run.scheduler = val;
        else if (strcmp(flag, "--scheduler-config") == 0) run.scheduler_config_json = val;
        else if (strcmp(flag, "--rng") == 0) run.rng = val;
        else if (strcmp(flag, "--timesteps") == 0) {
            if (!parse_list(val, timesteps, MAX_LIST, &run.num_timesteps)) return bad_arg(flag, val);
            run.timesteps = timesteps;
        } else if (strcmp(flag, "--sigmas") == 0) {
            if (!parse_list(val, sigmas, MAX_LIST, &run.num_sigmas)) return bad_arg(flag, val);
            run.sigmas = sigmas;
        }
        else if (strcmp(flag, "--max-sequence-length") == 0) {
            if (!parse_long(val, 1, 512, &n)) return bad_arg(flag, val);
            run.max_sequence_length = (int32_t)n;
        } else if (strcmp(flag, "--true-cfg") == 0) {
            if (!parse_float(val, &run.true_cfg_scale)) return bad_arg(flag, val);
        } else if (strcmp(flag, "--padding-mask-crop") == 0) {
            if (!parse_long(val, 1, 1 << 20, &n)) return bad_arg(flag, val);
            run.padding_mask_crop = (int32_t)n;
        }
        else if (strcmp(flag, "--device") == 0) load.device = val;
        else if (strcmp(flag, "--dtype") == 0) load.dtype = val;
        else {
            fprintf(stderr, "error: unknown flag %s\n", flag);
            usage(stderr);
            return 1;
        }
    }
    if (!model || !out_path || !have_prompt) {
        fprintf(stderr, "error: --model, --prompt and --out are required\n");
        usage(stderr);
        return 1;
    }
    if (!task_of(task_name, &task)) return bad_arg("--task", task_name);
    if ((run.preview_every > 0) != (preview_dir != NULL)) {
        fprintf(stderr, "error: --preview-every and --preview-dir go together\n");
        usage(stderr);
        return 1;
    }

    if (image_path && ap_image_load(image_path, &image) != AP_OK) return fail("reading --image");
    if (mask_path && ap_image_load(mask_path, &mask) != AP_OK) { rc = fail("reading --mask"); goto done; }
    run.image = image;
    run.mask = mask;

    load.progress = on_progress;
    load.progress_user_data = (void *)"loading";
    if (from_pipe) {
        /* Load for another task, then derive the requested one from the same models. */
        int32_t first = task == AP_TASK_TEXT2IMAGE ? AP_TASK_IMAGE2IMAGE : AP_TASK_TEXT2IMAGE;
        if (ap_from_pretrained(model, first, &load, &base) != AP_OK) { rc = fail("loading the model"); goto done; }
        if (ap_from_pipe(base, task, NULL, &pipe) != AP_OK) { rc = fail("from_pipe"); goto done; }
    } else if (ap_from_pretrained(model, task, &load, &pipe) != AP_OK) {
        rc = fail("loading the model");
        goto done;
    }

    if (ap_pipeline_set_log_callback(pipe, on_log, NULL, AP_LOG_WARN) != AP_OK) {
        rc = fail("setting the log callback");
        goto done;
    }
    run.progress = on_progress;
    run.progress_user_data = (void *)"denoise";
    if (preview_dir) {
        run.preview = on_preview;
        run.preview_user_data = (void *)preview_dir;
        run.preview_mode = AP_PREVIEW_LATENT;
    }
    if (ap_run(pipe, &run, &images) != AP_OK) { rc = fail("generating"); goto done; }
    if (images->count < 1 || ap_image_save_png(&images->images[0], out_path) != AP_OK) {
        rc = fail("writing the image");
        goto done;
    }
    fprintf(stderr, "wrote %s (%ux%u)\n", out_path, images->images[0].width, images->images[0].height);
    rc = 0;

done:
    ap_images_free(images);
    ap_pipeline_free(pipe);
    ap_pipeline_free(base);
    ap_image_free(image);
    ap_image_free(mask);
    return rc;
}
