// An eager snapshot restore's load on native threads: every chunk of every layer read from its
// file, checked (its fast check, dp_check.c, when the manifest has one; else its sha256, ~1.6 GB/s
// a core here), and the pages the chain's location table gives to that layer placed in guest
// memory. The chunks are shared out among threads (an atomic counter). The order of the layers does
// not matter: each page is written from one layer only, its newest. The first failure (a read
// error, a file that ends early, a checksum mismatch) stops every thread; the error says which
// layer, page and kind, for the caller to name the file.
#define _GNU_SOURCE
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dp.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

static void fail_once(dp_load_args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_once(dp_load_args *a, const char *fmt, ...) {
  int zero = 0;
  if (!__atomic_compare_exchange_n(&a->failed, &zero, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(a->err, DP_ERR, fmt, ap);
  va_end(ap);
}

/* 1 when the chunk's bytes match the manifest's check: its fast check where the caller gave one
 * (an entry of zeros: none), else its sha256; 0 on a mismatch; -1 after fail_once. */
static int chunk_ok(dp_load_args *a, uint32_t i, const uint8_t *bytes, size_t len, EVP_MD_CTX *md) {
  static const uint8_t none[DP_CHECK];
  const uint8_t *want = a->chunk_crc ? a->chunk_crc + (size_t)i * DP_CHECK : NULL;
  if (want && memcmp(want, none, DP_CHECK) != 0) {
    uint8_t sum[DP_CHECK];
    dp_chunk_check(bytes, len, sum);
    return memcmp(sum, want, DP_CHECK) == 0;
  }
  uint8_t sum[32];
  unsigned int n = 0;
  if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(md, bytes, len) != 1 || EVP_DigestFinal_ex(md, sum, &n) != 1 || n != 32) {
    fail_once(a, "sha256 failed");
    return -1;
  }
  return memcmp(sum, a->chunk_sha + (size_t)i * 32, 32) == 0;
}

/* One chunk: 0, or -1 after fail_once. A chunk whose every page is this layer's (every chunk of a
 * full snapshot) is read straight into guest memory and checked there: one copy fewer. A damaged
 * one then fails the load, and the caller never runs a guest on that memory. Any other chunk is read
 * into `buf`, checked, and only its own pages copied, so a newer layer's pages are never touched. */
static int load_chunk(dp_load_args *a, uint32_t i, uint8_t *buf, EVP_MD_CTX *md) {
  uint32_t layer = a->chunk_layer[i], page = a->chunk_page[i], count = a->chunk_count[i];
  if (layer >= a->nfds || count == 0 || count > DP_LOAD_CHUNK_PAGES) {
    fail_once(a, "corrupt chunk %u: layer %u, %u pages", i, layer, count);
    return -1;
  }
  uint64_t end = (uint64_t)page + count;
  uint32_t own = 0;
  uint64_t last = 0; /* the last page this layer owns, + 1 */
  for (uint64_t p = page; p < end; p++)
    if (p < a->location_pages && a->location[p] == (int16_t)layer) own++, last = p + 1;
  if (last * DP_PAGE > a->memory_bytes) {
    fail_once(a, "page %llu is beyond the memory of %llu bytes", (unsigned long long)(last - 1), (unsigned long long)a->memory_bytes);
    return -1;
  }
  size_t len = (size_t)count * DP_PAGE, done = 0;
  off_t pos = (off_t)page * DP_PAGE;
  uint8_t *into = own == count ? a->memory + (uint64_t)page * DP_PAGE : buf;
  /* Fresh memory: the pages a chunk read in place fills are allocated in one call (huge pages where
   * the caller advised them), on this thread, so every load thread allocates its share at once
   * (they lie inside the memory: checked above). Best effort: a page left out faults in when
   * written, as the pages a chunk read aside copies do. */
  if (a->populate && into != buf) (void)madvise(into, len, MADV_POPULATE_WRITE);
  int r = dp_pread_full(a->fds[layer], into, len, pos, &done);
  if (r < 0) {
    fail_once(a, "read layer %u page %u: %s", layer, page, strerror(errno));
    return -1;
  }
  if (r > 0) {
    fail_once(a, "truncated layer %u byte %lld", layer, (long long)(pos + (off_t)done));
    return -1;
  }
  int ok = chunk_ok(a, i, into, len, md);
  if (ok < 0) return -1;
  if (!ok) {
    fail_once(a, "checksum layer %u page %u count %u", layer, page, count);
    return -1;
  }
  if (into == buf)
    for (uint32_t k = 0; k < count; k++) {
      uint64_t p = (uint64_t)page + k;
      if (p < a->location_pages && a->location[p] == (int16_t)layer) memcpy(a->memory + p * DP_PAGE, buf + (size_t)k * DP_PAGE, DP_PAGE);
    }
  return 0;
}

static void *load_worker(void *arg) {
  dp_load_args *a = arg;
  uint8_t *buf = aligned_alloc(DP_PAGE, (size_t)DP_LOAD_CHUNK_PAGES * DP_PAGE);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!buf || !md) fail_once(a, "out of memory");
  else
    for (;;) {
      if (__atomic_load_n(&a->failed, __ATOMIC_ACQUIRE) || *a->stop) break;
      uint32_t i = __atomic_fetch_add(&a->next, 1, __ATOMIC_ACQ_REL);
      if (i >= a->nchunks || load_chunk(a, i, buf, md) < 0) break;
    }
  EVP_MD_CTX_free(md);
  free(buf);
  return NULL;
}

int dp_load_run(dp_load_args *a) {
  uint32_t want = a->threads < 1 ? 1 : a->threads > DP_LOAD_MAX_THREADS ? DP_LOAD_MAX_THREADS : a->threads; /* th[]'s bound */
  pthread_t th[DP_LOAD_MAX_THREADS];
  uint32_t started = 0;
  for (uint32_t t = 1; t < want; t++)
    if (pthread_create(&th[t], NULL, load_worker, a) == 0) started = t; else break;
  load_worker(a); /* this thread is one of them */
  for (uint32_t t = 1; t <= started; t++) pthread_join(th[t], NULL);
  if (*a->stop && !a->failed) {
    dp_set_err(a->err, "stopped");
    return -1;
  }
  return a->failed ? -1 : 0;
}
