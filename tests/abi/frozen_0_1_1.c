/* A program built against the frozen 0.1.1 header (custom timesteps and sigmas, the inline
 * ap_*_default()), run against the current library (tests/abi.rs). Its ap_run_params, 0.1.1-sized,
 * ends exactly where an inaccessible page begins: reading one byte of a later field crashes it.
 *
 * Usage: frozen_0_1_1 <sd15-tiny checkpoint folder>
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "autopipeline-0.1.1.h"

#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif

/* `size` bytes that end where an inaccessible page begins (sizes here are multiples of 8). */
static void *before_guard_page(size_t size) {
  long page = sysconf(_SC_PAGESIZE);
  unsigned char *base = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED || mprotect(base + page, (size_t)page, PROT_NONE) != 0) {
    perror("mmap");
    exit(2);
  }
  return base + page - size;
}

int main(int argc, char **argv) {
  static const double sigmas[] = {14.6, 1.0, 0.0};
  ap_pipeline *pipe = NULL;
  ap_images *images = NULL;
  ap_load_params load = ap_load_params_default();
  ap_run_params *run;
  if (argc != 2) {
    fprintf(stderr, "usage: %s <checkpoint>\n", argv[0]);
    return 2;
  }
  if (ap_from_pretrained(argv[1], AP_TASK_TEXT2IMAGE, &load, &pipe) != AP_OK) {
    fprintf(stderr, "load: %s\n", ap_last_error());
    return 1;
  }
  run = before_guard_page(sizeof(ap_run_params));
  /* Garbage everywhere first: init fills the fields, not the tail padding of this layout, which a
   * later library must never read as one of its own fields. */
  memset(run, 0xff, sizeof(ap_run_params));
  if (ap_run_params_init(run, sizeof(ap_run_params)) != AP_OK) {
    fprintf(stderr, "init: %s\n", ap_last_error());
    return 1;
  }
  /* A struct copy need not preserve padding: garbage in this layout's tail padding again. */
  {
    size_t end = offsetof(ap_run_params, num_sigmas) + sizeof(run->num_sigmas);
    memset((unsigned char *)run + end, 0xff, sizeof(ap_run_params) - end);
  }
  run->prompt = "a lighthouse";
  run->width = 32;
  run->height = 32;
  run->scheduler = "euler";
  run->sigmas = sigmas;
  run->num_sigmas = 2;
  if (ap_run(pipe, run, &images) != AP_OK || images->count != 1) {
    fprintf(stderr, "run: %s\n", ap_last_error());
    return 1;
  }
  ap_images_free(images);
  ap_pipeline_free(pipe);
  printf("ok size %u\n", (unsigned)sizeof(ap_run_params));
  return 0;
}
