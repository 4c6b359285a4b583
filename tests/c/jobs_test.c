/*
 * The asynchronous C API exercised from C, the way a game loop uses it: start a job, poll it once per
 * "frame", take the result; cancel mid-run; free a running job; wait with a timeout; load in the
 * background; previews and log messages from the worker thread.
 *
 *   jobs_test <sd15-tiny dir>
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

/* What the worker thread's callbacks record; read by the main thread only after the job finished
 * (ap_job_wait / a finished poll orders the accesses). */
typedef struct {
    int progress_calls;
    int last_step;
    int previews;
    int preview_width;
    int warnings;
    int other_logs;
} seen_t;

static int32_t on_progress(uint32_t step, uint32_t total, void *user_data) {
    seen_t *s = (seen_t *)user_data;
    (void)total;
    s->progress_calls++;
    s->last_step = (int)step;
    return 1;
}

static void on_preview(uint32_t step, uint32_t total, const ap_images *images, void *user_data) {
    seen_t *s = (seen_t *)user_data;
    (void)step;
    (void)total;
    if (images && images->count == 1 && images->images[0].channels == 4) {
        s->previews++;
        s->preview_width = (int)images->images[0].width;
    }
}

static void on_log(int32_t level, const char *message, void *user_data) {
    seen_t *s = (seen_t *)user_data;
    if (level == AP_LOG_WARN && strstr(message, "truncated")) s->warnings++;
    else s->other_logs++;
}

static int32_t cancel_first_component(uint32_t step, uint32_t total, void *user_data) {
    (void)total;
    (void)user_data;
    return step < 1;
}

static int finished(int32_t state) {
    return state == AP_JOB_DONE || state == AP_JOB_FAILED || state == AP_JOB_CANCELLED;
}

/* One frame of a game loop: poll, never block; ap_job_wait(job, 1) stands in for the frame's work. */
static ap_job_status poll_until(const ap_job *job, int min_step) {
    ap_job_status st = ap_job_status_default();
    long frame;
    for (frame = 0; frame < 600000; frame++) {
        if (ap_job_poll(job, &st) != AP_OK) break;
        if (finished(st.state) || (min_step > 0 && (int)st.step >= min_step)) break;
        ap_job_wait(job, 1);
    }
    return st;
}

