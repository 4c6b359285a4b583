/* A program built against the frozen 0.1.0 header, run against the current library (tests/abi.rs).
 *
 * It does what a plugin compiled for 0.1.0 does: ap_*_default() by value (the exported 0.1.0
 * symbols), 0.1.0-sized structs, a load, a run of a few steps, a job polled to the end. Every struct
 * it hands over ends exactly at a page the process may not touch, so reading or writing one byte
 * past the 0.1.0 size crashes the program; structs written by the library are also followed by
 * canary bytes, checked afterwards.
 *
 * Usage: frozen_0_1_0 <sd15-tiny checkpoint folder>
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "autopipeline-0.1.0.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif

static int failures = 0;

#define CHECK(cond, ...)                                         \
  do {                                                           \
    if (!(cond)) {                                               \
      fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                              \
      fprintf(stderr, " (ap_last_error: %s)\n", ap_last_error()); \
      failures++;                                                \
    }                                                            \
  } while (0)

/* `size` bytes that end where an inaccessible page begins. */
static void *before_guard_page(size_t size) {
  long page = sysconf(_SC_PAGESIZE);
  unsigned char *base = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED || mprotect(base + page, (size_t)page, PROT_NONE) != 0) {
    perror("mmap");
    exit(2);
  }
  /* Every size here is a multiple of 8, so the struct stays aligned. */
  return base + page - size;
}

#define CANARY 0xC5
#define CANARY_BYTES 32

static int canary_intact(const unsigned char *c) {
  int i;
  for (i = 0; i < CANARY_BYTES; i++)
    if (c[i] != CANARY) return 0;
  return 1;
}

static uint32_t last_step = 0, last_total = 0;
static int32_t count_steps(uint32_t step, uint32_t total, void *user_data) {
  *(int *)user_data = 1;
  last_step = step;
  last_total = total;
  return 1;
}

/* A layout between 0.1.0's and the current one: 0.1.0 plus `timesteps` (as a later header has it),
 * without `sigmas`. */
typedef struct {
  ap_run_params v010;
  const double *timesteps;
  uint32_t num_timesteps;
  uint32_t padding;
} run_params_with_timesteps;

