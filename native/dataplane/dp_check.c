// A snapshot chunk's fast check (docs/snapshot-format.md, `crc32c`): four CRC-32C values
// (Castagnoli, reflected, initial and final value 0xffffffff), one over each quarter of the chunk's
// bytes. Four independent CRCs keep the CPU's crc32 unit busy (one instruction a cycle against a
// latency of three), ~24 GB/s a core here against ~1.7 GB/s for sha256, and need no combining
// step. It guards against damage, as the sha256 beside it in the manifest does; neither is a
// signature. Without SSE4.2 a table does the same sums, slowly.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "dp.h"

#define CRC32C_POLY 0x82f63b78u /* reflected Castagnoli polynomial */

static uint32_t table[256];
static int have_sse42;
static pthread_once_t initialised = PTHREAD_ONCE_INIT;

static void init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1)));
    table[i] = c;
  }
#if defined(__x86_64__)
  __builtin_cpu_init();
  have_sse42 = __builtin_cpu_supports("sse4.2") != 0;
#endif
}

static uint32_t crc_soft(uint32_t c, const uint8_t *p, size_t n) {
  while (n--) c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
#include <nmmintrin.h>
__attribute__((target("sse4.2"))) static void crc_lanes_hw(const uint8_t *p, size_t q, size_t tail, uint32_t out[4]) {
  uint64_t c0 = 0xffffffffu, c1 = c0, c2 = c0, c3 = c0;
  const uint8_t *p1 = p + q, *p2 = p + 2 * q, *p3 = p + 3 * q;
  size_t i = 0;
  for (; i + 8 <= q; i += 8) {
    uint64_t a, b, c, d;
    memcpy(&a, p + i, 8);
    memcpy(&b, p1 + i, 8);
    memcpy(&c, p2 + i, 8);
    memcpy(&d, p3 + i, 8);
    c0 = _mm_crc32_u64(c0, a);
    c1 = _mm_crc32_u64(c1, b);
    c2 = _mm_crc32_u64(c2, c);
    c3 = _mm_crc32_u64(c3, d);
  }
  for (; i < q; i++) {
    c0 = _mm_crc32_u8((uint32_t)c0, p[i]);
    c1 = _mm_crc32_u8((uint32_t)c1, p1[i]);
    c2 = _mm_crc32_u8((uint32_t)c2, p2[i]);
    c3 = _mm_crc32_u8((uint32_t)c3, p3[i]);
  }
  for (size_t k = 0; k < tail; k++) c3 = _mm_crc32_u8((uint32_t)c3, p3[q + k]);
  out[0] = ~(uint32_t)c0;
  out[1] = ~(uint32_t)c1;
  out[2] = ~(uint32_t)c2;
  out[3] = ~(uint32_t)c3;
}
#endif

void dp_chunk_check(const uint8_t *p, size_t len, uint8_t out[DP_CHECK]) {
  /* Quarters of len / 4 bytes; the last one also takes the len % 4 bytes left over. */
  size_t q = len / 4, tail = len % 4;
  uint32_t c[4];
  pthread_once(&initialised, init);
#if defined(__x86_64__)
  if (have_sse42)
    crc_lanes_hw(p, q, tail, c);
  else
#endif
    for (int k = 0; k < 4; k++) c[k] = ~crc_soft(0xffffffffu, p + (size_t)k * q, q + (k == 3 ? tail : 0));
  for (int k = 0; k < 4; k++) { /* little-endian, lane 0 first */
    out[4 * k] = (uint8_t)c[k];
    out[4 * k + 1] = (uint8_t)(c[k] >> 8);
    out[4 * k + 2] = (uint8_t)(c[k] >> 16);
    out[4 * k + 3] = (uint8_t)(c[k] >> 24);
  }
}
