// What every fault-serving thread of the data plane does with the guest memory's userfaultfd and
// the page-state table, whatever the pages' source: the postcopy fault thread (dp_fault.c, pages
// from the source host) and the snapshot fault thread (dp_file.c, pages from layer files); and the
// reading of layer files the snapshot threads share (dp_file.c, dp_load.c).
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../uapi.h"
#include "dp.h"

uint8_t dp_state_of(const uint8_t *states, uint32_t p) { return __atomic_load_n(&states[p], __ATOMIC_ACQUIRE); }

int dp_mark_received(uint8_t *states, int32_t *counts, uint32_t p) {
  uint8_t expect = PS_PENDING;
  if (!__atomic_compare_exchange_n(&states[p], &expect, PS_RECEIVED, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return 0;
  __atomic_fetch_sub(&counts[PS_PENDING], 1, __ATOMIC_ACQ_REL);
  __atomic_fetch_add(&counts[PS_RECEIVED], 1, __ATOMIC_ACQ_REL);
  return 1;
}

void dp_wake(int uffd, uint64_t base, uint32_t p) {
  struct uffdio_range r = {.start = base + (uint64_t)p * DP_PAGE, .len = DP_PAGE};
  (void)ioctl(uffd, UFFDIO_WAKE, &r);
}

int dp_zero_page(int uffd, uint64_t base, uint32_t p) {
  for (;;) {
    struct uffdio_zeropage z = {.range = {.start = base + (uint64_t)p * DP_PAGE, .len = DP_PAGE}};
    if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0) return 0;
    if (errno == EAGAIN || errno == EINTR) continue; /* the mm was changing: again, as dp_place_run */
    if (errno != EEXIST) return -1;
    dp_wake(uffd, base, p); /* another thread's fault on it was served already */
    return 0;
  }
}

void dp_record_latency(double *stats, int count_slot, double *ring, uint32_t ring_len, double us) {
  double n = stats[count_slot];
  ring[(uint64_t)n % ring_len] = us;
  __atomic_thread_fence(__ATOMIC_RELEASE); /* the sample before the count that publishes it */
  stats[count_slot] = n + 1;
}

int dp_pread_full(int fd, uint8_t *buf, size_t len, off_t off, size_t *done) {
  *done = 0;
  while (*done < len) {
    ssize_t r = pread(fd, buf + *done, len - *done, off + (off_t)*done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) return 1;
    *done += (size_t)r;
  }
  return 0;
}

int dp_place_run(int uffd, uint64_t base, uint32_t p, uint32_t n, const uint8_t *src, double *eexist, char *err) {
  uint64_t done = 0, len = (uint64_t)n * DP_PAGE;
  while (done < len) {
    struct uffdio_copy cp = {.dst = base + (uint64_t)p * DP_PAGE + done, .src = (uint64_t)(uintptr_t)(src + done), .len = len - done};
    if (ioctl(uffd, UFFDIO_COPY, &cp) == 0) break;
    if (cp.copy > 0) done += (uint64_t)cp.copy;
    else if (errno == EEXIST) {
      /* Placed first by another thread (a bulk stream, a loader): it woke the waiters; wake any that came since. */
      *eexist += 1;
      dp_wake(uffd, base, p + (uint32_t)(done / DP_PAGE));
      done += DP_PAGE;
    } else if (errno == EAGAIN || errno == EINTR) continue; /* the mm was changing: again */
    else {
      dp_set_err(err, "UFFDIO_COPY of page %llu: %s", (unsigned long long)(p + done / DP_PAGE), strerror(errno));
      return -1;
    }
  }
  return 0;
}