int main(int argc, char **argv) {
  ap_pipeline *pipe = NULL;
  ap_images *images = NULL;
  ap_job *job = NULL;
  ap_status st;
  int called = 0;

  if (argc != 2) {
    fprintf(stderr, "usage: %s <checkpoint>\n", argv[0]);
    return 2;
  }

  /* The legacy by-value symbols return the 0.1.0 layouts. A return slot followed by a canary:
   * whatever the compiler does with it, the struct_size must be the 0.1.0 sizeof. */
  {
    struct { ap_run_params p; unsigned char canary[CANARY_BYTES]; } run_slot;
    struct { ap_load_params p; unsigned char canary[CANARY_BYTES]; } load_slot;
    struct { ap_job_status p; unsigned char canary[CANARY_BYTES]; } status_slot;
    memset(run_slot.canary, CANARY, CANARY_BYTES);
    memset(load_slot.canary, CANARY, CANARY_BYTES);
    memset(status_slot.canary, CANARY, CANARY_BYTES);
    run_slot.p = ap_run_params_default();
    load_slot.p = ap_load_params_default();
    status_slot.p = ap_job_status_default();
    CHECK(run_slot.p.struct_size == sizeof(ap_run_params), "run struct_size %u, sizeof %u",
          run_slot.p.struct_size, (unsigned)sizeof(ap_run_params));
    CHECK(load_slot.p.struct_size == sizeof(ap_load_params), "load struct_size %u",
          load_slot.p.struct_size);
    CHECK(status_slot.p.struct_size == sizeof(ap_job_status), "status struct_size %u",
          status_slot.p.struct_size);
    CHECK(run_slot.p.guidance_scale == -1.0f && run_slot.p.prompt && run_slot.p.prompt[0] == 0 &&
              run_slot.p.rng == NULL,
          "0.1.0 run defaults");
    CHECK(canary_intact(run_slot.canary) && canary_intact(load_slot.canary) &&
              canary_intact(status_slot.canary),
          "a *_default() wrote past the 0.1.0 size");
    printf("sizes %u %u %u\n", (unsigned)sizeof(ap_load_params), (unsigned)sizeof(ap_run_params),
           (unsigned)sizeof(ap_job_status));
  }

  /* Load, with 0.1.0-sized load params against the guard page. */
  {
    ap_load_params *load = before_guard_page(sizeof(ap_load_params));
    *load = ap_load_params_default();
    load->progress = count_steps;
    load->progress_user_data = &called;
    st = ap_from_pretrained(argv[1], AP_TASK_TEXT2IMAGE, load, &pipe);
    CHECK(st == AP_OK && pipe != NULL && called, "load: status %d", st);
    if (!pipe) return 1;
  }

  /* A run of two steps with 0.1.0-sized run params against the guard page. */
  {
    ap_run_params *run = before_guard_page(sizeof(ap_run_params));
    *run = ap_run_params_default();
    run->prompt = "a red apple";
    run->num_inference_steps = 2;
    run->width = 64;
    run->height = 64;
    run->seed = 7;
    run->progress = count_steps;
    run->progress_user_data = &called;
    st = ap_run(pipe, run, &images);
    CHECK(st == AP_OK && images && images->count == 1, "run: status %d", st);
    /* The tiny checkpoint's PNDM scheduler runs one step more than asked (its PLMS warm-up). */
    CHECK(last_step >= 2 && last_step == last_total, "step %u of %u reported", last_step, last_total);
    if (images) {
      CHECK(images->images[0].width == 64 && images->images[0].height == 64 &&
                images->images[0].channels == 4,
            "image %ux%ux%u", images->images[0].width, images->images[0].height,
            images->images[0].channels);
    }
    ap_images_free(images);
    images = NULL;

    /* The same run as a job, polled into 0.1.0-sized statuses: one against the guard page, one
     * followed by a canary. */
    st = ap_run_async(pipe, run, &job);
    CHECK(st == AP_OK && job, "run_async: status %d", st);
    if (job) {
      ap_job_status *guarded = before_guard_page(sizeof(ap_job_status));
      struct { ap_job_status s; unsigned char canary[CANARY_BYTES]; } slot;
      *guarded = ap_job_status_default();
      slot.s = ap_job_status_default();
      memset(slot.canary, CANARY, CANARY_BYTES);
      CHECK(ap_job_wait(job, -1) == AP_OK, "wait");
      CHECK(ap_job_poll(job, guarded) == AP_OK && guarded->state == AP_JOB_DONE, "poll: state %d",
            guarded->state);
      CHECK(ap_job_poll(job, &slot.s) == AP_OK && slot.s.state == AP_JOB_DONE &&
                slot.s.step == last_total && slot.s.struct_size == sizeof(ap_job_status),
            "poll: state %d step %u", slot.s.state, slot.s.step);
      CHECK(canary_intact(slot.canary), "ap_job_poll wrote past the 0.1.0 size");
      CHECK(ap_job_take_result(job, &images) == AP_OK && images && images->count == 1, "take");
      ap_images_free(images);
      images = NULL;
      ap_job_free(job);
    }

    /* Sizes outside the accepted range fail, naming the struct, the size and the range (which
     * starts at this header's sizeof). */
    {
      char want_size[32], want_min[32];
      uint32_t sizes[2];
      int i;
      sizes[0] = (uint32_t)sizeof(ap_run_params) - 8;
      sizes[1] = 4096;
      for (i = 0; i < 2; i++) {
        run->struct_size = sizes[i];
        images = (ap_images *)run; /* must be reset to NULL */
        st = ap_run(pipe, run, &images);
        sprintf(want_size, "is %u,", sizes[i]);
        sprintf(want_min, "%u (version 0.1.0)", (unsigned)sizeof(ap_run_params));
        CHECK(st == AP_ERR_INVALID_ARGUMENT && images == NULL, "size %u: status %d", sizes[i], st);
        CHECK(strstr(ap_last_error(), "ap_run_params.struct_size") &&
                  strstr(ap_last_error(), want_size) && strstr(ap_last_error(), want_min),
              "size %u: message", sizes[i]);
      }
      run->struct_size = sizeof(ap_run_params);
    }
  }

  /* A size between 0.1.0's and the current one: the fields it covers are read (a NULL `timesteps`
   * with a count is refused), the rest (`sigmas`, past the guard page) take their defaults. */
  {
    const double timesteps[2] = {999.0, 500.0};
    run_params_with_timesteps *mid = before_guard_page(sizeof(run_params_with_timesteps));
    memset(mid, 0, sizeof *mid);
    mid->v010 = ap_run_params_default();
    mid->v010.struct_size = sizeof(run_params_with_timesteps);
    mid->v010.prompt = "a red apple";
    mid->v010.num_inference_steps = 2;
    mid->v010.width = 64;
    mid->v010.height = 64;
    mid->timesteps = NULL;
    mid->num_timesteps = 3;
    st = ap_run(pipe, &mid->v010, &images);
    CHECK(st == AP_ERR_INVALID_ARGUMENT && strstr(ap_last_error(), "timesteps is NULL"),
          "mid-size with NULL timesteps: status %d", st);
    mid->timesteps = timesteps;
    mid->num_timesteps = 0;
    st = ap_run(pipe, &mid->v010, &images);
    CHECK(st == AP_OK && images && images->count == 1, "mid-size run: status %d", st);
    ap_images_free(images);
    images = NULL;
  }

  ap_pipeline_free(pipe);
  /* The 0.1.0 free functions still accept NULL. */
  ap_pipeline_free(NULL);
  ap_images_free(NULL);
  ap_image_free(NULL);
  ap_job_free(NULL);

  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("ok\n");
  return 0;
}
