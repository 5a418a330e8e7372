// A pool of guest-sized pages made ahead, for the destination's native threads (the postcopy fault
// thread, the precopy receiver) to place pages with UFFDIO_MOVE instead of UFFDIO_COPY. Why: on the
// machines measured (docs/design-notes.md, 2026-12-07 late), UFFDIO_COPY of a GiB took 0.34-0.96 s
// and, in the slow postcopy runs of the demo job, its copy into pages the kernel had just handed out
// was half of the fault thread's time: the thread that receives, decrypts and places every page was
// the migration's bottleneck while a core stood idle. Allocating the pages is the expensive part,
// and it need not be on that thread: here a thread of its own populates the pool
// (MADV_POPULATE_WRITE, a MiB at a time), and the placing thread copies each received run into pool
// pages (a plain memcpy into pages already mapped) and moves them into the holes, a page-table
// operation (1 GiB: 0.19 s on the same machine). Where the pool has not made enough pages yet, or the
// kernel refuses a move, the caller places the rest with UFFDIO_COPY as before: same pages, same
// wakes.
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../uapi.h"
#include "dp.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif
#define POOL_STEP 256u /* pages populated per call: 1 MiB */
#define POOL_WAIT_NS 200000L /* a pause while the pool is `window` pages ahead of their use */

static void *populate(void *arg) {
  dp_pool *p = arg;
  /* It keeps the fault thread's priority (nice -10 where raised), which it inherits: at nice 0 beside
   * a busy guest it fell behind the thread that uses its pages (demo job, three runs each: guest
   * blocked 76-176 ms against 7-30). */
  for (uint32_t at = 0; at < p->cap && !p->stop;) {
    if (p->window && at - __atomic_load_n(&p->next, __ATOMIC_ACQUIRE) >= p->window) {
      struct timespec ts = {0, POOL_WAIT_NS};
      nanosleep(&ts, NULL);
      continue;
    }
    uint32_t n = p->cap - at < POOL_STEP ? p->cap - at : POOL_STEP;
    if (madvise(p->mem + (size_t)at * DP_PAGE, (size_t)n * DP_PAGE, MADV_POPULATE_WRITE) != 0) {
      if (errno == EINTR) continue;
      break; /* out of memory, or no MADV_POPULATE_WRITE: the pool ends here, the rest is copied */
    }
    at += n;
    __atomic_store_n(&p->ready, at, __ATOMIC_RELEASE);
    if (p->ready_stat) {
      double v = at;
      __atomic_store(p->ready_stat, &v, __ATOMIC_RELEASE);
    }
  }
  return NULL;
}

int dp_pool_start(dp_pool *p, uint32_t pages, uint32_t window, double *ready_stat) {
  memset(p, 0, sizeof *p);
  p->ready_stat = ready_stat;
  p->window = window;
  if (pages == 0) return -1;
  void *m = mmap(NULL, (size_t)pages * DP_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return -1;
  /* Small pages only: moving one 4 KiB page out of a huge one makes the kernel split it (EBUSY on the
   * machines tried, and slower). */
  (void)madvise(m, (size_t)pages * DP_PAGE, MADV_NOHUGEPAGE);
  p->mem = m;
  p->cap = pages;
  if (pthread_create(&p->th, NULL, populate, p) != 0) {
    munmap(m, (size_t)pages * DP_PAGE);
    p->mem = NULL;
    return -1;
  }
  p->started = 1;
  return 0;
}

void dp_pool_stop(dp_pool *p) {
  if (p->started) {
    p->stop = 1;
    pthread_join(p->th, NULL);
    p->started = 0;
  }
  if (p->mem) munmap(p->mem, (size_t)p->cap * DP_PAGE);
  p->mem = NULL;
}

uint32_t dp_pool_place_run(dp_pool *p, int uffd, uint64_t base, uint32_t page, uint32_t n, const uint8_t *src, int overwrite, double *moved, double *eexist) {
  if (!p->mem || p->broken || __atomic_load_n(&p->ready, __ATOMIC_ACQUIRE) - p->next < n) return 0;
  uint8_t *slot = p->mem + (size_t)p->next * DP_PAGE;
  __atomic_store_n(&p->next, p->next + n, __ATOMIC_RELEASE); /* slots are used once, moved or not (a page left behind is freed with the pool) */
  uint64_t done = 0, len = (uint64_t)n * DP_PAGE;
  memcpy(slot, src, len);
  while (done < len) {
    struct uffdio_move mv = {.dst = base + (uint64_t)page * DP_PAGE + done, .src = (uint64_t)(uintptr_t)(slot + done), .len = len - done};
    if (ioctl(uffd, UFFDIO_MOVE, &mv) == 0) {
      *moved += (double)((len - done) / DP_PAGE);
      break;
    }
    if (mv.move > 0) {
      done += (uint64_t)mv.move;
      *moved += (double)((uint64_t)mv.move / DP_PAGE);
    }
    else if (errno == EEXIST) {
      uint64_t at = base + (uint64_t)page * DP_PAGE + done;
      if (overwrite) memcpy((uint8_t *)(uintptr_t)at, src + done, DP_PAGE); /* present: cannot block */
      else { /* placed first by another thread: it woke the waiters; wake any that came since */
        *eexist += 1;
        dp_wake(uffd, base, page + (uint32_t)(done / DP_PAGE));
      }
      done += DP_PAGE;
    } else if (errno == EAGAIN || errno == EINTR) continue;
    else {
      /* The kernel will not move here: the caller copies this run's rest, and every later run. */
      p->broken = errno;
      return (uint32_t)(done / DP_PAGE);
    }
  }
  return n;
}