int main(int argc, char **argv) {
    ap_pipeline *pipe = NULL, *loaded = NULL;
    ap_job *job = NULL, *other = NULL;
    ap_images *sync_images = NULL, *images = NULL;
    ap_run_params run;
    ap_load_params load = ap_load_params_default();
    ap_job_status st = ap_job_status_default();
    seen_t seen;
    int i;
    size_t bytes;

    if (argc != 2) {
        fprintf(stderr, "usage: jobs_test <sd15-tiny dir>\n");
        return 2;
    }

    /* Background load, polled to completion. */
    CHECK(ap_from_pretrained_async(argv[1], AP_TASK_TEXT2IMAGE, &load, &job) == AP_OK, "load async");
    st = poll_until(job, 0);
    CHECK(st.state == AP_JOB_DONE, "load done");
    CHECK(st.step == 3 && st.total == 3, "three components loaded");
    CHECK(ap_job_take_result(job, &images) == AP_ERR_INVALID_ARGUMENT, "a load has no images");
    CHECK(ap_job_take_pipeline(job, &pipe) == AP_OK && pipe != NULL, "take the pipeline");
    CHECK(ap_job_take_pipeline(job, &loaded) == AP_ERR_INVALID_ARGUMENT && loaded == NULL, "taken once");
    ap_job_free(job);
    job = NULL;
    if (!pipe) return 1;

    run = ap_run_params_default();
    run.prompt = "A painting of a squirrel eating a burger";
    run.negative_prompt = "blurry, low quality";
    run.seed = 42;
    run.num_inference_steps = 4;
    run.guidance_scale = 7.5f;
    run.width = 64;
    run.height = 64;
    CHECK(ap_run(pipe, &run, &sync_images) == AP_OK, "sync run");

    /* Two jobs at once on from_pipe siblings, polled frame by frame; one is cancelled mid-run, the
     * other finishes with the exact image; the cancelled one is then rerun and is exact too. */
    if (sync_images) {
        ap_pipeline *i2i = NULL, *sibling = NULL;
        ap_job *a = NULL, *b = NULL;
        ap_images *ia = NULL, *ib = NULL;
        ap_job_status sa = ap_job_status_default(), sb = ap_job_status_default();
        ap_run_params longer = run;
        long frame;
        int cancelled = 0;
        CHECK(ap_from_pipe(pipe, AP_TASK_IMAGE2IMAGE, NULL, &i2i) == AP_OK, "from_pipe img2img");
        CHECK(ap_from_pipe(i2i, AP_TASK_TEXT2IMAGE, NULL, &sibling) == AP_OK, "from_pipe back to text2img");
        longer.num_inference_steps = 40;
        CHECK(ap_run_async(pipe, &longer, &a) == AP_OK, "job A (to cancel)");
        CHECK(ap_run_async(sibling, &run, &b) == AP_OK, "job B (sibling)");
        for (frame = 0; frame < 600000 && a && b; frame++) {
            ap_job_poll(a, &sa);
            ap_job_poll(b, &sb);
            if (!cancelled && sa.step >= 1) {
                CHECK(ap_job_cancel(a) == AP_OK, "cancel A");
                cancelled = 1;
            }
            if (finished(sa.state) && finished(sb.state)) break;
            ap_job_wait(b, 1);
        }
        CHECK(sa.state == AP_JOB_CANCELLED, "A cancelled");
        CHECK(ap_job_take_result(a, &ia) == AP_ERR_CANCELLED && ia == NULL, "A's result is the cancel");
        CHECK(sb.state == AP_JOB_DONE, "B done");
        CHECK(ap_job_take_result(b, &ib) == AP_OK && ib != NULL, "B's images");
        if (ib) {
            bytes = (size_t)ib->images[0].stride * ib->images[0].height;
            CHECK(memcmp(ib->images[0].data, sync_images->images[0].data, bytes) == 0, "B equals the sync run");
        }
        ap_images_free(ib);
        ib = NULL;
        ap_job_free(a);
        a = NULL;
        CHECK(ap_run_async(pipe, &run, &a) == AP_OK, "rerun A");
        if (a) {
            CHECK(ap_job_wait(a, -1) == AP_OK, "rerun finishes");
            CHECK(ap_job_take_result(a, &ia) == AP_OK && ia != NULL, "rerun images");
        }
        if (ia) {
            bytes = (size_t)ia->images[0].stride * ia->images[0].height;
            CHECK(memcmp(ia->images[0].data, sync_images->images[0].data, bytes) == 0, "rerun equals the sync run");
        }
        ap_images_free(ia);
        ap_job_free(a);
        ap_job_free(b);
        ap_pipeline_free(sibling);
        ap_pipeline_free(i2i);
    }

    /* Async run: poll until done, take; equals the synchronous image bit for bit. Callbacks run on the
     * worker thread. */
    memset(&seen, 0, sizeof seen);
    run.progress = on_progress;
    run.progress_user_data = &seen;
    run.preview = on_preview;
    run.preview_user_data = &seen;
    run.preview_every = 2;
    CHECK(ap_run_async(pipe, &run, &job) == AP_OK && job != NULL, "run async");
    CHECK(ap_job_take_result(job, &images) == AP_ERR_INVALID_ARGUMENT || images != NULL,
          "take before finishing is refused (unless it already finished)");
    ap_images_free(images);
    images = NULL;
    st = poll_until(job, 0);
    CHECK(st.state == AP_JOB_DONE, "run done");
    CHECK(st.step == 5 && st.total == 5, "5 UNet steps");
    CHECK(st.elapsed_seconds > 0.0, "elapsed time");
    CHECK(ap_job_take_pipeline(job, &loaded) == AP_ERR_INVALID_ARGUMENT, "a run has no pipeline");
    CHECK(ap_job_take_result(job, &images) == AP_OK && images != NULL, "take result");
    CHECK(seen.progress_calls == 5 && seen.last_step == 5, "progress on the worker");
    CHECK(seen.previews == 2, "previews after steps 2 and 4");
    CHECK(seen.preview_width > 0 && seen.preview_width < 64, "latent previews at latent resolution");
    if (images && sync_images) {
        bytes = (size_t)images->images[0].stride * images->images[0].height;
        CHECK(images->count == sync_images->count, "same count");
        CHECK(memcmp(images->images[0].data, sync_images->images[0].data, bytes) == 0,
              "async image equals the sync image bit for bit");
    }
    ap_images_free(images);
    images = NULL;
    CHECK(ap_job_take_result(job, &images) == AP_ERR_INVALID_ARGUMENT && images == NULL, "taken once");
    ap_job_free(job);
    job = NULL;
    run.preview = NULL;
    run.preview_every = 0;

    /* Cancel mid-run: takes effect within one step; the pipeline stays usable. */
    run.num_inference_steps = 100;
    run.progress = NULL;
    CHECK(ap_run_async(pipe, &run, &job) == AP_OK, "run async (to cancel)");
    st = poll_until(job, 2);
    CHECK(st.state == AP_JOB_RUNNING, "running at step 2");
    i = (int)st.step;
    CHECK(ap_job_cancel(job) == AP_OK, "cancel");
    CHECK(ap_job_wait(job, -1) == AP_OK, "wait after cancel");
    CHECK(ap_job_poll(job, &st) == AP_OK && st.state == AP_JOB_CANCELLED, "cancelled state");
    CHECK((int)st.step <= i + 1, "stopped within one step of the cancel");
    CHECK(ap_job_take_result(job, &images) == AP_ERR_CANCELLED && images == NULL, "take gives the cancel");
    ap_job_free(job);
    job = NULL;

    /* Wait with a timeout. */
    CHECK(ap_run_async(pipe, &run, &job) == AP_OK, "run async (to wait on)");
    CHECK(ap_job_wait(job, 1) == AP_ERR_TIMEOUT, "100 steps do not finish in 1 ms");
    CHECK(strstr(ap_last_error(), "did not finish") != NULL, "timeout message");
    CHECK(ap_job_wait(job, 0) == AP_ERR_TIMEOUT, "0 only checks");
    ap_job_cancel(job);
    CHECK(ap_job_wait(job, 60000) == AP_OK, "finishes after cancel");
    ap_job_free(job);
    job = NULL;

    /* Free a running job: returns at once; its callbacks never run after ap_job_free returned. */
    memset(&seen, 0, sizeof seen);
    run.progress = on_progress;
    run.progress_user_data = &seen;
    CHECK(ap_run_async(pipe, &run, &job) == AP_OK, "run async (to free)");
    poll_until(job, 1);
    ap_job_free(job);
    job = NULL;
    seen.last_step = -1;
    seen.progress_calls = -1000;
    /* Give the worker time to misbehave: a synchronous run of a few steps. */
    run.progress = NULL;
    run.num_inference_steps = 4;
    CHECK(ap_run(pipe, &run, &images) == AP_OK, "pipeline usable while a freed job winds down");
    ap_images_free(images);
    images = NULL;
    CHECK(seen.last_step == -1 && seen.progress_calls == -1000, "no callback after ap_job_free");

    /* Failed job: the error comes back through take, with its message. */
    run.width = 60;
    CHECK(ap_run_async(pipe, &run, &job) == AP_OK, "invalid size is found by the job");
    CHECK(ap_job_wait(job, -1) == AP_OK, "wait failed job");
    CHECK(ap_job_poll(job, &st) == AP_OK && st.state == AP_JOB_FAILED, "failed state");
    CHECK(ap_job_take_result(job, &images) == AP_ERR_INVALID_ARGUMENT, "take gives the error");
    CHECK(strstr(ap_last_error(), "divisible by 8") != NULL, "and its message");
    ap_job_free(job);
    job = NULL;
    run.width = 64;

    /* Log callback: the truncated-prompt warning of an async run arrives (on the worker thread). */
    memset(&seen, 0, sizeof seen);
    CHECK(ap_pipeline_set_log_callback(pipe, on_log, &seen, AP_LOG_WARN) == AP_OK, "set log callback");
    CHECK(ap_pipeline_set_log_callback(pipe, on_log, &seen, 9) == AP_ERR_INVALID_ARGUMENT, "bad level");
    run.prompt = "a very long prompt about a squirrel a very long prompt about a squirrel a very long prompt "
                 "about a squirrel a very long prompt about a squirrel a very long prompt about a squirrel "
                 "a very long prompt about a squirrel a very long prompt about a squirrel a very long prompt";
    run.num_inference_steps = 1;
    CHECK(ap_run_async(pipe, &run, &job) == AP_OK, "run async with a long prompt");
    CHECK(ap_job_wait(job, -1) == AP_OK, "wait");
    CHECK(seen.warnings >= 1, "truncation warning logged");
    CHECK(seen.other_logs == 0, "nothing below AP_LOG_WARN");
    ap_job_free(job);
    job = NULL;
    CHECK(ap_pipeline_set_log_callback(pipe, NULL, NULL, AP_LOG_DEBUG) == AP_OK, "log off");

    /* Two jobs at once on one pipeline, and the pipeline freed while they run. */
    run.prompt = "a squirrel";
    run.num_inference_steps = 2;
    CHECK(ap_run_async(pipe, &run, &job) == AP_OK, "job 1");
    CHECK(ap_run_async(pipe, &run, &other) == AP_OK, "job 2");
    ap_pipeline_free(pipe);
    pipe = NULL;
    CHECK(ap_job_wait(job, -1) == AP_OK && ap_job_wait(other, -1) == AP_OK, "both finish");
    CHECK(ap_job_take_result(job, &images) == AP_OK, "job 1 result");
    ap_images_free(images);
    images = NULL;
    CHECK(ap_job_take_result(other, &images) == AP_OK, "job 2 result");
    ap_images_free(images);
    images = NULL;
    ap_job_free(job);
    ap_job_free(other);
    job = other = NULL;

    /* Cancelling a load between components, from its progress callback. */
    load.progress = cancel_first_component;
    CHECK(ap_from_pretrained_async(argv[1], AP_TASK_TEXT2IMAGE, &load, &job) == AP_OK, "load async (cancel)");
    CHECK(ap_job_wait(job, -1) == AP_OK, "wait load");
    CHECK(ap_job_poll(job, &st) == AP_OK && st.state == AP_JOB_CANCELLED && st.step == 1, "cancelled load");
    CHECK(ap_job_take_pipeline(job, &loaded) == AP_ERR_CANCELLED && loaded == NULL, "no pipeline");
    ap_job_free(job);
    job = NULL;

    /* Invalid arguments. */
    CHECK(ap_run_async(NULL, &run, &job) == AP_ERR_INVALID_ARGUMENT && job == NULL, "NULL pipeline");
    CHECK(ap_job_poll(NULL, &st) == AP_ERR_INVALID_ARGUMENT, "poll NULL job");
    CHECK(ap_job_wait(NULL, 0) == AP_ERR_INVALID_ARGUMENT, "wait NULL job");
    CHECK(ap_job_cancel(NULL) == AP_ERR_INVALID_ARGUMENT, "cancel NULL job");
    CHECK(ap_job_take_result(NULL, &images) == AP_ERR_INVALID_ARGUMENT, "take NULL job");
    CHECK(ap_from_pretrained_async(NULL, AP_TASK_TEXT2IMAGE, NULL, &job) == AP_ERR_INVALID_ARGUMENT,
          "NULL model");
    CHECK(ap_from_pretrained_async("/does/not/exist", AP_TASK_TEXT2IMAGE, NULL, &job) == AP_OK,
          "a missing model is found by the job");
    CHECK(ap_job_wait(job, -1) == AP_OK, "wait missing");
    CHECK(ap_job_take_pipeline(job, &loaded) == AP_ERR_NOT_FOUND, "not found");
    st.struct_size = 4;
    CHECK(ap_job_poll(job, &st) == AP_ERR_INVALID_ARGUMENT, "wrong struct_size");
    ap_job_free(job);
    job = NULL;
    ap_job_free(NULL);

    ap_images_free(sync_images);
    if (failures == 0) printf("c jobs api: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
