// A switchover's last look at the paused guest's page tables, on a thread of its own: the pages
// written since the dirty tracker last re-protected them (PAGEMAP_SCAN, PAGE_IS_WRITTEN, reading
// only), as runs of page indexes. The walk takes 0.45-0.9 ms per GiB and sat on the downtime's
// critical path after the state's encoding and sending; started at the pause, it runs beside them.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../uapi.h"
#include "dp.h"

#define REGIONS 4096

int dp_scan_run(dp_scan_args *a) {
  /* It is on a downtime's critical path, and short: real-time where allowed (a thread of normal
   * priority on a busy host waits for a time slice while the switchover waits for it), else
   * nice -10 (dp_prefer_latency). */
  if (a->raise_priority) {
    struct sched_param sp = {.sched_priority = 1};
    if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0) dp_prefer_latency(1);
  }
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    dp_set_err(a->err, "opening /proc/self/pagemap: %s", strerror(errno));
    __atomic_store_n(&a->status[0], DP_SCAN_FAILED, __ATOMIC_RELEASE);
    return -1;
  }
  struct page_region *vec = malloc(REGIONS * sizeof *vec);
  if (!vec) {
    close(fd);
    dp_set_err(a->err, "out of memory");
    __atomic_store_n(&a->status[0], DP_SCAN_FAILED, __ATOMIC_RELEASE);
    return -1;
  }
  /* Armed: started ahead of the pause (a thread's start, the scheduler call, the open and the
   * allocation took 0.35-0.46 ms of a loaded host's downtime); the walk waits for the wake. */
  while (a->armed && !*a->stop) {
    struct pollfd pf = {.fd = a->wakefd, .events = POLLIN};
    if (poll(&pf, 1, -1) < 0 && errno != EINTR) break;
    uint64_t v;
    if (read(a->wakefd, &v, sizeof v) == (ssize_t)sizeof v) break;
  }
  if (a->armed && *a->stop) {
    free(vec);
    close(fd);
    __atomic_store_n(&a->status[0], DP_SCAN_FAILED, __ATOMIC_RELEASE); /* stopped before any walk: nobody reads it */
    return 0;
  }
  uint32_t runs = 0;
  int status = DP_SCAN_DONE;
  for (uint64_t from = a->base; from < a->end;) {
    struct pm_scan_arg arg = {
        .size = sizeof arg, .start = from, .end = a->end, .vec = (uintptr_t)vec, .vec_len = REGIONS,
        .category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN,
    };
    int n = ioctl(fd, PAGEMAP_SCAN, &arg);
    if (n < 0) {
      dp_set_err(a->err, "PAGEMAP_SCAN: %s", strerror(errno));
      status = DP_SCAN_FAILED;
      break;
    }
    for (int i = 0; i < n && status == DP_SCAN_DONE; i++) {
      uint32_t s = (uint32_t)((vec[i].start - a->base) / DP_PAGE), e = (uint32_t)((vec[i].end - a->base) / DP_PAGE);
      if (runs > 0 && a->runs[2 * runs - 1] == s) a->runs[2 * runs - 1] = e; /* continues the last run */
      else if (runs == a->max_runs) status = DP_SCAN_OVERFLOW; /* the caller walks again itself */
      else {
        a->runs[2 * runs] = s;
        a->runs[2 * runs + 1] = e;
        runs++;
      }
    }
    if (status != DP_SCAN_DONE || n < REGIONS || arg.walk_end >= a->end) break;
    from = arg.walk_end;
  }
  free(vec);
  close(fd);
  __atomic_store_n(&a->status[1], (int32_t)runs, __ATOMIC_RELAXED);
  __atomic_store_n(&a->status[0], status, __ATOMIC_RELEASE);
  return status == DP_SCAN_FAILED ? -1 : 0;
}
