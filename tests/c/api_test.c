/*
 * The C ABI exercised from C: a full generation (written as PNG for the Rust harness to compare with
 * diffusers), from_pipe, cancellation, and the error paths a C caller can hit.
 *
 *   api_test <sd15-tiny dir> <unsupported dir> <out.png>
 */
#include "autopipeline.h"

#include <stdio.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond, what)                                                          \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "FAIL %s:%d %s (last error: %s)\n", __FILE__, __LINE__, \
                    what, ap_last_error());                                        \
            failures++;                                                            \
        }                                                                          \
    } while (0)

static int32_t count_steps(uint32_t step, uint32_t total, void *user_data) {
    int *n = (int *)user_data;
    (void)total;
    *n = (int)step;
    return 1;
}

static int32_t cancel_at_two(uint32_t step, uint32_t total, void *user_data) {
    (void)total;
    (void)user_data;
    return step < 2;
}

int main(int argc, char **argv) {
    ap_pipeline *pipe = NULL, *img2img = NULL, *bad = NULL;
    ap_images *images = NULL;
    ap_run_params run;
    ap_load_params load = ap_load_params_default();
    int steps_seen = 0;
    char path[4096];
    static const char invalid_utf8[] = {'a', (char)0xff, 'b', 0};

    if (argc != 4) {
        fprintf(stderr, "usage: api_test <sd15-tiny dir> <unsupported dir> <out.png>\n");
        return 2;
    }
    CHECK(strcmp(ap_version(), AUTOPIPELINE_VERSION) == 0, "ap_version matches the header");

    /* Load and run the recorded case sd15-t2i-cfg-neg. */
    CHECK(ap_from_pretrained(argv[1], AP_TASK_TEXT2IMAGE, &load, &pipe) == AP_OK, "load sd15-tiny");
    if (!pipe) return 1;
    run = ap_run_params_default();
    run.prompt = "A painting of a squirrel eating a burger";
    run.negative_prompt = "blurry, low quality";
    run.seed = 42;
    run.num_inference_steps = 4;
    run.guidance_scale = 7.5f;
    run.width = 64;
    run.height = 64;
    run.progress = count_steps;
    run.progress_user_data = &steps_seen;
    CHECK(ap_run(pipe, &run, &images) == AP_OK, "run");
    CHECK(steps_seen == 5, "progress reached the last of 5 UNet steps (PNDM repeats one)");
    if (images) {
        CHECK(images->count == 1, "one image");
        CHECK(images->images[0].width == 64 && images->images[0].height == 64, "64x64");
        CHECK(images->images[0].channels == 4 && images->images[0].stride == 256, "RGBA8, packed rows");
        CHECK(images->images[0].data[3] == 255, "opaque alpha");
        CHECK(ap_image_save_png(&images->images[0], argv[3]) == AP_OK, "save png");
    }
    ap_images_free(images);
    images = NULL;

    /* Cancel from the progress callback: status, message, and the pipeline still works after. */
    run.progress = cancel_at_two;
    CHECK(ap_run(pipe, &run, &images) == AP_ERR_CANCELLED, "cancelled run");
    CHECK(images == NULL, "no images after cancel");
    run.progress = NULL;
    run.num_inference_steps = 1;
    CHECK(ap_run(pipe, &run, &images) == AP_OK, "run after cancel");
    ap_images_free(images);
    images = NULL;

    /* from_pipe shares the models; freeing in either order is fine. */
    CHECK(ap_from_pipe(pipe, AP_TASK_IMAGE2IMAGE, "{\"requires_safety_checker\": true}", &img2img) == AP_OK,
          "from_pipe");
    CHECK(ap_from_pipe(pipe, AP_TASK_INPAINT, "[1, 2]", &bad) == AP_ERR_INVALID_ARGUMENT, "overrides must be an object");

    /* Introspection: JSON strings the caller frees. */
    {
        char *json = NULL;
        CHECK(ap_pipeline_info(img2img, &json) == AP_OK && json, "ap_pipeline_info");
        CHECK(json && strstr(json, "\"class_name\":\"StableDiffusionImg2ImgPipeline\""), "info names the class");
        ap_string_free(json);
        json = NULL;
        CHECK(ap_pipeline_config_json(img2img, &json) == AP_OK && json &&
                  strstr(json, "\"requires_safety_checker\":true"),
              "config carries the from_pipe override");
        ap_string_free(json);
        json = NULL;
        CHECK(ap_supported_families(&json) == AP_OK && json && strstr(json, "\"status\":\"supported\""),
              "supported families");
        ap_string_free(json);
        json = (char *)"not NULL";
        CHECK(ap_pipeline_info(NULL, &json) == AP_ERR_INVALID_ARGUMENT && json == NULL, "info of NULL");
        ap_string_free(NULL);
    }
    CHECK(bad == NULL, "out cleared on failure");

    /* Invalid arguments. */
    CHECK(ap_run(NULL, &run, &images) == AP_ERR_INVALID_ARGUMENT, "NULL pipeline");
    CHECK(strstr(ap_last_error(), "pipe") != NULL, "message names the argument");
    CHECK(ap_run(pipe, NULL, &images) == AP_ERR_INVALID_ARGUMENT, "NULL params");
    CHECK(ap_run(pipe, &run, NULL) == AP_ERR_INVALID_ARGUMENT, "NULL out");
    run.prompt = invalid_utf8;
    CHECK(ap_run(pipe, &run, &images) == AP_ERR_INVALID_ARGUMENT, "invalid UTF-8 prompt");
    CHECK(strstr(ap_last_error(), "UTF-8") != NULL, "message says UTF-8");
    run.prompt = "ok";
    run.width = 60;
    CHECK(ap_run(pipe, &run, &images) == AP_ERR_INVALID_ARGUMENT, "width not a multiple of 8");
    CHECK(strstr(ap_last_error(), "divisible by 8") != NULL, "diffusers' message");
    run.width = 64;
    run.struct_size = 12;
    CHECK(ap_run(pipe, &run, &images) == AP_ERR_INVALID_ARGUMENT, "wrong struct_size");
    run.struct_size = sizeof(run);
    run.guidance_scale = 0.0f / 0.0f;
    CHECK(ap_run(pipe, &run, &images) == AP_ERR_INVALID_ARGUMENT, "NaN guidance");
    CHECK(ap_from_pretrained(argv[1], 7, NULL, &bad) == AP_ERR_INVALID_ARGUMENT, "unknown task");
    CHECK(ap_from_pretrained(NULL, AP_TASK_TEXT2IMAGE, NULL, &bad) == AP_ERR_INVALID_ARGUMENT, "NULL model");

    /* Unsupported and missing checkpoints. */
    snprintf(path, sizeof path, "%s/shap-e-img2img", argv[2]);
    CHECK(ap_from_pretrained(path, AP_TASK_TEXT2IMAGE, NULL, &bad) == AP_ERR_UNSUPPORTED, "shap-e unsupported");
    CHECK(strstr(ap_last_error(), "AutoPipeline can't find a pipeline linked to ShapEImg2ImgPipeline for None") != NULL,
          "diffusers' exact text");
    snprintf(path, sizeof path, "%s/does-not-exist", argv[2]);
    CHECK(ap_from_pretrained(path, AP_TASK_TEXT2IMAGE, NULL, &bad) == AP_ERR_NOT_FOUND, "missing folder");
    CHECK(bad == NULL, "no pipeline on failure");

    /* Free functions accept NULL. */
    ap_pipeline_free(NULL);
    ap_images_free(NULL);
    ap_image_free(NULL);

    ap_pipeline_free(pipe);
    ap_pipeline_free(img2img);
    if (failures == 0) printf("c api: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
