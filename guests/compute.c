/*
 * compute: CPU-bound guest with no memory churn.
 *
 * Mixes a 4 KiB state array for --iterations rounds. The inner loop calls a
 * small non-inlined function on every element so that the instrumented module
 * has hot loop heads *and* hot calls -- the places where safepoints cost the
 * most. Used to measure instrumentation overhead and pause latency.
 *
 * Output: RESULT <16 hex digits>, exit 0. Exit 2 on bad arguments.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_WORDS 1024u /* 4 KiB: stays in cache, no memory churn */
#define DEFAULT_ITERATIONS 400000u /* ~1.3 s under Node 20 on this machine class */

static uint32_t state[STATE_WORDS];

__attribute__((noinline)) static uint32_t mix(uint32_t a, uint32_t b, uint32_t round) {
  uint32_t x = a ^ (b + 0x9e3779b9u + (a << 6) + (a >> 2)) ^ round;
  x ^= x >> 16; x *= 0x7feb352du;
  x ^= x >> 15; x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__attribute__((noinline)) static void one_round(uint32_t round) {
  for (uint32_t i = 0; i < STATE_WORDS; i++)
    state[i] = mix(state[i], state[(i * 7u + 1u) & (STATE_WORDS - 1u)], round);
}

static uint64_t checksum(void) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a over the words */
  for (uint32_t i = 0; i < STATE_WORDS; i++) { h ^= state[i]; h *= 0x100000001b3ull; }
  return h;
}

int main(int argc, char **argv) {
  uint64_t iterations = DEFAULT_ITERATIONS;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc && argv[i + 1][0] >= '0' && argv[i + 1][0] <= '9') {
      char *end = NULL;
      errno = 0;
      unsigned long long v = strtoull(argv[i + 1], &end, 10);
      if (errno != 0 || *end != '\0' || v > 0xffffffffull) goto usage;
      iterations = v;
      i++;
    } else {
      goto usage;
    }
  }
  for (uint32_t i = 0; i < STATE_WORDS; i++) state[i] = i * 0x01000193u + 1u;
  for (uint64_t r = 0; r < iterations; r++) one_round((uint32_t)r);
  printf("RESULT %016llx\n", (unsigned long long)checksum());
  return 0;
usage:
  fprintf(stderr, "usage: compute [--iterations N]   (N <= 4294967295, default %u)\n", DEFAULT_ITERATIONS);
  return 2;
}
